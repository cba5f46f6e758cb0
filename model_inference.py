"""Use a trained SameSpace checkpoint: evaluate it, compare two photos, find duplicate photos.

    python model_inference.py evaluate CHECKPOINT [--data-dir DIR] [--output DIR]
    python model_inference.py compare CHECKPOINT A.jpg B.jpg [--threshold 0.5 | --threshold-from evaluation.json]
    python model_inference.py dedup CHECKPOINT FOLDER [--threshold 0.5 | --threshold-from evaluation.json]
        [--keep largest|newest|oldest|first] [--recursive] [--include-hidden] [--output DIR] [--scores]
    python model_inference.py dedup --method phash FOLDER [--threshold 10]   # imagededup's hash, no checkpoint

CHECKPOINT is a checkpoint folder (from ``model_download.py``, a local run, or the original's
published checkpoint) or a bare checkpoint UUID (looked up locally). Everything runs in
eval mode, batched, on the GPU when there is one (``--device cpu`` to force, before or after the
subcommand). dedup only reads the photos: it never deletes, moves or rewrites one; to_remove.json
lists the files a user may delete, all but the kept one of each group.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

# Only light imports up here: torch and the pipeline load inside the subcommands, so that
# ``--help`` and argument errors answer at once.
from samespace.errors import DataError, OutputError, exit_code, plural, printable
from samespace.settings import DATA_DIR_ENV, ENGINES, Hyperparameters, count, resolve_data_dir

logger = logging.getLogger("samespace.inference")

# For the help texts without importing torch; tests/test_model_inference.py keeps them equal to
# samespace.dedup.ALL_PAIRS_LIMIT, samespace.candidates.METHODS and samespace.candidates.EXACT_LIMIT.
ALL_PAIRS_LIMIT = 500
INDEX_METHODS = ("auto", "exact", "faiss", "ivfpq")
EXACT_LIMIT = 50_000
PREPROCESSING_CHOICES = ("auto", "ours", "original")  # samespace.checkpoints.PREPROCESSING_CHOICES
HASH_METHODS = ("phash", "dhash", "whash", "ahash")  # samespace.baselines.hashes.METHODS
HASH_DISTANCE = 10  # samespace.baselines.hashes.DEFAULT_DISTANCE: imagededup's default, in bits
BASELINE_METHODS = (  # samespace.baselines.table.NAMES
    "samespace", "trunk-cosine", "phash", "dhash", "whash", "ahash", "imagededup-cnn", "vgg16-vote", "vgg16-cosine",
    "vgg16-pca-cosine", "autoencoder", "autoencoder-kmeans", "siamese-resnet",
)  # fmt: skip
KEEP_RULES = ("largest", "newest", "oldest", "first")  # samespace.groups.KEEP_RULES
THRESHOLD_FROM_HELP = "the best-F1 threshold from the evaluation.json that `evaluate` wrote (instead of --threshold)"


def output_folder(
    args: argparse.Namespace, default: Path, inputs: Sequence[Path] = (), scanned: Path | None = None
) -> Path:
    """The report folder, checked before any work so that a bad location costs nothing: not one
    of ``inputs`` nor inside one (nor around ``scanned``, whose files would be read back as
    photos), writable, and refused when non-empty unless ``--force``."""
    from samespace import reports

    output = Path(args.output) if args.output else default
    where = output.resolve()
    around = [scanned] if scanned is not None else []
    for folder in [*inputs, *around]:
        inside = (folder.parent if folder.is_file() else folder).resolve()  # a checkpoint given by a file
        if where == inside or where.is_relative_to(inside) or (folder in around and inside.is_relative_to(where)):
            raise OutputError(
                f"output {output} overlaps the input {folder}: reports never go among the inputs; "
                "pass --output DIR outside it"
            )
    existing = where
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        kind = "a broken link" if existing.is_symlink() else "a file"
        raise OutputError(f"output {output}: {existing} is {kind}, not a folder; pass --output DIR")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"output {output}: no permission to write in {existing}; pass --output DIR elsewhere")
    if scanned is not None and existing == where and not os.access(where.parent, os.W_OK | os.X_OK):
        raise OutputError(  # dedup's set is built beside the folder, then switched in (reports.output_set)
            f"output {output}: no permission to write in {where.parent}, where the new reports are built before "
            "they replace the old; pass --output DIR elsewhere"
        )
    reports.prepare_output(output, args.force, create=False)
    return output


def random_trunk_warning(meta: dict[str, Any], checkpoint: str) -> str | None:
    """One line when the checkpoint's trunk had random weights: such a network gives every pair
    nearly the same score, so its results mean nothing."""
    if Hyperparameters.from_hparams(meta.get("hparams") or {}).pretrained:
        return None
    return (
        f"checkpoint {checkpoint} was trained on a trunk with random weights (hparams pretrained: false): "
        "its scores are meaningless, nearly equal for every pair"
    )


def figure(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def run_evaluate(args: argparse.Namespace) -> None:
    import dataclasses

    import data
    from samespace import evaluation, features, original, reports, scoring
    from samespace.baselines import table
    from samespace.checkpoints import open_checkpoint
    from samespace.settings import DataSettings

    baselines = table.parse_names(args.baselines) if args.baselines else []
    device = scoring.resolve_device(args.device)
    data_dir = resolve_data_dir(explicit=args.data_dir)
    root = data.dataset_root(data_dir)
    default = Path("samespace-outputs") / f"evaluate-{Path(args.checkpoint).resolve().name}"
    output = output_folder(args, default, inputs=[Path(args.checkpoint), root])
    problem = test_data_problem(data_dir)
    if problem:
        raise DataError(problem)
    if baselines and not (root / data.SPLITS["train"]).is_dir():  # before any work
        raise DataError(
            f"--baselines choose their thresholds on Training Data, and {printable(str(root / data.SPLITS['train']))} "
            "is missing: use a complete copy of the dataset, or leave out --baselines"
        )
    net, meta = open_checkpoint(args.checkpoint, device, args.preprocessing)
    warning = random_trunk_warning(meta, args.checkpoint)
    if warning:
        logger.warning(warning)
    config = meta.get("experiment_config") or {}
    settings = dataclasses.replace(DataSettings.from_config(config.get("data")), download=False)
    if args.cache_dir:
        settings = dataclasses.replace(settings, cache_dir=args.cache_dir)
    split, pairs = data.load_pairs(settings, "test", data_dir=data_dir)
    images = split.images
    if net.preprocessing == "original":  # the original's reader: native size, float resize
        images = original.exact_images([photo.path for photo in split.photos])
    per_variant, engine = features.network_features(
        settings.cache_root(data_dir), net, images, device, engine_name=args.engine
    )
    outcome = evaluation.evaluate(net, per_variant, pairs, split.rooms, device)
    report = {
        "checkpoint": str(args.checkpoint),
        "preprocessing": net.preprocessing,
        "engine": engine,
        "warnings": [warning] if warning else [],
        **outcome["report"],
        "skipped_files": [f"{s.path.name}: {s.reason}" for s in split.skipped],
    }
    curves = {}
    if baselines:
        context = table.Context(
            train=baseline_split(data.load_split(root / data.SPLITS["train"]), "Training Data"),
            test=baseline_split(split, "Test Data"),
            device=device,
            cache_root=settings.cache_root(data_dir),
            engine_name=args.engine,
            net=net,
            random_trunk=warning is not None,
            seed=settings.seed,
            balanced=table.Balanced.of(pairs),
        )
        context.memo[("checkpoint", "Test Data")] = (per_variant, 0.0)  # the evaluation's own features and scores
        context.memo[("samespace", "Test Data")] = (outcome["curves"]["all distinct pairs"][1], 0.0)
        context.memo[("samespace", "balanced")] = (outcome["curves"]["balanced"][1], 0.0)
        report["methods"], curves = table.methods_block(baselines, context)
    reports.prepare_output(output, force=True)
    reports.write_json(output / "evaluation.json", report)
    reports.write_curves_png(
        output / "curves.png",
        outcome["curves"],
        checkpoint=Path(args.checkpoint).resolve().name,
        dataset=f"Test Data of {data_dir.name} ({report['test_photos']} photos)",
        random_trunk=warning is not None,
    )
    balanced, natural = report["balanced"], report["all_distinct_pairs"]
    print(
        f"balanced ({plural(balanced['pairs'], 'pair')}): loss {figure(balanced['loss'])}  "
        f"accuracy {figure(balanced['accuracy'])}  ROC-AUC {figure(balanced['roc_auc'])}"
    )
    at_half = natural["at_0.5"] or {}
    print(
        f"all distinct pairs ({plural(natural['pairs'], 'pair')}, prevalence {figure(natural['prevalence'])}): "
        f"PR-AUC {figure(natural['pr_auc'])}  F1 at 0.5 {figure(at_half.get('f1'))}"
    )
    reasons = {
        f"{name}: {section['why_null']}"
        for name, section in report.items()
        if isinstance(section, dict) and "why_null" in section
    }
    if reasons:
        logger.warning("n/a figures are null in evaluation.json: %s", "; ".join(sorted(reasons)))
    if baselines:
        from samespace.baselines import plots

        title = f"{Path(args.checkpoint).resolve().name} and other methods on every distinct Test Data pair"
        plots.write_methods_png(output / "methods.png", curves, report["methods"], title=title)
        print("\n".join(table.table_lines(report["methods"])))
        print(f"methods: {output / 'methods.png'}")
    print(f"report: {output / 'evaluation.json'}  curves: {output / 'curves.png'}")


def baseline_split(split: Any, name: str) -> Any:
    """A data.Split as the baselines read it (files, images, rooms)."""
    from samespace.baselines import table

    return table.SplitPhotos(name, [p.path for p in split.photos], split.images, split.rooms)


TEST_DATA_LAYOUT = "Airbnb Data/Test Data/<room-type>/<city>_<room_id>_<n>.jpg"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def test_data_problem(data_dir: Path) -> str | None:
    """Why ``data_dir`` holds no Test Data for ``evaluate``, showing the layout it expects (a file
    or a plain folder of photos is no download target), or None."""
    import data

    if (data.dataset_root(data_dir) / data.SPLITS["test"]).is_dir():
        return None
    where = printable(str(data_dir))
    download = f"`python data.py --data-dir {where}` downloads the Kaggle copy"
    if os.path.lexists(data_dir) and not data_dir.is_dir():
        return f"--data-dir {where} is a file, not a folder: evaluate reads photos laid out as {TEST_DATA_LAYOUT}"
    if not data_dir.is_dir():
        return f"no dataset under {where}: {download}, or pass --data-dir DIR of a copy laid out as {TEST_DATA_LAYOUT}"
    try:  # the first 10,000 entries tell a flat photo folder
        with os.scandir(data_dir) as entries:
            flat = sum(1 for _, entry in zip(range(10_000), entries) if entry.name.lower().endswith(PHOTO_SUFFIXES))
    except OSError:
        flat = 0
    if flat:
        return (
            f"--data-dir {where} holds photos directly ({plural(flat, 'photo')}), but evaluate needs labelled ones "
            f"laid out as {TEST_DATA_LAYOUT} (the room comes from the folder and the name); "
            f"to find duplicates in a plain folder, use `model_inference.py dedup CHECKPOINT {where}`"
        )
    return f"no {TEST_DATA_LAYOUT} under {where}: pass --data-dir DIR of a copy laid out so, or {download}"


def run_compare(args: argparse.Namespace) -> None:
    import numpy as np

    from samespace import photos

    resolve_threshold(args)  # a bad evaluation.json is one line before any work
    # The photos first (no torch needed): a bad one, or a FIFO (never opened), is one line at once.
    # draft: JPEG decoding at a reduced scale, fine for inference (training decodes exactly).
    pixels = np.stack([photos.read_photo(path, draft=True) for path in (args.first, args.second)])
    from samespace import evaluation, scoring
    from samespace.checkpoints import open_checkpoint

    device = scoring.resolve_device(args.device)
    net, meta = open_checkpoint(args.checkpoint, device, args.preprocessing)
    warning = random_trunk_warning(meta, args.checkpoint)
    if warning:
        logger.warning(warning)
    if net.preprocessing == "original":  # the original's reader: native size, float resize
        from samespace import original

        pixels = np.stack([original.read_photo(path) for path in (args.first, args.second)])
    result = evaluation.compare(net, photos.as_tensor(pixels), device, engine_name=args.engine)
    print(
        f"{result['probability']:.4f}  {verdict(result['probability'], args.threshold)} at threshold "
        f"{args.threshold:g}  P(same space) of {printable(args.first.name)} and "
        f"{printable(args.second.name)} (A->B {result['a_then_b']:.4f}, B->A {result['b_then_a']:.4f})"
    )


def run_hash_dedup(args: argparse.Namespace) -> None:
    """dedup --method phash|dhash|whash|ahash: imagededup's hash, Hamming distance <= --threshold bits."""
    from samespace import dedup

    if args.checkpoint is not None:
        logger.info("--method %s reads no checkpoint: %s is not used", args.method, printable(args.checkpoint))
    default = Path("samespace-outputs") / f"dedup-{args.folder.resolve().name}-{args.method}"
    output = output_folder(args, default, scanned=args.folder)
    bits = int(args.threshold)
    result = dedup.find_hash_duplicates(
        args.folder,
        args.method,
        max_distance=bits,
        recursive=args.recursive,
        exclude=output,
        keep=args.keep,
        include_hidden=args.include_hidden,
    )
    label = f"{args.method} (imagededup 0.3.3; score 1 - Hamming/64, duplicate at <= {bits} bits)"
    summary = dedup.write_outputs(result, args.folder, output, args.scores, checkpoint=label, keep=args.keep)
    print(
        f"{plural(len(result.names), 'photo')}, {plural(summary['groups'], 'duplicate group')}, "
        f"{plural(summary['duplicate pairs'], 'duplicate pair')} within {bits} bits by {args.method} "
        f"({plural(len(result.unreadable), 'file')} skipped)"
    )
    print(f"report: {printable(str(output / 'report.html'))}  map: {printable(str(output / 'duplicates.json'))}")


