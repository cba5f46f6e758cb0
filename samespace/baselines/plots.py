"""``methods.png``: ROC and precision-recall curves of every method on every distinct Test Data
pair, SameSpace drawn boldest, each method's AUCs (the table's) in the legend."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from samespace.errors import printable
from samespace.reports import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BOLD, THIN = 3.0, 1.3


def legend_label(name: str, row: dict, figure_key: str, what: str) -> str:
    value = row.get(figure_key)
    text = f"{name} ({what} {'n/a' if value is None else f'{value:.3f}'})"
    return text + (", random weights" if row.get("weights") == "random weights" else "")


def methods_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], block: dict, title: str = "") -> "Figure":
    """One line per method with a defined curve, in the block's order; the legend reads the
    table's own ROC-AUC and PR-AUC, and the tests check that they are those of the drawn lines."""
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state, no backend switch
    from sklearn import metrics as skm

    figure = Figure(figsize=(12, 5.6))
    roc, pr = figure.subplots(1, 2)
    prevalence = None
    for number, name in enumerate(block):
        if name not in curves or block[name].get("roc_auc") is None:
            continue  # could not run, or one class only: no curve
        labels, scores = curves[name]
        width, order = (BOLD, 10) if name == "samespace" else (THIN, 2)
        colour = "black" if name == "samespace" else f"C{number % 10}"
        dashes = "--" if number >= 10 else "-"  # ten colours, more methods: the eleventh on is dashed
        style = dict(color=colour, linewidth=width, zorder=order, linestyle=dashes)
        fpr, tpr, _ = skm.roc_curve(labels, scores)
        roc.plot(fpr, tpr, label=legend_label(name, block[name], "roc_auc", "ROC-AUC"), **style)
        precision, recall, _ = skm.precision_recall_curve(labels, scores)
        # Steps, as sklearn draws PR: between tied scores no threshold gives an intermediate precision.
        pr.plot(recall, precision, drawstyle="steps-post", label=legend_label(name, block[name], "pr_auc", "PR-AUC"),
                **style)  # fmt: skip
        prevalence = float(np.mean(labels))
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance (0.5)")
    if prevalence is not None:
        pr.axhline(prevalence, color="grey", linestyle=":", linewidth=1, label=f"chance = prevalence {prevalence:.3f}")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    pr.set(xlabel="recall", ylabel="precision", title="Precision-recall (AUC = average precision)",
           xlim=(0, 1), ylim=(0, 1.02))  # fmt: skip
    for axis, corner in ((roc, "lower right"), (pr, "upper right")):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc=corner, fontsize=7.5)
    figure.suptitle(printable(title) or "Methods on every distinct Test Data pair", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    return figure


def write_methods_png(path: Path, curves: dict, block: dict, title: str = "") -> Path:
    """``methods_figure`` as a PNG, written whole or not at all."""
    figure = methods_figure(curves, block, title)
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    return path
