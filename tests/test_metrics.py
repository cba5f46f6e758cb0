"""metrics.py: figures against torch and scikit-learn on hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import strict_json
from samespace import metrics


def test_bce_matches_torch_also_for_large_logits():
    logits = np.array([-40.0, -3.0, 0.0, 2.5, 60.0])
    labels = np.array([0, 1, 1, 0, 1])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(logits), torch.tensor(labels, dtype=torch.float64)
    )
    # Both float64, by different formulas (logaddexp vs max + log1p): a few ulps of terms up to 60.
    assert metrics.bce_with_logits(logits, labels) == pytest.approx(float(expected), rel=1e-12)


def test_pair_metrics_on_a_hand_checked_case():
    logits = np.array([2.0, -1.0, 0.5, -3.0])
    labels = np.array([1, 1, 0, 0])
    result = metrics.pair_metrics(logits, labels, prefix="validation_")
    assert result["validation_accuracy"] == 0.5  # 2.0 right, -1.0 wrong, 0.5 wrong, -3.0 right
    assert result["validation_auc"] == 0.75  # of 4 positive-negative pairs, 3 ordered correctly
    one_class = metrics.pair_metrics(logits, np.ones(4), prefix="validation_")  # ROC-AUC undefined
    assert one_class["validation_auc"] is None and "two rooms" in one_class["validation_why_null"]
    assert one_class["validation_accuracy"] == 0.5


def test_threshold_metrics_and_best_f1():
    labels = np.array([1, 1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.6, 0.3, 0.4, 0.2, 0.1])
    at_half = metrics.threshold_metrics(labels, scores, 0.5)
    assert (at_half["precision"], at_half["recall"]) == (1.0, pytest.approx(2 / 3))
    best = metrics.best_f1_threshold(labels, scores)
    assert best == pytest.approx(0.3)  # precision 3/4, recall 1: F1 6/7, the highest available
    assert metrics.threshold_metrics(labels, scores, best)["f1"] == pytest.approx(6 / 7)


def test_score_report_fields():
    labels = np.array([1, 0, 0, 0])
    report = metrics.score_report(labels, np.array([0.8, 0.7, 0.1, 0.2]))
    assert report["pairs"] == 4 and report["positives"] == 1 and report["prevalence"] == 0.25
    assert report["roc_auc"] == 1.0 and report["pr_auc"] == 1.0
    assert report["at_best_f1"]["f1"] == 1.0 and report["at_0.5"]["precision"] == 0.5


def test_undefined_figures_are_null_with_a_reason_never_nan():
    with pytest.raises(ValueError):
        strict_json({"x": float("nan")})  # the checker itself works
    one_class = strict_json(metrics.score_report(np.ones(5), np.linspace(0.1, 0.9, 5)))
    assert one_class["roc_auc"] is None and one_class["pr_auc"] is None and one_class["at_best_f1"] is None
    assert "different-room" in one_class["why_null"] and one_class["prevalence"] == 1.0
    assert one_class["why_null"].startswith("ROC-AUC and PR-AUC need both same-room and different-room pairs")
    assert one_class["at_0.5"]["recall"] == pytest.approx(0.6)  # 3 of 5 scores reach 0.5: still defined
    empty = strict_json(metrics.score_report(np.zeros(0), np.zeros(0)))
    assert empty["pairs"] == 0 and empty["prevalence"] is None and empty["at_0.5"] is None
    assert "no pairs" in empty["why_null"]
    nothing = strict_json(metrics.pair_metrics(np.zeros(0), np.zeros(0), prefix="validation_"))
    assert nothing["validation_loss"] is None and "no pairs" in nothing["validation_why_null"]
    both = metrics.score_report(np.array([1, 0]), np.array([0.9, 0.1]))
    assert "why_null" not in both and both["roc_auc"] == 1.0
