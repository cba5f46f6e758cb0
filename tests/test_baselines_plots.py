"""methods.png draws what the table says: each drawn ROC line's area is the row's ROC-AUC and each
drawn precision-recall step line's average precision is the row's PR-AUC; the legend carries
those numbers and "random weights"; SameSpace is the boldest line; the PNG is written whole."""

from __future__ import annotations

import numpy as np
from PIL import Image

from samespace.baselines import plots, table
from tests.test_baselines_table import context_of


def block_and_curves(tmp_path):
    context = context_of(tmp_path)
    _, _, labels = context.test.pairs()
    rng = np.random.default_rng(4)
    fake = table.Scored(rng.random(45), labels + rng.normal(0, 0.6, 45), 1.0, "Training Data pairs")
    block, curves = table.methods_block(["phash", "ahash", "whash"], context)
    block = {"samespace": table.row_of(fake, context), **block, "dhash": table.failed_row("x.jpg: gone")}
    curves = {"samespace": (labels, fake.test), **curves}
    block["ahash"]["weights"] = "random weights"  # as a network without ImageNet weights would be marked
    return block, curves


def test_the_table_equals_what_the_plot_draws(tmp_path):
    block, curves = block_and_curves(tmp_path)
    figure = plots.methods_figure(curves, block)
    roc, pr = figure.axes[:2]
    drawn = {line.get_label(): line for line in roc.get_lines() if not line.get_label().startswith("chance")}
    assert len(drawn) == 4  # dhash could not run: no line
    for name in ("samespace", "phash", "ahash", "whash"):
        (label,) = [text for text in drawn if text.startswith(name + " ")]
        assert f"ROC-AUC {block[name]['roc_auc']:.3f}" in label
        assert ("random weights" in label) == (name == "ahash")
        fpr, tpr = drawn[label].get_xdata(), drawn[label].get_ydata()
        assert abs(np.trapezoid(tpr, fpr) - block[name]["roc_auc"]) < 1e-12  # float64 sums of 45 pairs
        (pr_line,) = [line for line in pr.get_lines() if line.get_label().startswith(name + " ")]
        assert f"PR-AUC {block[name]['pr_auc']:.3f}" in pr_line.get_label()
        recall, precision = pr_line.get_xdata(), pr_line.get_ydata()
        average_precision = -np.sum(np.diff(recall) * precision[:-1])  # the steps' area, as sklearn defines AP
        assert abs(average_precision - block[name]["pr_auc"]) < 1e-12
    widths = {text.split()[0]: line.get_linewidth() for text, line in drawn.items()}
    assert widths["samespace"] > max(w for n, w in widths.items() if n != "samespace")


def test_the_png_is_written(tmp_path):
    block, curves = block_and_curves(tmp_path)
    path = plots.write_methods_png(tmp_path / "methods.png", curves, block, title="a title")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 1000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("methods")] == ["methods.png"]
