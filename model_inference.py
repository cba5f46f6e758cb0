"""Use a trained SameSpace checkpoint: evaluate it, compare two photos, find duplicate photos.

    python model_inference.py evaluate CHECKPOINT [--data-dir DIR] [--output DIR]
    python model_inference.py compare CHECKPOINT A.jpg B.jpg
    python model_inference.py dedup CHECKPOINT FOLDER [--threshold 0.5] [--recursive] [--output DIR] [--scores]

CHECKPOINT is a checkpoint folder (from ``model_download.py`` or a local run). Everything runs in
eval mode, batched, on the GPU when there is one (``--device cpu`` to force). dedup only reads
the photos: it never deletes, moves or rewrites one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import candidates
import data
import features
import metrics
import model_def
import reports
import scoring

logger = logging.getLogger("samespace.inference")

ALL_PAIRS_LIMIT = 500  # --search auto scores every pair up to this many photos, then k neighbours


# --------------------------------------------------------------------------------------------
# evaluate


def variant_item(photo: np.ndarray, variant: np.ndarray | int) -> np.ndarray:
    """Row of (photo, variant) in a (N * 8)-row embedding table."""
    return np.asarray(photo, np.int64) * data.N_VARIANTS + np.asarray(variant, np.int64)


def evaluate(net: model_def.SiameseNet, config: dict, data_dir: Path, device: torch.device) -> dict:
    """The original's evaluation on Test Data (the balanced pair set of training), plus ROC-AUC,
    PR-AUC and P/R/F1 at 0.5 and at the best-F1 threshold, on that set and on every distinct pair
    of the split at its natural prevalence. Returns the report with the raw labels and scores."""
    settings = dataclasses.replace(model_def.DataSettings.from_config(config.get("data")), download=False)
    split, pairs = model_def.load_pairs(settings, "test", data_dir=data_dir)
    cache = features.FeatureCache(settings.cache_root(data_dir), net.trunk, device=device)
    per_variant = cache.features(split.images, desc="trunk features (test)")  # (N, 8, 960)
    embedder = scoring.Embedder(net, device)
    first, second = embedder.embed(per_variant.reshape(-1, per_variant.shape[-1]))
    scorer = scoring.PairScorer(net.head, first, second)

    logits = scorer.logits(
        variant_item(pairs.first, pairs.first_variant), variant_item(pairs.second, pairs.second_variant)
    ).numpy()
    probabilities = metrics.sigmoid(logits)
    balanced = {**metrics.pair_metrics(logits, pairs.label), **metrics.score_report(pairs.label, probabilities)}

    a, b = scoring.all_upper_pairs(len(split))
    natural_labels = (split.rooms[a] == split.rooms[b]).astype(np.int64)
    natural_scores = scorer.probabilities(variant_item(a, 0), variant_item(b, 0))
    report = {
        "test_photos": len(split),
        "rooms": int(len(np.unique(split.rooms))),
        "skipped_files": [f"{s.path.name}: {s.reason}" for s in split.skipped],
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


# --------------------------------------------------------------------------------------------
# compare


def compare(net: model_def.SiameseNet, first: Path, second: Path, device: torch.device) -> dict[str, float]:
    """P(same space) of two photos, in both orders and their mean."""
    images = torch.from_numpy(np.stack([data.read_photo(first), data.read_photo(second)])).permute(0, 3, 1, 2)
    embedder = scoring.Embedder(net, device)
    scorer = scoring.PairScorer(net.head, *embedder.embed(embedder.trunk_features(images)))
    forward, backward = torch.sigmoid(scorer.logits(np.array([0, 1]), np.array([1, 0]))).tolist()
    return {"probability": (forward + backward) / 2, "a_then_b": forward, "b_then_a": backward}


# --------------------------------------------------------------------------------------------
# dedup


@dataclasses.dataclass
class Dedup:
    """Scored pairs of a folder's photos and the duplicates among them."""

    names: list[str]
    first: np.ndarray
    second: np.ndarray
    scores: np.ndarray
    threshold: float
    search: str
    head_evaluations: int
    trunk_images: int = 0
    unreadable: list[data.Skipped] = dataclasses.field(default_factory=list)

    @property
    def duplicate_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep = self.scores >= self.threshold
        return self.first[keep], self.second[keep], self.scores[keep]

    def duplicates(self, with_scores: bool = False) -> dict[str, list]:
        """imagededup's format: every photo mapped to its duplicates (with scores, best first)."""
        found: dict[str, list] = {name: [] for name in self.names}
        for a, b, score in zip(*self.duplicate_pairs):
            found[self.names[a]].append((self.names[b], round(float(score), 6)))
            found[self.names[b]].append((self.names[a], round(float(score), 6)))
        for name, hits in found.items():
            hits.sort(key=lambda hit: -hit[1])
            found[name] = hits if with_scores else [hit[0] for hit in hits]
        return found

    def groups(self) -> list[list[int]]:
        """Connected groups of duplicates (two or more photos), largest first."""
        parent = list(range(len(self.names)))

        def root(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, b, _ in zip(*self.duplicate_pairs):
            parent[root(int(a))] = root(int(b))
        members: dict[int, list[int]] = {}
        for index in range(len(self.names)):
            members.setdefault(root(index), []).append(index)
        return sorted((m for m in members.values() if len(m) > 1), key=lambda m: (-len(m), m[0]))


def score_embeddings(
    first: torch.Tensor,
    second: torch.Tensor,
    head: torch.nn.Sequential,
    names: list[str],
    threshold: float = 0.5,
    search: str = "auto",
    neighbours: int = 20,
    index: str = "auto",
) -> Dedup:
    """Score pairs of photos from their tower embeddings: every pair, or each photo's
    ``neighbours`` nearest on the embeddings (candidate search). Both use the same scorer, so a
    pair's score does not depend on how it was found."""
    n = len(names)
    if search == "auto":
        search = "all" if n <= ALL_PAIRS_LIMIT else "knn"
    scorer = scoring.PairScorer(head, first, second)
    if search == "all":
        a, b = scoring.all_upper_pairs(n)
    else:
        table = candidates.nearest_neighbours(candidates.search_vectors(first, second), neighbours, method=index)
        a, b = candidates.candidate_pairs(table)
    return Dedup(list(names), a, b, scorer.probabilities(a, b), threshold, search, scorer.evaluations)


def list_files(folder: Path, recursive: bool, exclude: Path | None = None) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in pattern if p.is_file())
    if exclude is not None:
        excluded = exclude.resolve()
        files = [p for p in files if not p.resolve().is_relative_to(excluded)]
    return files


