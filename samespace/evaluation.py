"""Scoring known pairs with a checkpoint: the Test Data report, and two photos compared."""

from __future__ import annotations

import numpy as np
import torch

from samespace import metrics, scoring, transforms
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
    """P(same space) of two uint8 photos (2, 3, H, W), in both orders and their mean."""
    embedder = scoring.Embedder(net, device, engine_name=engine_name)
    scorer = scoring.PairScorer(net.head, *embedder.embed(embedder.backbone(images)))
    forward, backward = torch.sigmoid(scorer.logits(np.array([0, 1]), np.array([1, 0]))).tolist()
    return {"probability": (forward + backward) / 2, "a_then_b": forward, "b_then_a": backward}
