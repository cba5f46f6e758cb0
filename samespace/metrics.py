"""Metrics of pair scores: the training/validation figures and the fuller inference report.

A figure that the pairs cannot define (ROC-AUC with one class, anything of no pairs) is ``None``
with a ``why_null`` entry saying why: never NaN, which strict JSON readers reject and which reads
like a result."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

NO_PAIRS = "no pairs to measure (the split needs at least two photos)"
ONE_CLASS = "both same-room and different-room pairs (the split needs at least two rooms)"


def bce_with_logits(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of logits, computed stably (as torch's BCEWithLogits)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.float64)
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits)) if len(logits) else float("nan")


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))


def both_classes(labels: np.ndarray) -> bool:
    return 0 < int(np.sum(labels)) < len(labels)


def pair_metrics(logits: np.ndarray, labels: np.ndarray, prefix: str = "") -> dict[str, float | str | None]:
    """Loss, accuracy at p = 0.5 and ROC-AUC (``<prefix>auc``: the trial's validation_auc) over all
    pairs; undefined figures are None and ``<prefix>why_null`` says why."""
    logits = np.asarray(logits, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if not len(labels):
        return {f"{prefix}{name}": None for name in ("loss", "accuracy", "auc")} | {f"{prefix}why_null": NO_PAIRS}
    result: dict[str, float | str | None] = {
        f"{prefix}loss": bce_with_logits(logits, labels),
        f"{prefix}accuracy": float(np.mean((logits > 0) == (labels == 1))),
        f"{prefix}auc": float(skm.roc_auc_score(labels, logits)) if both_classes(labels) else None,
    }
    if result[f"{prefix}auc"] is None:
        result[f"{prefix}why_null"] = "ROC-AUC needs " + ONE_CLASS
    return result


def threshold_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of ``score >= threshold``."""
    predicted = np.asarray(scores) >= threshold
    precision, recall, f1, _ = skm.precision_recall_fscore_support(labels, predicted, average="binary", zero_division=0)
    return {"threshold": float(threshold), "precision": float(precision), "recall": float(recall), "f1": float(f1)}


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold that maximises F1."""
    precision, recall, thresholds = skm.precision_recall_curve(labels, scores)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=(precision + recall) > 0
    )
    return float(thresholds[int(np.argmax(f1[:-1]))]) if len(thresholds) else 0.5


def score_report(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """What a balanced accuracy hides: ROC-AUC, PR-AUC, and P/R/F1 at 0.5 and at the best-F1
    threshold. Undefined figures are None and ``why_null`` says why."""
    labels = np.asarray(labels).astype(np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    if not len(labels):
        undefined = ("prevalence", "at_0.5", "roc_auc", "pr_auc", "at_best_f1")
        return {"pairs": 0, "positives": 0, **dict.fromkeys(undefined), "why_null": NO_PAIRS}
    report = {
        "pairs": int(len(labels)),
        "positives": int(labels.sum()),
        "prevalence": float(labels.mean()),
        "at_0.5": threshold_metrics(labels, probabilities, 0.5),
    }
    if both_classes(labels):
        report["roc_auc"] = float(skm.roc_auc_score(labels, probabilities))
        report["pr_auc"] = float(skm.average_precision_score(labels, probabilities))
        report["at_best_f1"] = threshold_metrics(labels, probabilities, best_f1_threshold(labels, probabilities))
    else:
        why = "ROC-AUC and PR-AUC need " + ONE_CLASS
        report |= {"roc_auc": None, "pr_auc": None, "at_best_f1": None, "why_null": why}
    return report