def resolve_threshold(args: argparse.Namespace) -> str:
    """Sets ``args.threshold`` from ``--threshold-from`` when given; returns where it came from."""
    if getattr(args, "threshold_from", None) is None:
        return "--threshold"
    from samespace import evaluation

    args.threshold, source = evaluation.threshold_from(args.threshold_from)
    logger.info("threshold %.4f: %s", args.threshold, source)
    return source


def verdict(probability: float, threshold: float) -> str:
    """What a probability means at ``threshold``: dedup's rule (duplicate when >= threshold)."""
    return "same space" if probability >= threshold else "different spaces"


def open_catalogue(args: argparse.Namespace, net: Any) -> Any:
    """The ``--against`` catalogue, loaded and checked against this network (None without it);
    ``--save-catalogue``'s folder checked before any work."""
    from samespace import catalogue

    if args.save_catalogue:
        catalogue.check_new_folder(args.save_catalogue)
        if args.save_catalogue.resolve().is_relative_to(args.folder.resolve()):
            raise OutputError(f"--save-catalogue {args.save_catalogue} is inside the photo folder: put it outside")
    if args.against is None:
        return None
    kept = catalogue.load(args.against)
    catalogue.check_identity(kept, net)
    if args.search == "knn":
        catalogue.check_neighbours(kept, args.neighbours)
    return kept


