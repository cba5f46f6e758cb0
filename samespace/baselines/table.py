"""Every method's row beside SameSpace's on the same Test Data pairs (every distinct pair, natural
prevalence): ROC-AUC and PR-AUC, and P/R/F1 at the best-F1 threshold *chosen on every distinct
Training Data pair* and then applied to Test Data (never chosen on Test Data), photos/s, and what
the method was trained on; and ROC-AUC and PR-AUC on the balanced Test Data pairs SameSpace's
evaluation scores (each side a photo in one variant), from each method's representation of each
(photo, variant). A figure the pairs cannot define, or a method that cannot run, is
``null`` with ``why_null``; the other methods still run."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from samespace import evaluation, metrics, scoring, transforms
from samespace import features as trunk_cache
from samespace.baselines import features, hashes, trained
from samespace.errors import DataError, SameSpaceError, first_line
from samespace.pairs import PairSet

logger = logging.getLogger("samespace.baselines")

CHECKPOINT_METHODS = ("samespace", "trunk-cosine")
NAMES = (*CHECKPOINT_METHODS, *hashes.METHODS, *features.METHODS, *trained.METHODS)
THRESHOLD_NOTE = "best-F1 threshold chosen on every distinct Training Data pair, then applied to Test Data"
BALANCED_HASH_NOTE = "balanced-set hashes are of the decoded 256x256 variant pixels, not the files"
TIMING_SAMPLE = 64  # Test Data photos SameSpace's photos/s is timed on (its figures use the feature cache)


@dataclasses.dataclass
class SplitPhotos:
    """One split as the methods read it: the files, their decoded 256x256 uint8 images, the rooms."""

    name: str
    paths: list[Path]
    images: torch.Tensor
    rooms: np.ndarray

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every distinct pair i < j and its label (same room = 1)."""
        a, b = scoring.all_upper_pairs(len(self.rooms))
        return a, b, (self.rooms[a] == self.rooms[b]).astype(np.int64)


@dataclasses.dataclass
class Balanced:
    """The balanced Test Data pairs as the methods read them: the distinct (photo, variant) items
    the pairs use, and each pair's two items (indices into them) and label."""

    photo: np.ndarray
    variant: np.ndarray
    first: np.ndarray
    second: np.ndarray
    label: np.ndarray

    @staticmethod
    def of(pairs: PairSet) -> "Balanced":
        keys = np.concatenate(
            [
                evaluation.variant_item(pairs.first, pairs.first_variant),
                evaluation.variant_item(pairs.second, pairs.second_variant),
            ]
        )
        items, inverse = np.unique(keys, return_inverse=True)
        n = len(pairs)
        return Balanced(
            items // transforms.N_VARIANTS, items % transforms.N_VARIANTS, inverse[:n], inverse[n:], pairs.label
        )

    def represent(self, images: torch.Tensor, represent: Callable[[torch.Tensor], Any]) -> np.ndarray:
        """``represent`` (uint8 images -> one row each) of every item: its photo in its variant,
        one variant at a time (only the variants the pairs use, never all eight in memory)."""
        rows_of: np.ndarray | None = None
        for variant in np.unique(self.variant):
            rows = np.flatnonzero(self.variant == variant)
            values = np.asarray(represent(transforms.apply_variant(images[self.photo[rows]], int(variant))))
            if rows_of is None:
                rows_of = np.empty((len(self.photo), *values.shape[1:]), values.dtype)
            rows_of[rows] = values
        return rows_of if rows_of is not None else np.zeros((0,))


@dataclasses.dataclass
class Context:
    """What the methods share: both splits, the checkpoint (for samespace and trunk-cosine), the
    device and engine, the feature-cache folder (trained baselines are kept there), and a memo so
    that one network pass serves every method built on it."""

    train: SplitPhotos
    test: SplitPhotos
    device: torch.device
    cache_root: Path
    engine_name: str = "torch"
    net: Any = None
    random_trunk: bool = False  # the checkpoint's trunk had random weights
    seed: int = 0
    balanced: Balanced | None = None  # the Test Data's balanced pairs, scored where given
    memo: dict = dataclasses.field(default_factory=dict)

    def remember(self, key: Any, compute: Callable[[], Any]) -> tuple[Any, float]:
        """``compute()`` once per key, and the seconds it took (charged to every row using it)."""
        if key not in self.memo:
            start = time.perf_counter()
            value = compute()
            self.memo[key] = (value, time.perf_counter() - start)
        return self.memo[key]


@dataclasses.dataclass
class Scored:
    """A method's scores of every distinct pair of both splits (higher = more alike)."""

    train: np.ndarray
    test: np.ndarray
    seconds: float  # per-photo work on the Test Data photos (features, hashes, codes)
    trained_on: str
    random_weights: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)
    training_s: float | None = None
    default_threshold: float | None = None  # the method's own published threshold, where it has one
    balanced: np.ndarray | None = None  # scores of context.balanced's pairs, where it has them


