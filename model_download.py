"""Download SameSpace checkpoints from a Determined master.

    python model_download.py --experiment ID [--top-n N] [--output checkpoints] [--force]
    python model_download.py --checkpoint UUID [--output checkpoints] [--force]

The master comes from --master or DET_MASTER; credentials from --user/DET_USER and DET_PASSWORD,
or an existing ``det user login`` session. Checkpoints are ranked by the experiment's searcher
metric (validation_loss, smaller is better) and each lands in ``<output>/<uuid>/``.

Nothing the master sends is trusted: every checkpoint UUID must be a UUID, the checkpoint is
unpacked with tarfile's ``data`` filter (or copied from a shared_fs/directory storage seen here)
into a fresh temporary folder inside the output folder, checked, and only then moved into place;
``--force`` replaces exactly ``<output>/<uuid>/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import re
import shutil
import signal
import stat
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

import urllib3
from determined.common import api
from determined.common.api import errors
from determined.experimental import client

from samespace.errors import SameSpaceError, first_line

# Determined names checkpoints by canonical UUIDs (lowercase, hyphenated); nothing else may
# become a path below --output or a URL path on the master.
UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Seconds to wait for the master to connect or send the next bytes of a checkpoint: a stuck
# master must end in an error, not a hang.
READ_TIMEOUT_S = 120
# Bounds on a checkpoint streamed from the master. A SameSpace checkpoint is about 90 MB (51 MB of
# float32 weights plus RMSprop state for the 40 MB trained; the original's second trunk adds ~12 MB):
# 4 GiB leaves ample room.
MAX_UNPACKED_GB = 4.0
DEADLINE_S = 3600  # the whole download, checked between reads (so it may run READ_TIMEOUT_S over)
FREE_SPACE_RESERVE = 64 << 20  # left free on the output disk
DOWNLOADABLE_STATES = {"COMPLETED", "PARTIALLY_DELETED"}


class DownloadError(SameSpaceError):
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


def valid_uuid(text: Any, source: str) -> str:
    """``text`` if it is a canonical checkpoint UUID; ``source`` names where it came from."""
    if isinstance(text, str) and UUID_PATTERN.fullmatch(text):
        return text
    raise DownloadError(f"{source} gave {str(text)[:80]!r}, which is not a checkpoint UUID; nothing was downloaded")


def user_uuid(text: str) -> str:
    """The --checkpoint argument as a canonical UUID (upper case is accepted and lowered)."""
    if not UUID_PATTERN.fullmatch(text.strip().lower()):
        raise DownloadError(
            f"--checkpoint {text[:80]!r} is not a checkpoint UUID (like 3f2b6c1e-8d4a-4f0e-9b7a-2c5d8e1f0a6b);"
            " copy it from `det checkpoint list` or the web UI"
        )
    return text.strip().lower()


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
    """The checkpoint's validation value of ``metric``; None when the master sent none or junk."""
    training = getattr(checkpoint, "training", None)
    value = ((training.validation_metrics or {}).get("avgMetrics") or {}).get(metric) if training else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def check_tree(root: Path, what: str) -> None:
    """Refuse a tree holding anything but folders, regular files and links that stay inside it:
    a link out of a checkpoint would make later reads (or --force) reach the user's files."""
    top = os.path.realpath(root)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                if os.path.commonpath([top, os.path.realpath(path)]) != top:
                    raise DownloadError(f"{what} holds a link {name!r} that points outside it; nothing was saved")
            elif not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise DownloadError(f"{what} holds {name!r}, which is not a file or folder; nothing was saved")


def local_source(checkpoint: Any) -> Path | None:
    """The checkpoint's folder when its storage is shared_fs/directory and visible here (as
    Determined's direct download would copy it), else None."""
    config = getattr(getattr(checkpoint, "training", None), "experiment_config", None) or {}
    storage = config.get("checkpoint_storage") or {}
    if not isinstance(storage, dict):
        return None
    candidates = []
    if storage.get("type") == "shared_fs" and os.path.isabs(str(storage.get("host_path", ""))):
        host = Path(os.path.normpath(storage["host_path"]))
        sub = os.path.normpath(str(storage.get("storage_path") or "."))
        if not os.path.isabs(sub) and not sub.startswith(".."):  # Determined requires it under host_path
            candidates += [host / sub, Path("/determined_shared_fs") / sub]
    elif storage.get("type") == "directory" and os.path.isabs(str(storage.get("container_path", ""))):
        candidates.append(Path(storage["container_path"]))
    for base in candidates:
        source = base / checkpoint.uuid
        if source.is_dir() and not source.is_symlink():
            return source
    return None


