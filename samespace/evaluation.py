"""Scoring known pairs with a checkpoint: the Test Data report, and two photos compared."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from samespace import metrics, photos, scoring, transforms
from samespace.errors import DataError, first_line, printable
from samespace.network import SiameseNet
from samespace.pairs import PairSet


def variant_item(photo: np.ndarray | int, variant: np.ndarray | int) -> np.ndarray:
    """Row of (photo, variant) in a (N * N_VARIANTS)-row embedding table."""
    return np.asarray(photo, np.int64) * transforms.N_VARIANTS + np.asarray(variant, np.int64)


def evaluate(
    net: SiameseNet, per_variant: torch.Tensor, pairs: PairSet, rooms: np.ndarray, device: torch.device
) -> dict:
    """The original's evaluation (the balanced pair set of training) plus ROC-AUC, PR-AUC and
    P/R/F1 at 0.5 and at the best-F1 threshold, on that set and on every distinct pair of the
    split at its natural prevalence.

    ``per_variant`` holds the split's trunk features (N, N_VARIANTS, feature_dim), or
    (N, N_VARIANTS, 2, feature_dim) for a network with a trunk per side. Returns the
    report and, for the curves, the labels and scores of both pair sets."""
    embedder = scoring.Embedder(net, device)
    first, second = embedder.embed(per_variant.flatten(0, 1))
    scorer = scoring.PairScorer(net.head, first, second)

    logits = scorer.logits(
        variant_item(pairs.first, pairs.first_variant), variant_item(pairs.second, pairs.second_variant)
    ).numpy()
    probabilities = metrics.sigmoid(logits)
    fit = metrics.pair_metrics(logits, pairs.label)  # loss and accuracy; its AUC is score_report's roc_auc
    balanced = {
        **{k: v for k, v in fit.items() if k in ("loss", "accuracy")},
        **metrics.score_report(pairs.label, probabilities),
    }

    a, b = scoring.all_upper_pairs(len(rooms))
    natural_labels = (rooms[a] == rooms[b]).astype(np.int64)
    natural_scores = scorer.probabilities(variant_item(a, 0), variant_item(b, 0))
    report = {
        "test_photos": len(rooms),
        "rooms": int(len(np.unique(rooms))),
        "balanced": {"note": "ordered pairs with the x64 upsampled positives, as in training", **balanced},
        "all_distinct_pairs": {
            "note": "unordered pairs, no self-pairs, score = mean of both orders",
            **metrics.score_report(natural_labels, natural_scores),
        },
    }
    curves = {
        "balanced": (pairs.label, probabilities),
        "all distinct pairs": (natural_labels, natural_scores),
    }
    return {"report": report, "curves": curves}


def compare(
    net: SiameseNet, images: torch.Tensor, device: torch.device, engine_name: str = "torch"
) -> dict[str, float]:
    """P(same space) of two photos (2, 3, H, W: our uint8 read, or the original's float read for
    its preprocessing), in both orders and their mean."""
    embedder = scoring.Embedder(net, device, engine_name=engine_name)
    scorer = scoring.PairScorer(net.head, *embedder.embed(embedder.backbone(images)))
    forward, backward = torch.sigmoid(scorer.logits(np.array([0, 1]), np.array([1, 0]))).tolist()
    return {"probability": (forward + backward) / 2, "a_then_b": forward, "b_then_a": backward}


EVALUATION_LIMIT = 16 * 2**20  # bytes: an evaluation.json is a few KB; anything far larger is not one


def threshold_from(path: Path) -> tuple[float, str]:
    """The best-F1 threshold that ``evaluate`` chose (on all distinct pairs of the Test Data) from
    its ``evaluation.json``, and a line saying where it came from. Raises ``DataError`` (one line)."""
    where = printable(str(path))
    problem = photos.not_a_regular_file(path)
    if problem:
        raise DataError(f"--threshold-from {where}: {problem}")
    try:
        with photos.open_regular(path) as handle:  # a FIFO swapped in after the check cannot block
            text = handle.read(EVALUATION_LIMIT + 1)
        if len(text) > EVALUATION_LIMIT:
            limit = EVALUATION_LIMIT >> 20
            raise DataError(f"--threshold-from {where}: larger than {limit} MB, not an evaluation.json")
        report = json.loads(text)
    except (OSError, ValueError, RecursionError) as exc:
        raise DataError(f"--threshold-from {where}: not a readable evaluation.json ({first_line(exc)})") from None
    best = report.get("all_distinct_pairs", {}) if isinstance(report, dict) else None
    best = best.get("at_best_f1") if isinstance(best, dict) else None
    value = best.get("threshold") if isinstance(best, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise DataError(
            f"--threshold-from {where}: no best-F1 threshold in it (all_distinct_pairs.at_best_f1.threshold); "
            "use the evaluation.json that `model_inference.py evaluate` writes, or pass --threshold"
        )
    f1 = best.get("f1")
    score = f" {f1:.4f}" if isinstance(f1, float) and math.isfinite(f1) else ""
    return float(value), f"best F1{score} on all distinct test pairs, {where}"