def run_dedup(args: argparse.Namespace) -> None:
    from samespace import catalogue, dedup, scoring
    from samespace.checkpoints import open_checkpoint

    if not args.folder.is_dir():
        raise DataError(f"not a folder: {printable(str(args.folder))}")
    if args.method != "samespace":
        if args.threshold_from is not None:
            raise DataError(
                "--threshold-from holds a P(same space) threshold: with a hash --method, give --threshold in bits"
            )
        return run_hash_dedup(args)
    source = resolve_threshold(args)
    device = scoring.resolve_device(args.device)
    default = Path("samespace-outputs") / f"dedup-{args.folder.resolve().name}"
    kept_in = [args.against] if args.against else []
    output = output_folder(args, default, inputs=[Path(args.checkpoint), *kept_in], scanned=args.folder)
    net, meta = open_checkpoint(args.checkpoint, device, args.preprocessing)
    warning = random_trunk_warning(meta, args.checkpoint)
    if warning:
        logger.warning(warning)
    kept = open_catalogue(args, net)
    embedded = dedup.embed_photos(
        net,
        args.folder,
        device,
        recursive=args.recursive,
        exclude=output,
        engine_name=args.engine,
        include_hidden=args.include_hidden,
    )
    ranking = dict(threshold=args.threshold, search=args.search, neighbours=args.neighbours, keep=args.keep)
    if kept is None:
        result = dedup.dedup_embedded(
            embedded, net.head, index=args.index, keep_table=bool(args.save_catalogue), **ranking
        )
    else:
        result, addition = catalogue.against(kept, embedded, net.head, **ranking)
    summary = dedup.write_outputs(
        result,
        args.folder,
        output,
        args.scores,
        checkpoint=Path(args.checkpoint).resolve().name,
        warnings=[warning] if warning else [],
        keep=args.keep,
        threshold_source=source,
    )
    if args.save_catalogue:
        catalogue.save(args.save_catalogue, net, embedded, neighbours=args.neighbours, index=args.index, result=result)
    elif args.add:
        catalogue.append(args.against, net, addition, kept)
    print(
        f"{plural(len(result.names), 'photo')}, {plural(summary['groups'], 'duplicate group')}, "
        f"{plural(summary['duplicate pairs'], 'duplicate pair')} at >= {args.threshold} "
        f"({summary['identical copies']} of them byte-identical; {plural(result.head_evaluations, 'head evaluation')}; "
        f"{plural(len(result.unreadable), 'file')} skipped)"
    )
    print(
        f"report: {printable(str(output / 'report.html'))}  map: {printable(str(output / 'duplicates.json'))}  "
        f"{plural(summary['to remove'], 'file')} to remove, kept by {args.keep}: "
        f"{printable(str(output / 'to_remove.json'))} (nothing was deleted)"
    )