def dedup(
    net: model_def.SiameseNet,
    folder: Path,
    device: torch.device,
    threshold: float = 0.5,
    recursive: bool = False,
    search: str = "auto",
    neighbours: int = 20,
    index: str = "auto",
    exclude: Path | None = None,
) -> Dedup:
    """Duplicate photos in ``folder``: each photo through the backbone and towers once, then the
    head on (candidate) pairs of embeddings. Unreadable files are listed, not fatal."""
    if not folder.is_dir():
        raise data.DataError(f"not a folder: {folder}")
    paths = list_files(folder, recursive, exclude)
    embedder = scoring.Embedder(net, device)
    trunk_features, kept, unreadable = scoring.features_of_files(embedder, paths)
    for skipped in unreadable:
        logger.warning("skipped %s", skipped.reason)
    names = [paths[i].relative_to(folder).as_posix() for i in kept]
    first, second = embedder.embed(trunk_features)
    result = score_embeddings(first, second, net.head, names, threshold, search, neighbours, index)
    result.trunk_images, result.unreadable = embedder.trunk_images, unreadable
    return result


def write_dedup_outputs(result: Dedup, folder: Path, output: Path, with_scores: bool) -> dict:
    output.mkdir(parents=True, exist_ok=True)
    groups = result.groups()
    pair_scores = {(int(a), int(b)): float(s) for a, b, s in zip(*result.duplicate_pairs)}
    summary = {
        "photos": len(result.names),
        "skipped files": len(result.unreadable),
        "threshold": round(float(result.threshold), 4),
        "search": result.search,
        "scored pairs": int(len(result.scores)),
        "head evaluations": result.head_evaluations,
        "duplicate pairs": len(pair_scores),
        "groups": len(groups),
    }
    reports.write_json(output / "duplicates.json", result.duplicates(with_scores))
    reports.write_pairs_csv(output / "pairs.csv", result.names, result.first, result.second, result.scores)
    reports.write_dedup_html(
        output / "report.html", folder, result.names, groups, pair_scores, result.unreadable, summary
    )
    reports.write_json(
        output / "summary.json", {**summary, "skipped": [f"{s.path}: {s.reason}" for s in result.unreadable]}
    )
    return summary


