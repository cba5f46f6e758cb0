"""Download SameSpace checkpoints from a Determined master.

    python model_download.py --experiment ID [--top-n N] [--output checkpoints] [--force]
    python model_download.py --checkpoint UUID [--output checkpoints] [--force]

The master comes from --master or DET_MASTER; credentials from --user/DET_USER and DET_PASSWORD,
or an existing ``det user login`` session. Checkpoints are ranked by the experiment's searcher
metric (validation_loss, smaller is better) and each lands in ``<output>/<uuid>/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import uuid as uuidlib
from pathlib import Path
from typing import Any, Callable, Sequence

from determined.common.api import errors
from determined.experimental import client


class DownloadError(Exception):
    """A failure the user can act on; its message is one line."""


@dataclasses.dataclass
class Saved:
    uuid: str
    trial_id: int | None
    metric: str
    value: float | None
    path: Path


def connect(master: str | None = None, user: str | None = None, password: str | None = None) -> client.Determined:
    """A client for the master (DET_MASTER, DET_USER/DET_PASSWORD or a cached login by default)."""
    return client.Determined(master=master, user=user, password=password)


def searcher_metric(experiment: Any) -> tuple[str, bool]:
    searcher = (experiment.config or {}).get("searcher", {})
    return searcher.get("metric", "validation_loss"), bool(searcher.get("smaller_is_better", True))


def best_checkpoints(experiment: Any, top_n: int) -> list[Any]:
    """The experiment's ``top_n`` completed checkpoints, best first by its searcher metric."""
    _, smaller_is_better = searcher_metric(experiment)
    order = client.OrderBy.ASCENDING if smaller_is_better else client.OrderBy.DESCENDING
    return list(
        experiment.list_checkpoints(sort_by=client.CheckpointSortBy.SEARCHER_METRIC, order_by=order, max_results=top_n)
    )


def metric_value(checkpoint: Any, metric: str) -> float | None:
    training = getattr(checkpoint, "training", None)
    value = ((training.validation_metrics or {}).get("avgMetrics") or {}).get(metric) if training else None
    return float(value) if value is not None else None


def download_into(checkpoint: Any, target: Path) -> Path:
    """Download into ``target`` via a temporary sibling, so a failure leaves nothing half-written
    and an existing folder is only replaced once the new copy is complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuidlib.uuid4().hex[:8]}.partial")
    try:
        checkpoint.download(str(partial))
    except Exception:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)  # only reached with --force or an empty folder
    partial.rename(target)
    return target


def download(
    experiment_id: int | None,
    checkpoint_uuid: str | None,
    top_n: int,
    output: Path,
    force: bool,
    session: Any,
) -> list[Saved]:
    if checkpoint_uuid:
        checkpoint = session.get_checkpoint(checkpoint_uuid)
        metric = "validation_loss"
        if getattr(checkpoint, "training", None) and checkpoint.training.experiment_config:
            metric = checkpoint.training.experiment_config.get("searcher", {}).get("metric", metric)
        chosen = [checkpoint]
    else:
        experiment = session.get_experiment(experiment_id)
        metric, _ = searcher_metric(experiment)
        chosen = best_checkpoints(experiment, top_n)
        if not chosen:
            raise DownloadError(f"experiment {experiment_id} has no completed checkpoints")
    # Check every target first: refuse before downloading anything.
    for checkpoint in chosen:
        target = output / checkpoint.uuid
        if target.is_file():
            raise DownloadError(f"{target} exists and is a file, not a folder")
        if target.exists() and any(target.iterdir()) and not force:
            raise DownloadError(f"{target} exists and is not empty; pass --force to replace it")
    saved = []
    for checkpoint in chosen:
        path = download_into(checkpoint, output / checkpoint.uuid)
        trial_id = checkpoint.training.trial_id if getattr(checkpoint, "training", None) else None
        saved.append(Saved(checkpoint.uuid, trial_id, metric, metric_value(checkpoint, metric), path))
    return saved


def explain(exc: Exception, args: argparse.Namespace) -> str:
    """One line for each failure a user meets."""
    if isinstance(exc, errors.MasterNotFoundException):
        return f"cannot reach the Determined master ({args.master or 'DET_MASTER'}): {str(exc).splitlines()[0][:160]}"
    bad_login = isinstance(exc, errors.ForbiddenException) and (
        "invalid credentials" in str(exc) or "user not found" in str(exc)
    )
    if isinstance(exc, errors.UnauthenticatedException) or bad_login:
        return (
            "the master rejected the credentials: set DET_USER and DET_PASSWORD, pass --user, or run `det user login`"
        )
    if isinstance(exc, errors.NotFoundException):
        what = f"checkpoint {args.checkpoint}" if args.checkpoint else f"experiment {args.experiment}"
        return f"{what} not found on the master"
    if isinstance(exc, errors.ForbiddenException):
        return f"not allowed to read that from the master: {str(exc).splitlines()[0][:160]}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", type=int, help="download this experiment's best checkpoints")
    which.add_argument("--checkpoint", metavar="UUID", help="download one checkpoint")
    parser.add_argument("--top-n", type=int, default=1, help="how many of the best checkpoints (default 1)")
    parser.add_argument("--output", default="checkpoints", help="folder for <uuid>/ subfolders (default ./checkpoints)")
    parser.add_argument("--force", action="store_true", help="replace non-empty target folders")
    parser.add_argument("--master", help="master URL (default: $DET_MASTER)")
    parser.add_argument("--user", help="user name (default: $DET_USER or the `det user login` session)")
    args = parser.parse_args(argv)
    if args.top_n < 1:
        parser.error("--top-n must be at least 1")
    return args


def main(argv: Sequence[str] | None = None, connect: Callable[..., Any] = connect) -> int:
    args = parse_args(argv)
    try:
        session = connect(master=args.master, user=args.user)
        saved = download(args.experiment, args.checkpoint, args.top_n, Path(args.output), args.force, session)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the client's errors, turned into one line each
        print(f"error: {explain(exc, args)}", file=sys.stderr)
        return 1
    for item in saved:
        value = "n/a" if item.value is None else f"{item.value:.6f}"
        print(f"{item.uuid}  trial {item.trial_id}  {item.metric} {value}  {item.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