def number(text: str) -> float:
    """A number; whether it must be a probability or bits depends on --method (check_dedup_threshold)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None


def probability(text: str) -> float:
    """A number from 0 to 1 (also refuses nan)."""
    value = number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def check_dedup_threshold(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--threshold is P(same space) for samespace (default 0.5) and whole bits for a hash (default 10)."""
    if args.method != "samespace" and (args.against or args.save_catalogue):
        parser.error("--against and --save-catalogue keep the network's embeddings: not with a hash --method")
    if args.add and args.against is None:
        parser.error("--add appends to the catalogue given by --against DIR")
    if args.against and args.save_catalogue:
        parser.error("--save-catalogue makes a new catalogue; to extend the --against one, pass --add")
    if args.method == "samespace":
        if args.checkpoint is None:
            parser.error("the following arguments are required: checkpoint (or pass --method phash|dhash|whash|ahash)")
        args.threshold = 0.5 if args.threshold is None else args.threshold
        if not 0.0 <= args.threshold <= 1.0:
            parser.error(f"argument --threshold: must be between 0 and 1, not {args.threshold:g}")
        return
    bits = HASH_DISTANCE if args.threshold is None else args.threshold
    if not (math.isfinite(bits) and bits == int(bits) and 0 <= bits <= 64):
        parser.error(f"argument --threshold: for --method {args.method}, whole bits from 0 to 64, not {bits:g}")
    args.threshold = int(bits)