def parse_names(text: str) -> list[str]:
    """``phash,dhash`` (or ``all``) as a list of method names, samespace first (the reference it
    is compared with); unknown names in one line listing the valid ones."""
    names = list(NAMES) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise DataError(f"unknown method {', '.join(unknown) or repr(text)}: choose from {', '.join(NAMES)} or all")
    return list(dict.fromkeys(["samespace", *names]))


# --------------------------------------------------------------------------------------------
# The methods


def checkpoint_variants(context: Context, split: SplitPhotos) -> torch.Tensor:
    """The checkpoint's cached trunk features of a split's photos in all 8 variants: (N, 8, D),
    or (N, 8, 2, D) for a checkpoint with a trunk per side (the original's)."""
    per_variant, _ = context.remember(
        ("checkpoint", split.name),
        lambda: trunk_cache.network_features(
            context.cache_root, context.net, split.images, context.device, engine_name=context.engine_name
        )[0],
    )
    return per_variant


def checkpoint_trunk(context: Context, split: SplitPhotos) -> torch.Tensor:
    """The checkpoint's trunk features of a split's photos, unaltered variant: (N, D) or (N, 2, D)."""
    return checkpoint_variants(context, split)[:, 0]


def checkpoint_balanced(context: Context, name: str) -> np.ndarray:
    """The balanced pairs' scores: samespace's P(same space) of each ordered pair (first side
    first), as evaluation.evaluate scores them; trunk-cosine's cosine of the (first) trunk's
    features of the two (photo, variant)s."""
    pairs = context.balanced
    if name == "samespace" and ("samespace", "balanced") in context.memo:  # the evaluation's own scores
        return context.memo["samespace", "balanced"][0]
    per_variant = checkpoint_variants(context, context.test)
    if name == "trunk-cosine":
        x = per_variant[torch.as_tensor(pairs.photo), torch.as_tensor(pairs.variant)]
        return features.cosine_matrix((x[:, 0] if x.dim() == 3 else x).numpy())[pairs.first, pairs.second]
    embedder = scoring.Embedder(context.net, context.device)
    scorer = scoring.PairScorer(context.net.head, *embedder.embed(per_variant.flatten(0, 1)))
    items = evaluation.variant_item(pairs.photo, pairs.variant)
    return metrics.sigmoid(scorer.logits(items[pairs.first], items[pairs.second]).numpy())


def samespace_photo_seconds(context: Context) -> tuple[float, float]:
    """(trunk, trunk + towers) seconds per Test Data photo, timed uncached on up to TIMING_SAMPLE."""
    embedder = scoring.Embedder(context.net, context.device, engine_name=context.engine_name)
    sample = context.test.images[:TIMING_SAMPLE]
    start = time.perf_counter()
    trunk_features = embedder.backbone(sample, desc="timing samespace")
    middle = time.perf_counter()
    embedder.embed(trunk_features)
    end = time.perf_counter()
    return (middle - start) / max(len(sample), 1), (end - start) / max(len(sample), 1)


def score_checkpoint(context: Context, name: str) -> Scored:
    """samespace (the head's P(same space), both orders averaged) or trunk-cosine (cosine of the
    frozen trunk's features, no towers, no head)."""
    if context.net is None:
        raise DataError(f"{name} needs a checkpoint")
    (trunk_s, net_s), _ = context.remember("samespace timing", lambda: samespace_photo_seconds(context))
    scores = []
    for split in (context.train, context.test):
        a, b, _ = split.pairs()
        x = checkpoint_trunk(context, split)
        if name == "trunk-cosine":  # the first side's trunk where each side has its own
            scores.append(features.cosine_matrix((x[:, 0] if x.dim() == 3 else x).numpy())[a, b])
        elif ("samespace", split.name) in context.memo:  # the evaluation's own scores of these pairs
            scores.append(context.memo["samespace", split.name][0])
        else:
            embedder = scoring.Embedder(context.net, context.device)
            scores.append(scoring.PairScorer(context.net.head, *embedder.embed(x)).probabilities(a, b))
    seconds = len(context.test.rooms) * (trunk_s if name == "trunk-cosine" else net_s)
    trained_on = "nothing (ImageNet trunk)" if name == "trunk-cosine" else "Training Data pairs (the checkpoint)"
    balanced = None if context.balanced is None else checkpoint_balanced(context, name)
    return Scored(
        *scores, seconds=seconds, trained_on=trained_on, random_weights=context.random_trunk, balanced=balanced
    )