# --------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, ...")
    commands = parser.add_subparsers(dest="command", required=True)

    ev = commands.add_parser("evaluate", help="metrics and curves on the Test Data split")
    ev.add_argument("checkpoint")
    ev.add_argument("--data-dir", help=f"data directory (default: ${data.DATA_DIR_ENV}, else ./data)")
    ev.add_argument("--output", help="report folder (default: samespace-outputs/evaluate-<checkpoint>)")
    ev.add_argument("--force", action="store_true", help="overwrite reports in a non-empty output folder")

    cmp = commands.add_parser("compare", help="probability that two photos show the same space")
    cmp.add_argument("checkpoint")
    cmp.add_argument("first", type=Path)
    cmp.add_argument("second", type=Path)

    dd = commands.add_parser("dedup", help="groups of duplicate photos in a folder")
    dd.add_argument("checkpoint")
    dd.add_argument("folder", type=Path)
    dd.add_argument("--threshold", type=float, default=0.5, help="duplicate when P(same space) >= this (default 0.5)")
    dd.add_argument("--recursive", action="store_true", help="include subfolders")
    dd.add_argument("--output", help="report folder (default: samespace-outputs/dedup-<folder>)")
    dd.add_argument("--scores", action="store_true", help="duplicates.json lists [duplicate, score] pairs")
    dd.add_argument(
        "--search",
        choices=("auto", "all", "knn"),
        default="auto",
        help=f"all pairs, or k nearest neighbours first (auto: all up to {ALL_PAIRS_LIMIT} photos)",
    )
    dd.add_argument("--neighbours", type=int, default=20, help="candidates per photo for --search knn (default 20)")
    dd.add_argument(
        "--index",
        choices=candidates.METHODS,
        default="auto",
        help=f"neighbour search: exact up to {candidates.EXACT_LIMIT} photos, faiss HNSW above (auto)",
    )
    dd.add_argument("--force", action="store_true", help="overwrite reports in a non-empty output folder")
    args = parser.parse_args(argv)
    if args.command == "dedup" and not 0.0 <= args.threshold <= 1.0:
        parser.error("--threshold must be between 0 and 1")
    return args


def run(args: argparse.Namespace) -> None:
    device = scoring.resolve_device(args.device)
    net, load_data = model_def.load_checkpoint(args.checkpoint, device=device)
    label = Path(args.checkpoint).resolve().name
    if args.command == "compare":
        result = compare(net, args.first, args.second, device)
        print(
            f"{result['probability']:.4f}  P(same space) of {args.first.name} and {args.second.name} "
            f"(A->B {result['a_then_b']:.4f}, B->A {result['b_then_a']:.4f})"
        )
    elif args.command == "evaluate":
        output = Path(args.output or Path("samespace-outputs") / f"evaluate-{label}")
        reports.prepare_output(output, args.force, create=False)
        config = load_data.get("experiment_config") or {}
        outcome = evaluate(net, config, data.resolve_data_dir(explicit=args.data_dir), device)
        reports.prepare_output(output, force=True)
        reports.write_json(output / "evaluation.json", {"checkpoint": str(args.checkpoint), **outcome["report"]})
        reports.write_curves_png(output / "curves.png", outcome["curves"])
        balanced, natural = outcome["report"]["balanced"], outcome["report"]["all_distinct_pairs"]
        print(
            f"balanced: loss {balanced['loss']:.4f}  accuracy {balanced['accuracy']:.4f}  "
            f"ROC-AUC {balanced.get('roc_auc', float('nan')):.4f}"
        )
        print(
            f"all distinct pairs ({natural['pairs']}, prevalence {natural['prevalence']:.4f}): "
            f"PR-AUC {natural.get('pr_auc', float('nan')):.4f}  F1 at 0.5 {natural['at_0.5']['f1']:.4f}"
        )
        print(f"report: {output / 'evaluation.json'}  curves: {output / 'curves.png'}")
    else:
        if not args.folder.is_dir():
            raise data.DataError(f"not a folder: {args.folder}")
        output = Path(args.output) if args.output else Path("samespace-outputs") / f"dedup-{args.folder.resolve().name}"
        reports.prepare_output(output, args.force, create=False)
        result = dedup(
            net,
            args.folder,
            device,
            args.threshold,
            args.recursive,
            args.search,
            args.neighbours,
            args.index,
            exclude=output,
        )
        summary = write_dedup_outputs(result, args.folder, output, args.scores)
        print(
            f"{summary['photos']} photos, {summary['groups']} duplicate groups, {summary['duplicate pairs']} pairs "
            f"at >= {args.threshold} ({summary['head evaluations']} head evaluations, {summary['skipped files']} "
            f"files skipped)"
        )
        print(f"report: {output / 'report.html'}  map: {output / 'duplicates.json'}")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        run(args)
        return 0
    except (model_def.CheckpointError, model_def.ConfigError, data.DataError, reports.OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