class Parser(argparse.ArgumentParser):
    """Argument errors as one line (what, and where the help is) instead of a usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    device_help = "auto (the GPU when there is one; default), cpu, cuda, cuda:1, ..."
    # --device after the subcommand too; SUPPRESS so that leaving it out there keeps the value
    # given before the subcommand.
    device_option = argparse.ArgumentParser(add_help=False)
    device_option.add_argument("--device", default=argparse.SUPPRESS, help=device_help)
    preprocessing_help = "photo normalisation: auto (the one the checkpoint was trained with; default), ours, original"
    device_option.add_argument(
        "--preprocessing", choices=PREPROCESSING_CHOICES, default=argparse.SUPPRESS, help=preprocessing_help
    )
    engine_help = "what runs the trunk: auto (onnxruntime on the CPU, torch on CUDA; default), torch, onnx"
    device_option.add_argument("--engine", choices=ENGINES, default=argparse.SUPPRESS, help=engine_help)
    parser = Parser(prog=Path(__file__).name, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help=device_help)
    parser.add_argument("--preprocessing", choices=PREPROCESSING_CHOICES, default="auto", help=preprocessing_help)
    parser.add_argument("--engine", choices=ENGINES, default="auto", help=engine_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{evaluate,compare,dedup}")
    checkpoint_help = "checkpoint folder (from model_download.py, a local run or the original's) or bare UUID"

    ev = commands.add_parser("evaluate", parents=[device_option], help="metrics and curves on the Test Data split")
    ev.set_defaults(func=run_evaluate)
    ev.add_argument("checkpoint", help=checkpoint_help)
    ev.add_argument("--data-dir", help=f"data directory (default: ${DATA_DIR_ENV}, else ./data)")
    ev.add_argument(
        "--cache-dir", help="trunk feature cache (default: the config's data.cache_dir, else inside the data directory)"
    )
    ev.add_argument("--output", help="report folder (default: samespace-outputs/evaluate-<checkpoint>)")
    ev.add_argument("--force", action="store_true", help="overwrite reports in a non-empty output folder")
    ev.add_argument(
        "--baselines",
        nargs="?",
        const="all",
        help="also score other methods on the same pairs, thresholds chosen on Training Data, and draw methods.png: "
        f"all (without a value) or a comma list of {','.join(BASELINE_METHODS)}",
    )

    cmp = commands.add_parser(
        "compare", parents=[device_option], help="probability that two photos show the same space"
    )
    cmp.set_defaults(func=run_compare)
    cmp.add_argument("checkpoint", help=checkpoint_help)
    cmp.add_argument("first", type=Path, help="a photo file")
    cmp.add_argument("second", type=Path, help="another photo file")
    chosen = cmp.add_mutually_exclusive_group()
    chosen.add_argument(
        "--threshold", type=probability, default=0.5, help="verdict 'same space' when P(same space) >= this (0.5)"
    )
    chosen.add_argument("--threshold-from", type=Path, metavar="EVALUATION_JSON", help=THRESHOLD_FROM_HELP)

    dd = commands.add_parser("dedup", parents=[device_option], help="groups of duplicate photos in a folder")
    dd.set_defaults(func=run_dedup)
    dd.add_argument("checkpoint", nargs="?", help=f"{checkpoint_help} (not with a hash --method)")
    dd.add_argument("folder", type=Path, help="folder of photos (only read, never changed)")
    dd.add_argument(
        "--method",
        choices=("samespace", *HASH_METHODS),
        default="samespace",
        help="the checkpoint (default), or imagededup 0.3.3's perceptual hash (no checkpoint)",
    )
    chosen = dd.add_mutually_exclusive_group()
    chosen.add_argument(
        "--threshold",
        type=number,
        default=None,
        help=f"samespace: duplicate when P(same space) >= this (default 0.5); "
        f"a hash: when at most this many of 64 bits differ (default {HASH_DISTANCE})",
    )
    chosen.add_argument("--threshold-from", type=Path, metavar="EVALUATION_JSON", help=THRESHOLD_FROM_HELP)
    dd.add_argument("--recursive", action="store_true", help="include subfolders")
    dd.add_argument(
        "--include-hidden", action="store_true", help="include hidden (.name) subfolders, skipped by default"
    )
    dd.add_argument("--output", help="report folder (default: samespace-outputs/dedup-<folder>)")
    dd.add_argument("--scores", action="store_true", help="duplicates.json lists [duplicate, score] pairs")
    dd.add_argument(
        "--search",
        choices=("auto", "all", "knn"),
        default="auto",
        help=f"all pairs, or k nearest neighbours first (auto: all up to {ALL_PAIRS_LIMIT} photos)",
    )
    dd.add_argument(
        "--neighbours", type=count(1), default=20, help="candidates per photo for --search knn (default 20)"
    )
    dd.add_argument(
        "--index",
        choices=INDEX_METHODS,
        default="auto",
        help=(
            f"neighbour search: exact up to {EXACT_LIMIT:,} photos, above a compressed faiss index (auto; "
            "ivfpq: that index, about 200 B a photo); faiss: HNSW, 10 KB a photo"
        ),
    )
    dd.add_argument(
        "--keep",
        choices=KEEP_RULES,
        default="largest",
        help="the file each group keeps (to_remove.json lists the others; nothing is deleted): largest "
        "(resolution, then file size, then name; default), newest, oldest, first (by name)",
    )
    dd.add_argument("--force", action="store_true", help="overwrite reports in a non-empty output folder")
    dd.add_argument(
        "--save-catalogue",
        type=Path,
        metavar="DIR",
        help="keep the photos' embeddings and each one's --neighbours nearest similarities in DIR (a new folder)",
    )
    dd.add_argument(
        "--against", type=Path, metavar="DIR", help="score the photos against the catalogue in DIR (not re-embedded)"
    )
    dd.add_argument("--add", action="store_true", help="with --against: append the photos to the catalogue")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "dedup":  # the dedup subparser, so that errors point at its --help
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        check_dedup_threshold(commands.choices["dedup"], args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    return exit_code(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