def pixel_hashes(images: torch.Tensor, name: str) -> np.ndarray:
    """The hash of each decoded uint8 image (N, 3, H, W) as uint64 values."""
    return hashes.as_integers([hashes.image_hash(Image.fromarray(x.permute(1, 2, 0).numpy()), name) for x in images])


def score_hash(context: Context, name: str) -> Scored:
    """imagededup's hash of each file; a pair scores 1 - Hamming distance / 64."""
    scores, seconds = [], 0.0
    for split in (context.train, context.test):
        start = time.perf_counter()
        found, _, skipped = hashes.file_hashes(split.paths, name)
        seconds = time.perf_counter() - start  # the Test Data's, the last one
        if skipped:  # every photo decoded once already; say so rather than score fewer pairs
            raise DataError(f"{skipped[0].path.name}: {skipped[0].reason}")
        a, b, _ = split.pairs()
        scores.append(hashes.similarity(hashes.hamming(hashes.as_integers(found), a, b)))
    default = float(hashes.similarity(hashes.DEFAULT_DISTANCE))  # imagededup's <= 10 bits
    scored = Scored(*scores, seconds=seconds, trained_on="nothing (fixed hash)", default_threshold=default)
    if context.balanced is not None:  # a variant has no file: its hash is of the transformed pixels
        pairs = context.balanced
        values = pairs.represent(context.test.images, lambda images: pixel_hashes(images, name))
        scored.balanced = hashes.similarity(hashes.hamming(values, pairs.first, pairs.second))
        scored.notes.append(BALANCED_HASH_NOTE)
    return scored


def score_features(context: Context, name: str) -> Scored:
    """A pretrained network's features of every photo, then the method's pair score."""
    network_name = features.NETWORK_OF[name]
    network, _ = context.remember(
        ("network", network_name), lambda: features.Network(network_name, context.device, context.engine_name)
    )
    per_split = {}
    for split in (context.train, context.test):
        values, seconds = context.remember((network_name, split.name), lambda: network.features(split.images).numpy())
        per_split[split.name] = (values, seconds)
    train, test = per_split[context.train.name][0], per_split[context.test.name][0]
    projection, notes, trained_on = None, [], "nothing (ImageNet features)"
    if name == "vgg16-pca-cosine":
        from sklearn.decomposition import PCA

        components, note = features.pca_components(train)
        notes += [note] if note else []
        projection = PCA(components, svd_solver="full").fit(np.asarray(train, np.float64))
        trained_on = "Training Data photos (PCA)"
    scores = [
        features.pair_scores(name, values, *split.pairs()[:2], projection)
        for values, split in ((train, context.train), (test, context.test))
    ]
    seconds = per_split[context.test.name][1]
    balanced = None
    if context.balanced is not None:
        pairs = context.balanced
        values, _ = context.remember(
            (network_name, "balanced"),
            lambda: pairs.represent(context.test.images, lambda images: network.features(images).numpy()),
        )
        balanced = features.pair_scores(name, values, pairs.first, pairs.second, projection)
    return Scored(
        *scores,
        seconds=seconds,
        trained_on=trained_on,
        random_weights=not network.pretrained,
        notes=notes,
        balanced=balanced,
    )


def score_trained(context: Context, name: str) -> Scored:
    """A baseline trained here on the Training Data photos (cached), then its pair score."""
    model, training_s = trained.trained_model(
        name, context.train.images, context.train.rooms, context.cache_root, context.seed
    )
    scores, seconds = [], 0.0
    for split in (context.train, context.test):
        start = time.perf_counter()
        codes = trained.encode(model, split.images)
        seconds = time.perf_counter() - start
        scores.append(trained.pair_scores(name, model, codes, *split.pairs()[:2]))
    balanced = None
    if context.balanced is not None:
        pairs = context.balanced
        codes = pairs.represent(context.test.images, lambda images: trained.encode(model, images).numpy())
        balanced = trained.pair_scores(name, model, torch.from_numpy(codes), pairs.first, pairs.second)
    return Scored(
        *scores,
        seconds=seconds,
        trained_on=trained.TRAINED_ON[name],
        notes=list(model.notes),
        training_s=training_s,
        balanced=balanced,
    )


SCORERS: dict[str, Callable[[Context, str], Scored]] = {
    **dict.fromkeys(CHECKPOINT_METHODS, score_checkpoint),
    **dict.fromkeys(hashes.METHODS, score_hash),
    **dict.fromkeys(features.METHODS, score_features),
    **dict.fromkeys(trained.METHODS, score_trained),
}


# --------------------------------------------------------------------------------------------
# Rows


def finite(scores: np.ndarray, what: str) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    if not np.all(np.isfinite(scores)):
        raise DataError(f"{np.sum(~np.isfinite(scores))} of its {what} pair scores are not finite")
    return scores


