"""samespace/evaluation.py: evaluate and compare against direct computations."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm

import data
from conftest import float32_atol, strict_json, summed_terms
from samespace import metrics
from samespace.evaluation import compare, evaluate
from samespace.features import FeatureCache
from samespace.pairs import build_pairs, wavelet_hashes
from samespace.photos import as_tensor, read_photo
from samespace.transforms import model_input


def direct_logits(net, images, first, second, first_variant, second_variant):
    """The network on the two photos of each pair, end to end, no caching or layer splitting."""
    out = []
    with torch.inference_mode():
        for k in range(len(first)):
            a = model_input(images[first[k]][None], int(first_variant[k]))
            b = model_input(images[second[k]][None], int(second_variant[k]))
            out.append(float(net(a, b)))
    return np.array(out)


def reorderable_share(positive: np.ndarray, negative: np.ndarray, atol: float) -> float:
    """The share of (positive, negative) pairs whose order float32 rounding may flip: the most by
    which ROC-AUC may move between two computations of the same scores."""
    return float(np.mean(np.abs(positive[:, None] - negative[None, :]) <= 2 * atol))


def test_evaluate_equals_a_direct_computation_on_the_same_pairs(small_net, airbnb, tmp_path):
    split = data.load_split(airbnb["root"] / data.SPLITS["test"])
    pairs = build_pairs(split.rooms, wavelet_hashes(split.images))
    per_variant = FeatureCache(tmp_path / "cache", small_net.trunk).features(split.images)
    outcome = evaluate(small_net, per_variant, pairs, split.rooms, torch.device("cpu"))
    report = outcome["report"]
    logits = direct_logits(
        small_net, split.images, pairs.first, pairs.second, pairs.first_variant, pairs.second_variant
    )
    labels = pairs.label
    balanced = report["balanced"]
    assert "auc" not in balanced and "why_null" not in balanced  # one name per figure: roc_auc
    assert balanced["pairs"] == len(pairs) and balanced["positives"] == pairs.positives
    # Cached features and the split first layer, batched, vs one pair at a time end to end: float32
    # rounding only. A logit may move by atol, so the loss (slope <= 1) too, and the accuracy by
    # the share of logits within atol of 0.
    atol = float32_atol(summed_terms(small_net.trunk, small_net.towers[0], small_net.head))
    assert balanced["loss"] == pytest.approx(metrics.bce_with_logits(logits, labels), rel=0, abs=atol)
    assert abs(balanced["accuracy"] - np.mean((logits > 0) == (labels == 1))) <= np.mean(np.abs(logits) <= atol)
    scores = outcome["curves"]["balanced"][1]
    assert np.allclose(scores, metrics.sigmoid(logits), rtol=0, atol=atol / 4)  # pair by pair, same order
    # Many pairs nearly tie (the same photos in other variants): rounding may reorder those.
    near = reorderable_share(logits[labels == 1], logits[labels == 0], atol)
    assert abs(balanced["roc_auc"] - skm.roc_auc_score(labels, logits)) <= near + 1e-12
    assert balanced["pr_auc"] == pytest.approx(skm.average_precision_score(labels, logits), abs=max(near, 1e-3))

    n = len(split)
    a, b = np.triu_indices(n, k=1)
    zeros = np.zeros(len(a), int)
    both = (
        1 / (1 + np.exp(-direct_logits(small_net, split.images, a, b, zeros, zeros)))
        + 1 / (1 + np.exp(-direct_logits(small_net, split.images, b, a, zeros, zeros)))
    ) / 2
    natural = report["all_distinct_pairs"]
    natural_labels = (split.rooms[a] == split.rooms[b]).astype(int)
    assert natural["pairs"] == n * (n - 1) // 2 and natural["positives"] == natural_labels.sum()
    ours = outcome["curves"]["all distinct pairs"][1]
    assert np.allclose(ours, both, rtol=0, atol=atol / 4)
    near = reorderable_share(both[natural_labels == 1], both[natural_labels == 0], atol / 4)
    assert abs(natural["roc_auc"] - skm.roc_auc_score(natural_labels, both)) <= near + 1e-12
    # Thresholded figures from our own scores: the same float64 comparisons, so exact.
    f1 = skm.f1_score(natural_labels, ours >= 0.5, zero_division=0)
    assert natural["at_0.5"]["f1"] == pytest.approx(f1, rel=1e-12)
    best = natural["at_best_f1"]
    assert best["f1"] >= f1 - 1e-12
    assert best["f1"] == pytest.approx(skm.f1_score(natural_labels, ours >= best["threshold"]), rel=1e-12)


def test_compare_is_symmetric_and_matches_the_network(small_net, airbnb):
    photos = [p.path for p in airbnb["made"]["test"][:2]]
    images = as_tensor(np.stack([read_photo(p) for p in photos]))
    forward = compare(small_net, images, torch.device("cpu"))
    backward = compare(small_net, images.flip(0), torch.device("cpu"))
    # The photos in the other batch position: float32 rounding only (probabilities: slope <= 1/4).
    atol = float32_atol(summed_terms(small_net.trunk, small_net.towers[0], small_net.head)) / 4
    assert forward["probability"] == pytest.approx(backward["probability"], rel=0, abs=atol)
    assert forward["a_then_b"] == pytest.approx(backward["b_then_a"], rel=0, abs=atol)
    assert abs(forward["a_then_b"] - forward["b_then_a"]) > 3 * atol  # order-sensitive beyond rounding (~4.5x atol)
    direct = torch.sigmoid(torch.tensor(direct_logits(small_net, images, [0], [1], [0], [0])))
    assert forward["a_then_b"] == pytest.approx(float(direct), rel=0, abs=atol)


@pytest.mark.parametrize("photos_per_room", [[1], [2]], ids=["one photo", "one room"])
def test_too_few_rooms_give_null_figures_with_reasons(small_net, tmp_path, photos_per_room):
    split_dir = tmp_path / "Test Data"
    (split_dir / "bedroom").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in range(photos_per_room[0]):
        photo = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
        Image.fromarray(photo).save(split_dir / "bedroom" / f"oslo_1_{n}.jpg")
    split = data.load_split(split_dir)
    pairs = build_pairs(split.rooms, wavelet_hashes(split.images))
    per_variant = FeatureCache(tmp_path / "cache", small_net.trunk).features(split.images)
    outcome = evaluate(small_net, per_variant, pairs, split.rooms, torch.device("cpu"))
    report = strict_json(outcome["report"])  # null, never NaN
    balanced, natural = report["balanced"], report["all_distinct_pairs"]
    assert balanced["positives"] == balanced["pairs"] > 0 and balanced["loss"] > 0
    assert balanced["roc_auc"] is None and "two rooms" in balanced["why_null"]
    assert "auc" not in balanced  # one name per figure: roc_auc
    if photos_per_room == [1]:
        assert natural["pairs"] == 0 and natural["pr_auc"] is None and "no pairs" in natural["why_null"]
    else:
        assert natural["pairs"] == natural["positives"] == 1 and natural["roc_auc"] is None


def test_threshold_from_reads_the_best_f1_threshold_or_says_why_not(tmp_path):
    from samespace.errors import DataError
    from samespace.evaluation import threshold_from

    good = tmp_path / "evaluation.json"
    good.write_text(json.dumps({"all_distinct_pairs": {"at_best_f1": {"threshold": 0.3721, "f1": 0.81234}}}))
    value, source = threshold_from(good)
    assert value == 0.3721 and source.startswith("best F1 0.8123 on all distinct test pairs") and str(good) in source
    bad = {
        "missing.json": None,
        "null.json": {"all_distinct_pairs": {"at_best_f1": None}},  # one room: no best-F1 threshold
        "big.json": {"all_distinct_pairs": {"at_best_f1": {"threshold": 7}}},
        "text.json": "not json",
        "list.json": [1, 2],
        "deep.json": "[" * 100_000 + "]" * 100_000,
    }
    for name, payload in bad.items():
        if payload is not None:
            (tmp_path / name).write_text(payload if isinstance(payload, str) else json.dumps(payload))
        with pytest.raises(DataError, match=r"^--threshold-from .*: ") as caught:
            threshold_from(tmp_path / name)
        assert "\n" not in str(caught.value)
    os.mkfifo(tmp_path / "pipe.json")  # never opened: it would block
    with pytest.raises(DataError, match="FIFO"):
        threshold_from(tmp_path / "pipe.json")