def checkpoint_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's ``data`` filter, and absolute names refused rather than made relative: a master
    that sends them is not sending a Determined checkpoint."""
    if member.name.startswith(("/", os.sep)) or os.path.isabs(member.name):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, dest)


class DeadlineReader:
    """``response.raw`` read a receive at a time, refused once ``deadline`` (monotonic) passes:
    urllib3's timeout is per receive, so a master trickling bytes would otherwise never end."""

    def __init__(self, raw: Any, deadline: float, what: str):
        self.raw, self.deadline, self.what = raw, deadline, what

    def read(self, size: int = -1) -> bytes:
        if time.monotonic() > self.deadline:
            raise DownloadError(f"{self.what} took longer than {DEADLINE_S:g} s; nothing was saved")
        return self.raw.read1(size if size and size > 0 else 1 << 16)


class SizeBound:
    """The ``data`` filter (``checkpoint_member``) plus a running total of the sizes the tar
    headers declare (what extraction writes), refused past the cap or the free space."""

    def __init__(self, cap: int, free: int, disk: Path, what: str):
        self.cap, self.free, self.disk, self.what, self.total = cap, free, disk, what, 0

    def __call__(self, member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        self.total += member.size + 512  # its header and data
        if self.total > self.cap:
            raise DownloadError(
                f"{self.what} unpacks to more than {self.cap / 2**30:.3g} GiB, not a SameSpace checkpoint's size; "
                "nothing was saved (--max-unpacked-gb raises the cap)"
            )
        if self.total > self.free:
            raise DownloadError(
                f"{self.what} needs more than the {self.free / 2**30:.2f} GiB free on {self.disk}; "
                "nothing was saved (free some space or pass --output elsewhere)"
            )
        return checkpoint_member(member, dest)


def unpack_from_master(checkpoint: Any, content: Path, max_unpacked_gb: float | None = None) -> None:
    """Stream the checkpoint's tarball from the master into ``content`` with tarfile's ``data``
    filter: no absolute paths, ``..``, links out or device files (Determined's own
    ``Checkpoint.download`` extracts without a filter); at most ``max_unpacked_gb`` (default
    MAX_UNPACKED_GB) unpacked, within the free space and DEADLINE_S."""
    what = f"checkpoint {checkpoint.uuid} from the master"
    deadline = time.monotonic() + DEADLINE_S
    cap = int((MAX_UNPACKED_GB if max_unpacked_gb is None else max_unpacked_gb) * 2**30)
    free = shutil.disk_usage(content).free - FREE_SPACE_RESERVE
    try:
        response = checkpoint._session.get(  # the client's authenticated session, and Determined's endpoint
            f"/checkpoints/{checkpoint.uuid}",
            headers={"Accept": "application/gzip"},
            stream=True,
            timeout=READ_TIMEOUT_S,
        )
    except errors.APIException as exc:  # not found, or a storage the master cannot read (Azure)
        raise DownloadError(f"the master could not send checkpoint {checkpoint.uuid}: {first_line(exc, 160)}") from None
    try:
        announced = int(response.headers.get("Content-Length") or 0)
        if announced > free:
            raise DownloadError(
                f"{what} is {announced / 2**30:.2f} GiB packed, more than the {max(free, 0) / 2**30:.2f} GiB free "
                f"on {content.parent}; nothing was saved (free some space or pass --output elsewhere)"
            )
        bound = SizeBound(cap, free, content.parent, what)
        with tarfile.open(fileobj=DeadlineReader(response.raw, deadline, what), mode="r|*") as archive:
            archive.extractall(content, filter=bound)
    except tarfile.FilterError as exc:
        raise DownloadError(f"{what} holds an unsafe entry ({first_line(exc, 160)}); nothing was saved") from None
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        reason = first_line(exc, 160)
        raise DownloadError(f"{what} is not a complete tar archive ({reason}); nothing was saved") from None
    except urllib3.exceptions.HTTPError as exc:  # a timeout or a dropped connection mid-stream
        raise DownloadError(f"{what} stopped arriving ({connection_reason(exc)}); nothing was saved") from None
    finally:
        response.close()


def fetch(checkpoint: Any, content: Path, max_unpacked_gb: float | None = None) -> None:
    """Write the checkpoint's files into the new folder ``content``: a local copy when its
    storage is visible here, else through the master (at most ``max_unpacked_gb`` unpacked)."""
    content.mkdir()
    source = local_source(checkpoint)
    if source is not None:
        check_tree(source, f"checkpoint folder {source}")
        shutil.copytree(source, content, symlinks=True, dirs_exist_ok=True)
    else:
        unpack_from_master(checkpoint, content, max_unpacked_gb)
    check_tree(content, f"checkpoint {checkpoint.uuid}")
    if not any(content.iterdir()):
        raise DownloadError(f"checkpoint {checkpoint.uuid} arrived empty; nothing was saved")
    metadata = content / "metadata.json"
    if not metadata.exists():  # as Determined's download does, for checkpoints from before 0.18
        metadata.write_text(json.dumps(getattr(checkpoint, "metadata", None) or {}, indent=2))


def install(checkpoint: Any, output: Path, fetch: Callable[[Any, Path], None] = fetch) -> Path:
    """Download into a fresh temporary folder inside ``output``, then swap it in for
    ``<output>/<uuid>``: a failure leaves nothing half-written, and only that folder is replaced."""
    target = output / valid_uuid(checkpoint.uuid, "the master")
    staging = Path(tempfile.mkdtemp(prefix=f".{checkpoint.uuid}.", suffix=".partial", dir=output))
    try:
        content = staging / "checkpoint"
        fetch(checkpoint, content)
        replaced = staging / "replaced"
        if target.is_symlink() or (target.exists() and not target.is_dir()):  # changed since the check
            raise DownloadError(f"{target} is not a folder any more; nothing was replaced")
        if target.exists():
            target.rename(replaced)  # only reached with --force or an empty folder
        try:
            content.rename(target)
        except OSError:
            if replaced.exists():
                replaced.rename(target)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def choose(experiment_id: int | None, checkpoint_uuid: str | None, top_n: int, session: Any) -> tuple[list[Any], str]:
    """The checkpoints to download and the metric they are reported by, each UUID checked."""
    if checkpoint_uuid:
        checkpoint = session.get_checkpoint(checkpoint_uuid)
        if checkpoint.uuid != checkpoint_uuid:
            raise DownloadError(
                f"asked for checkpoint {checkpoint_uuid}, the master answered with {str(checkpoint.uuid)[:80]!r};"
                " nothing was downloaded"
            )
        state = getattr(getattr(checkpoint, "state", None), "name", None)
        if state is not None and state not in DOWNLOADABLE_STATES:
            raise DownloadError(f"checkpoint {checkpoint_uuid} is {state}; only completed ones can be downloaded")
        metric = "validation_loss"
        if getattr(checkpoint, "training", None) and checkpoint.training.experiment_config:
            metric = checkpoint.training.experiment_config.get("searcher", {}).get("metric", metric)
        return [checkpoint], metric
    experiment = session.get_experiment(experiment_id)
    metric, _ = searcher_metric(experiment)
    chosen, seen = [], set()
    for checkpoint in best_checkpoints(experiment, top_n):
        if valid_uuid(checkpoint.uuid, f"the master's list for experiment {experiment_id}") not in seen:
            seen.add(checkpoint.uuid)
            chosen.append(checkpoint)
    if not chosen:
        raise DownloadError(f"experiment {experiment_id} has no completed checkpoints")
    return chosen, metric


def download(
    experiment_id: int | None,
    checkpoint_uuid: str | None,
    top_n: int,
    output: Path,
    force: bool,
    session: Any,
    fetch: Callable[[Any, Path], None] = fetch,
    saved: list[Saved] | None = None,
) -> list[Saved]:
    """Download the chosen checkpoints; each is appended to ``saved`` once in place (so an
    interrupted run can still list those)."""
    chosen, metric = choose(experiment_id, checkpoint_uuid, top_n, session)
    if output.exists() and not output.is_dir():
        raise DownloadError(f"--output {output} exists and is not a folder")
    # Check every target first: refuse before downloading anything.
    for checkpoint in chosen:
        target = output / checkpoint.uuid
        if target.is_symlink():
            raise DownloadError(f"{target} is a symbolic link; remove it or choose another --output")
        if target.exists() and not target.is_dir():
            raise DownloadError(f"{target} exists and is a file, not a folder")
        if target.exists() and any(target.iterdir()) and not force:
            raise DownloadError(f"{target} exists and is not empty; pass --force to replace it")
    output.mkdir(parents=True, exist_ok=True)
    saved = [] if saved is None else saved
    for checkpoint in chosen:
        path = install(checkpoint, output, fetch)
        trial_id = checkpoint.training.trial_id if getattr(checkpoint, "training", None) else None
        saved.append(Saved(checkpoint.uuid, trial_id, metric, metric_value(checkpoint, metric), path))
    return saved


def master_address(args: argparse.Namespace) -> tuple[str, str]:
    """The address the client tries and where it came from, as the client decides it."""
    if args.master:
        raw, source = args.master, "from --master"
    elif os.environ.get("DET_MASTER"):
        raw, source = os.environ["DET_MASTER"], "from DET_MASTER"
    elif os.environ.get("DET_MASTER_ADDR"):
        raw, source = os.environ["DET_MASTER_ADDR"], "from DET_MASTER_ADDR"
    else:
        raw, source = api.get_default_master_url(), "DET_MASTER is unset, so the client's default was tried"
    try:
        return api.canonicalize_master_url(raw), source
    except Exception:  # an address the client cannot parse either; show it as given
        return raw, source


def connection_reason(exc: Exception) -> str:
    """The cause at the end of requests' long connection message ("[Errno 111] Connection refused")."""
    found = re.findall(r"\[Errno -?\d+\] [^'\")]+|Read timed out|Connection refused|timed out", str(exc))
    return found[-1].strip() if found else first_line(exc, 160)


def explain(exc: Exception, args: argparse.Namespace) -> str:
    """One line for each failure a user meets."""
    if isinstance(exc, errors.MasterNotFoundException):
        address, source = master_address(args)
        return (
            f"cannot reach the Determined master at {address} ({source}): {connection_reason(exc)};"
            " set DET_MASTER or pass --master"
        )
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
        return f"not allowed to read that from the master: {first_line(exc, 160)}"
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (what, why, where to look), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", type=int, help="download this experiment's best checkpoints")
    which.add_argument("--checkpoint", metavar="UUID", help="download one checkpoint")
    parser.add_argument("--top-n", type=int, default=1, help="how many of the best checkpoints (default 1)")
    parser.add_argument("--output", default="checkpoints", help="folder for <uuid>/ subfolders (default ./checkpoints)")
    parser.add_argument("--force", action="store_true", help="replace non-empty target folders")
    parser.add_argument("--master", help="master URL (default: $DET_MASTER)")
    parser.add_argument("--user", help="user name (default: $DET_USER or the `det user login` session)")
    parser.add_argument(
        "--max-unpacked-gb",
        type=float,
        default=MAX_UNPACKED_GB,
        help=f"refuse a checkpoint that unpacks to more than this (default {MAX_UNPACKED_GB:g} GiB)",
    )
    return parser.parse_args(argv)


def interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt  # so a scheduler's SIGTERM unwinds like Ctrl-C: staging folders removed


def login_password(user: str | None) -> str | None:
    """DET_PASSWORD for ``--user`` (the client itself reads it only with DET_USER, and would
    prompt), unless DET_USER names someone else."""
    if user is None or os.environ.get("DET_USER", user) != user:
        return None
    return os.environ.get("DET_PASSWORD")


def show(saved: Sequence[Saved]) -> None:
    for item in saved:
        value = "n/a" if item.value is None else f"{item.value:.6f}"
        print(f"{item.uuid}  trial {item.trial_id}  {item.metric} {value}  {item.path}")


def main(argv: Sequence[str] | None = None, connect: Callable[..., Any] = connect, fetch: Callable = fetch) -> int:
    args = parse_args(argv)
    saved: list[Saved] = []
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, interrupt) if main_thread else None
    try:
        if args.top_n < 1:
            raise DownloadError(f"--top-n must be at least 1, not {args.top_n}")
        if args.checkpoint is not None:
            args.checkpoint = user_uuid(args.checkpoint)
        if not args.max_unpacked_gb > 0:
            raise DownloadError(f"--max-unpacked-gb must be a number above 0, not {args.max_unpacked_gb}")
        if fetch is globals()["fetch"]:  # the real one; tests pass their own
            fetch = functools.partial(fetch, max_unpacked_gb=args.max_unpacked_gb)
        try:
            session = connect(master=args.master, user=args.user, password=login_password(args.user))
        except EOFError:  # the client prompted for a password with nothing to read it from
            raise DownloadError(
                f"no password for --user {args.user}: set DET_PASSWORD, or run `det user login {args.user}` once"
            ) from None
        download(args.experiment, args.checkpoint, args.top_n, Path(args.output), args.force, session, fetch, saved)
    except SameSpaceError as exc:
        print(f"error: {first_line(exc, 400)}", file=sys.stderr)
        return 2
    except Exception as exc:  # the client's errors, turned into one line each
        print(f"error: {explain(exc, args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        show(saved)
        listed = " (those listed were)" if saved else ""
        print(f"error: interrupted; the checkpoint being downloaded was not saved{listed}", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    show(saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