def row_of(scored: Scored, context: Context) -> dict:
    """A method's figures: AUCs on Test Data, P/R/F1 there at the threshold chosen on Training Data."""
    _, _, train_labels = context.train.pairs()
    _, _, test_labels = context.test.pairs()
    train_scores, test_scores = finite(scored.train, "Training Data"), finite(scored.test, "Test Data")
    report = metrics.score_report(test_labels, test_scores)
    row: dict = {key: report.get(key) for key in ("pairs", "positives", "roc_auc", "pr_auc")}
    reasons = [report["why_null"]] if "why_null" in report else []
    if metrics.both_classes(train_labels):
        threshold = metrics.best_f1_threshold(train_labels, train_scores)
        row["at_training_best_f1"] = metrics.threshold_metrics(test_labels, test_scores, threshold)
    else:
        row["at_training_best_f1"] = None
        reasons.append("no Training Data threshold: Training Data needs " + metrics.ONE_CLASS)
    if scored.default_threshold is not None:  # e.g. a hash's 10 bits: fixed, not chosen on any pairs
        row["at_published_default"] = metrics.threshold_metrics(test_labels, test_scores, scored.default_threshold)
    photos = len(context.test.rooms)
    row |= {
        "threshold_chosen_on": THRESHOLD_NOTE,
        "photos_per_s": round(photos / scored.seconds, 1) if scored.seconds > 0 else None,
        "trained_on": scored.trained_on,
        "weights": "random weights" if scored.random_weights else "as published",
        "training_s": None if scored.training_s is None else round(scored.training_s, 1),
    }
    if context.balanced is not None:
        row["balanced"] = balanced_figures(context.balanced.label, finite(scored.balanced, "balanced Test Data"))
    if scored.notes:
        row["notes"] = scored.notes
    if reasons:
        row["why_null"] = "; ".join(reasons)
    return row


def balanced_figures(labels: np.ndarray, scores: np.ndarray) -> dict:
    """ROC-AUC and PR-AUC on the balanced pairs (null with why_null where they are undefined)."""
    report = metrics.score_report(labels, scores)
    keys = ("pairs", "positives", "roc_auc", "pr_auc", "why_null")
    figures = {k: report[k] for k in keys if k in report}
    return {"note": "the balanced Test Data pairs of SameSpace's evaluation", **figures}


def failed_row(reason: str) -> dict:
    undefined = ("pairs", "positives", "roc_auc", "pr_auc", "at_training_best_f1", "photos_per_s", "balanced")
    return {**dict.fromkeys(undefined), "why_null": f"could not run: {reason}"}


def methods_block(names: list[str], context: Context) -> tuple[dict, dict]:
    """``evaluation.json``'s ``methods`` (one row per method, in the order asked) and, for the
    plot, each method's (labels, scores) on every distinct Test Data pair."""
    rows, curves = {}, {}
    _, _, test_labels = context.test.pairs()
    for name in names:
        try:
            scored = SCORERS[name](context, name)
            rows[name] = row_of(scored, context)
            curves[name] = (test_labels, np.asarray(scored.test, np.float64))
        except SameSpaceError as exc:
            rows[name] = failed_row(first_line(exc))
        except Exception as exc:  # a baseline that cannot run (memory, a library) must not stop the others
            logger.warning(
                "%s could not run (%s: %s); the other methods go on", name, type(exc).__name__, first_line(exc)
            )
            rows[name] = failed_row(f"{type(exc).__name__}: {first_line(exc)}")
        if "why_null" in rows[name]:
            logger.info("%s: %s", name, rows[name]["why_null"])
    return rows, curves


def table_lines(block: dict) -> list[str]:
    """The printed table, in the block's order (samespace first), saying where thresholds come from."""

    def cell(value: float | None, digits: int = 4) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        f"{'method':<18} {'ROC-AUC':>7} {'PR-AUC':>7} {'F1':>7} {'thresh.':>8} {'photos/s':>9} "
        f"{'balanced ROC-AUC':>16}  trained on",
        f"  (AUCs and F1 on every distinct Test Data pair; {THRESHOLD_NOTE}; balanced: SameSpace's balanced pairs)",
    ]
    for name, row in block.items():
        at = row.get("at_training_best_f1") or {}
        rate = row.get("photos_per_s")
        balanced = row.get("balanced") or {}
        note = row.get("trained_on") or ""
        if row.get("weights") == "random weights":
            note += ", random weights"
        if "why_null" in row:
            note += f"  ({row['why_null']})"
        lines.append(
            f"{name:<18} {cell(row.get('roc_auc')):>7} {cell(row.get('pr_auc')):>7} {cell(at.get('f1')):>7} "
            f"{cell(at.get('threshold')):>8} {'n/a' if rate is None else f'{rate:g}':>9} "
            f"{cell(balanced.get('roc_auc')):>16}  {note}"
        )
    return lines
