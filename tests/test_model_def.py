"""model_def.py: the network's structure and freezing, the trial's metrics, local runs,
checkpoint reload and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import model_def


def test_a_short_validation_says_why_its_auc_is_null():
    """``det experiment create --test`` validates one batch: 64 pairs of one room, not a split
    with one room."""
    reducer = model_def.PairMetrics()
    reducer.update(torch.zeros(64), torch.ones(64))
    reducer.expected = 1000
    result = reducer.cross_slot_reduce([reducer.per_slot_reduce()])
    assert result["validation_auc"] is None
    assert result["validation_why_null"].endswith(
        "only 64 of the 1000 validation pairs were scored (a test run validates one batch), all same-room"
    )
    reducer.expected = 64  # the whole set: then the split itself has one class
    assert "two rooms" in reducer.cross_slot_reduce([reducer.per_slot_reduce()])["validation_why_null"]


# Trainable: two towers (960*1280 + 1280 each) and the head (2560->2048->1024->512->64->1).
def test_pair_metrics_reducer_covers_the_whole_set_across_slots():
    reducers = [model_def.PairMetrics(), model_def.PairMetrics()]
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=40), (rng.random(40) > 0.5).astype(np.float32)
    for part in range(4):  # two batches on each of two slots
        reducers[part % 2].update(
            torch.tensor(logits[part * 10 : (part + 1) * 10]), torch.tensor(labels[part * 10 : (part + 1) * 10])
        )
    result = reducers[0].cross_slot_reduce([r.per_slot_reduce() for r in reducers])
    torch_loss = nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(logits), torch.tensor(labels, dtype=torch.float64)
    )
    # The reducer keeps logits as float32: each moves by <= 2**-24 of itself, the loss by less than
    # that times the largest |logit| (< 4 here); the rest is float64.
    assert result["validation_loss"] == pytest.approx(float(torch_loss), abs=4 * 2**-24, rel=1e-12)
    # Counts over 40 pairs (float32 rounding never changes a sign): exact up to the division.
    assert result["validation_accuracy"] == pytest.approx(np.mean((logits > 0) == (labels == 1)), rel=1e-12)
    ranks = [(a, b) for a in logits[labels == 1] for b in logits[labels == 0]]
    assert min(abs(a - b) for a, b in ranks) > 1e-6  # no near-ties that float32 could reorder
    assert result["validation_auc"] == pytest.approx(np.mean([a > b for a, b in ranks]), rel=1e-12)
