"""Local runs of the trial, off-cluster: ``python model_def.py [flags]`` (see ``--help``).

Everything a local run needs that a master would otherwise provide lives here: argument parsing,
reading the config, resuming a local checkpoint, the TensorBoard folder, ``torchrun``, and the
demo on generated photos. Off-cluster, Determined 0.38.1 (written and tested against that
version) needs these workarounds, each through its private API; recheck them on an upgrade:

1. ``resume_at``: the local Trainer always starts counting (and skipping data) at batch 0, so a
   resumed run would replay the data and train ``max_length`` more batches. We wrap
   ``determined.pytorch._PyTorchTrialController`` for that one call to pass the checkpoint's
   ``steps_completed``, as the master does on a cluster.
2. ``send_tensorboard_to``: the dummy train context leaves its TensorBoard path unset, so torch's
   SummaryWriter would write ``./runs`` into the experiment folder. We set the private
   ``context._core.train._tbd_directory`` (TensorBoard is turned off if it ever disappears).
3. ``local_distributed``: under ``torchrun`` we set ``determined._DistributedBackend.TORCH`` in the
   environment, as ``determined.launch.torch_distributed`` does on a cluster, so the trial
   context wraps the model in DDP. For CPU processes on a GPU machine
   (``SAMESPACE_DISTRIBUTED_DEVICE=cpu``) we make ``determined.gpu.get_gpu_uuids`` report none.
4. The run switches to the project folder: Determined copies the working directory into each
   local checkpoint as its code.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import inspect
import io
import itertools
import json
import logging
import os
import random
import re
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import unittest.mock
from pathlib import Path
from typing import Any, Iterator, Sequence

import determined as det
import filelock
import numpy as np
import torch
import torchvision
import yaml
from determined import pytorch

import data
import synthetic
from samespace import reports
from samespace.checkpoints import local_checkpoint, local_checkpoint_root
from samespace.console import progress, progress_enabled
from samespace.errors import ConfigError, SameSpaceError, TrainingError, first_line
from samespace.settings import DATA_DIR_ENV, DataSettings, Hyperparameters, count, resolve_data_dir

logger = logging.getLogger("samespace.local")

PROJECT_DIR = Path(__file__).resolve().parent
DISTRIBUTED_DEVICE_ENV = "SAMESPACE_DISTRIBUTED_DEVICE"  # "cpu": torchrun processes on the CPU (gloo)


# An experiment config has a few hundred nodes at most; aliases count once per use, as they
# expand when the config is written out again (load_data.json, the master's copy).
MAX_CONFIG_NODES = 10_000
MAX_CONFIG_DEPTH = 32


class BoundedLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses, before constructing anything, a document that would
    expand to more than MAX_CONFIG_NODES nodes or nest deeper than MAX_CONFIG_DEPTH (alias bombs,
    self-referencing anchors)."""

    def construct_document(self, node: yaml.Node) -> Any:
        expanded_size(node, {}, 1)
        return super().construct_document(node)


def expanded_size(node: yaml.Node, sizes: dict[int, tuple[int, int]], depth: int) -> tuple[int, int]:
    """Nodes under ``node`` with every alias expanded, and its height; memoised, so an alias bomb
    costs its composed size, not its expansion."""
    if id(node) in sizes:
        size, height = sizes[id(node)]
    else:
        if depth > MAX_CONFIG_DEPTH:
            raise yaml.YAMLError(f"nested deeper than {MAX_CONFIG_DEPTH} levels (or an anchor that contains itself)")
        children = node.value if isinstance(node, yaml.SequenceNode) else []
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        size, height = 1, 1
        for child in children:
            child_size, child_height = expanded_size(child, sizes, depth + 1)
            size, height = size + child_size, max(height, child_height + 1)
            if size > MAX_CONFIG_NODES:
                raise yaml.YAMLError(f"expands to more than {MAX_CONFIG_NODES:,} values (aliases counted at each use)")
        sizes[id(node)] = size, height
    if depth + height - 1 > MAX_CONFIG_DEPTH:
        raise yaml.YAMLError(f"nested deeper than {MAX_CONFIG_DEPTH} levels")
    return size, height


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path) as handle:
            config = yaml.load(handle, Loader=BoundedLoader)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {first_line(exc)}") from None
    except RecursionError:  # nesting the composer cannot follow, before our bound is checked
        raise ConfigError(f"cannot read config {path}: nested deeper than {MAX_CONFIG_DEPTH} levels") from None
    if not isinstance(config, dict):
        what = "is empty" if config is None else f"is {type(config).__name__}, not a mapping of settings"
        raise ConfigError(f"config {path} {what}; start from const.yaml")
    for section in ("hyperparameters", "data"):
        if not isinstance(config.get(section) or {}, dict):
            raise ConfigError(f"config {path}: {section} must be a mapping of names to values")
    return config


def const_hparams(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """Plain values from a config's hyperparameters (``x: 1`` or ``x: {type: const, val: 1}``)."""
    values = {}
    for name, spec in hyperparameters.items():
        if isinstance(spec, dict):
            if spec.get("type") != "const":
                raise ConfigError(f"hyperparameter {name} is a search range; a local run needs const values")
            spec = spec["val"]
        values[name] = spec
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="model_def.py",
        description="Train SameSpace locally (on a cluster the same script runs the trial the master asks for).",
    )
    parser.add_argument(
        "--config", default=str(PROJECT_DIR / "const.yaml"), help="experiment config with const hyperparameters"
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=count(1), help="train this many epochs (default: hyperparameters.epochs)")
    length.add_argument("--batches", type=count(1), help="train this many batches instead")
    parser.add_argument("--data-dir", help=f"data directory (default: ${DATA_DIR_ENV} or the config's data.dir)")
    parser.add_argument("--no-download", action="store_true", help="use the data directory as is, never Kaggle")
    parser.add_argument("--resume", metavar="UUID", help="continue from a local checkpoint")
    parser.add_argument(
        "--checkpoint-epochs",
        type=count(0),
        default=0,
        help="also checkpoint every N epochs (default: after each validation; a run keeps its best and latest)",
    )
    parser.add_argument("--no-pretrained", action="store_true", help="random trunk weights instead of ImageNet")
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="run the trunk per pair (the reference path) instead of cached features",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="train 2 epochs on generated photos, kept in $XDG_CACHE_HOME/samespace/demo (default ~/.cache) "
        "and reused by later demos (not with --data-dir)",
    )
    return parser.parse_args(argv)


def local_config(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The experiment config and hyperparameters of a local run, with the flags applied."""
    config = read_config(args.config)
    hparams = const_hparams(config.get("hyperparameters") or {})
    section = dict(config.get("data") or {})
    # Absolute, because the run switches to the project folder (see train_locally).
    section["dir"] = str(resolve_data_dir(section.get("dir"), explicit=args.data_dir))
    if args.end_to_end:
        section["feature_cache"] = False
    if args.no_download:
        section["download"] = False
    if args.no_pretrained:
        hparams["pretrained"] = False
    # The checkpoint records the length actually trained, not the config's.
    if args.batches:
        hparams.pop("epochs", None)
        hparams["batches"] = args.batches
    elif args.epochs:
        hparams["epochs"] = args.epochs
    # The config's hyperparameters section too: load_data.json keeps both, and they must agree.
    return {**config, "data": section, "hyperparameters": dict(hparams)}, hparams


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of a run, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def tensorboard_folder(root: Path) -> Path:
    """A new folder for one run's events: start time and process id, created exclusively, so two
    runs started in the same second (even by one process) never share one."""
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    for attempt in itertools.count():
        folder = root / (f"{stem}-{attempt}" if attempt else stem)
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def send_tensorboard_to(context: pytorch.PyTorchTrialContext, root: Path) -> None:
    """Write a local run's TensorBoard events beside the checkpoints (workaround 2). Only the
    chief writes events, so only the chief makes a folder."""
    train = context._core.train
    if hasattr(train, "_tbd_directory") and context.distributed.rank == 0:
        train._tbd_directory = tensorboard_folder(root)
        logger.info("TensorBoard events: %s", train._tbd_directory)
    else:
        context.set_enable_tensorboard_logging(False)


@contextlib.contextmanager
def resume_at(batches: int) -> Iterator[None]:
    """Start the local Trainer's batch counter at a checkpoint's batch (workaround 1)."""
    original = pytorch._PyTorchTrialController

    def controller(*args: Any, **kwargs: Any) -> Any:
        kwargs["steps_completed"] = batches
        return original(*args, **kwargs)

    pytorch._PyTorchTrialController = controller
    try:
        yield
    finally:
        pytorch._PyTorchTrialController = original


def seed_everything(seed: int) -> None:
    """Seed a local run as the master seeds a trial: reproducible runs, and identical initial
    weights in every process of a multi-process run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def local_distributed() -> Iterator[det.core.DistributedContext | None]:
    """Several local processes under ``torchrun`` (one per GPU, or CPU processes with gloo);
    None for a plain single-process run (workaround 3)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield None
        return
    local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    on_cpu = os.environ.get(DISTRIBUTED_DEVICE_ENV) == "cpu" or not torch.cuda.is_available()
    if not on_cpu and local_rank >= gpus:
        raise ConfigError(
            f"torchrun started local process {local_rank} but only {gpus} GPU(s) are visible: use "
            f"--nproc_per_node={gpus} (one process per GPU), or set {DISTRIBUTED_DEVICE_ENV}=cpu for CPU processes"
        )
    if not on_cpu:
        torch.cuda.set_device(local_rank)
    with contextlib.ExitStack() as stack:
        stack.enter_context(environment(**{det._DistributedBackend.TORCH: "True"}))
        if on_cpu:  # Determined counts GPUs with nvidia-smi and would put process k on cuda:k
            stack.enter_context(unittest.mock.patch.object(det.gpu, "get_gpu_uuids", lambda: []))
        torch.distributed.init_process_group("gloo" if on_cpu else "nccl")
        try:
            yield det.core.DistributedContext.from_torch_distributed()
        finally:
            torch.distributed.destroy_process_group()


class RunStopped(SameSpaceError):
    """A local run that stopped before its end (interrupted, diverged, or out of disk), and the
    checkpoint it can continue from (None: none was written). ``resumable``: the resume command
    is shown (not after a divergence, whose checkpoint would restore the same settings)."""

    def __init__(
        self,
        message: str,
        checkpoint: str | None,
        interrupted: bool = False,
        resumable: bool | None = None,
        exit_code: int | None = None,
    ):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.interrupted = interrupted
        self.resumable = interrupted if resumable is None else resumable
        self.exit_code = exit_code or (130 if interrupted else 2)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or a scheduler's SIGTERM, raised in the main thread so the run unwinds the same way."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def train_locally(trial_cls: type[pytorch.PyTorchTrial], args: argparse.Namespace) -> pytorch.PyTorchTrial:
    """Train ``trial_cls`` off-cluster as the flags say; returns the trained trial.

    Keeps the best (by validation_loss) and the latest checkpoint this run writes. Raises
    ``RunStopped`` when interrupted (Ctrl-C) or when the loss diverges.
    """
    config, hparams = local_config(args)
    DataSettings.from_config(config["data"])  # fail on a bad config before any work
    check_prerequisites(config, hparams)
    epochs = Hyperparameters.from_hparams(hparams).epochs
    if epochs < 1:
        raise ConfigError(f"hyperparameters.epochs must be at least 1, not {epochs}")
    if args.batches is not None:
        max_length: pytorch.TrainUnit = pytorch.Batch(args.batches)
    else:
        max_length = pytorch.Epoch(args.epochs if args.epochs is not None else epochs)
    checkpoint_period = pytorch.Epoch(args.checkpoint_epochs) if args.checkpoint_epochs else None
    resume, resume_batches = local_checkpoint(args.resume) if args.resume else (None, 0)
    trial = None
    root = local_checkpoint_root()
    existing = set(os.listdir(root)) if root.is_dir() else set()  # never touched
    try:
        with contextlib.ExitStack() as stack:
            # The data directory given on the command line beats $SAMESPACE_DATA_DIR for this run.
            stack.enter_context(environment(**{DATA_DIR_ENV: config["data"]["dir"]}))
            stack.enter_context(contextlib.chdir(PROJECT_DIR))  # workaround 4
            distributed = stack.enter_context(local_distributed())
            context = stack.enter_context(pytorch.init(hparams=hparams, exp_conf=config, distributed=distributed))
            stack.enter_context(resume_at(resume_batches))
            send_tensorboard_to(context, local_checkpoint_root() / "tensorboard")
            seed_everything(int((config.get("reproducibility") or {}).get("experiment_seed", 0)))
            trial = trial_cls(context)
            trial.report.keep_best_and_latest = True
            # "all" checkpoints after every validation (local runs cannot use "best"); the report
            # then deletes the ones superseded.
            pytorch.Trainer(trial, context).fit(
                max_length=max_length,
                validation_period=pytorch.Epoch(1),
                checkpoint_period=checkpoint_period,
                checkpoint_policy="all",
                latest_checkpoint=resume,
            )
    except KeyboardInterrupt as exc:
        remove_partial_checkpoints(root, existing, trial)  # a Ctrl-C during a checkpoint write
        signum = getattr(exc, "signum", signal.SIGINT)
        how = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
        done = batches_done(trial, resume_batches)
        latest = last_checkpoint(trial, resume)
        raise RunStopped(
            f"interrupted{how} after batch {done}", latest, interrupted=True, exit_code=128 + signum
        ) from None
    except TrainingError as exc:
        raise RunStopped(str(exc), last_checkpoint(trial, resume)) from None
    except Exception as exc:
        partial = remove_partial_checkpoints(root, existing, trial)
        if not partial:
            raise
        raise checkpoint_failure(exc, root, partial, trial, resume, batches_done(trial, resume_batches)) from None
    return trial


def remove_partial_checkpoints(root: Path, existing: set[str], trial: pytorch.PyTorchTrial | None) -> list[str]:
    """Delete the checkpoint folders this run began and did not finish (a write that failed or
    was interrupted); returns their names. The run's report lists the complete ones: all the
    trial's files and the checksum record beside them written (enough to resume, even if
    Determined's metadata.json did not follow)."""
    if trial is None or not root.is_dir():
        return []
    complete = {Path(c).name for c in trial.report.checkpoints}
    removed = []
    for folder in root.iterdir():
        if folder.name in existing or folder.name in complete or folder.name == "tensorboard":
            continue
        if not folder.is_dir() or folder.is_symlink() or not UUID_NAME.fullmatch(folder.name):
            continue
        removed.append(folder.name)
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("removed the partial checkpoint %s", folder)
    return removed


UUID_NAME = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def checkpoint_bytes(trial: pytorch.PyTorchTrial, resumed: str | None, root: Path) -> int:
    """What a checkpoint of this run takes: its last complete one, else its weights and
    optimizer state (what ``state_dict.pth`` holds)."""
    for name in [*(Path(c).name for c in reversed(trial.report.checkpoints)), resumed]:
        if name and (root / name).is_dir():
            return folder_bytes(root / name)
    net, optimizer = getattr(trial, "net", None), getattr(trial, "optimizer", None)
    states = [net.state_dict()] if net is not None else []
    states += list(optimizer.state_dict()["state"].values()) if optimizer is not None else []
    return sum(t.numel() * t.element_size() for state in states for t in state.values() if torch.is_tensor(t))


def checkpoint_failure(
    exc: Exception, root: Path, partial: list[str], trial: pytorch.PyTorchTrial, resume: str | None, done: int
) -> RunStopped:
    """One line for a checkpoint that could not be written (its partial folder already removed),
    naming the disk, the space a checkpoint needs and the last complete checkpoint. torch reports
    a full disk as RuntimeError ("unexpected pos"), so the free space decides, as the errno does."""
    needed = checkpoint_bytes(trial, resume, root)
    free = shutil.disk_usage(root).free
    causes, cause = [], exc
    while cause is not None and len(causes) < 10:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    full = any(isinstance(c, OSError) and c.errno in DISK_FULL for c in causes) or free < needed
    removed = ", ".join(partial)
    if full:
        why = (
            f"the disk holding {root} (mounted at {mount_point(root)}) is full: {free / 2**20:,.0f} MiB free, "
            f"a checkpoint needs about {needed / 2**20:,.0f} MiB; free space there or set XDG_DATA_HOME to another disk"
        )
    else:
        why = f"{type(exc).__name__}: {first_line(exc, 200)}"
    return RunStopped(
        f"cannot write the checkpoint after batch {done}: {why}; removed the partial checkpoint {removed}",
        last_checkpoint(trial, resume),
        resumable=True,
    )


def last_checkpoint(trial: pytorch.PyTorchTrial | None, resumed: str | None) -> str | None:
    """The newest complete checkpoint of this run, else the one it resumed from."""
    written = trial.report.checkpoints if trial is not None else []
    return Path(written[-1]).name if written else resumed


def batches_done(trial: pytorch.PyTorchTrial | None, resumed_at: int) -> int:
    return trial.report.batches if trial is not None else resumed_at


def checkpoint_batch(checkpoint: str) -> int | None:
    """The batch a local checkpoint was saved at (Determined's metadata.json), None if unreadable."""
    try:
        steps = json.loads((local_checkpoint_root() / checkpoint / "metadata.json").read_text())["steps_completed"]
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


def resume_command(checkpoint: str, argv: Sequence[str]) -> str:
    """The command that continues a run from ``checkpoint``: its own flags, with --resume."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            kept.append(arg)
    return shlex.join(["python", "model_def.py", *kept, "--resume", checkpoint])


class EpochProgress(pytorch.PyTorchCallback):
    """A progress bar over each training epoch's batches, with rate and ETA, on the chief of a
    local run (Determined itself logs only every 100 batches). Off when stderr is not a terminal.

    PyTorchCallback has no per-batch hook, so the trial's ``train_batch`` is wrapped to count.
    """

    def __init__(self, trial: pytorch.PyTorchTrial, every: int = 20):
        self.context = trial.context  # type: ignore[attr-defined]
        self.every = every  # reading the loss syncs a GPU: only every few batches
        self.bar: Any = None
        self.started: float | None = None  # the first batch this process trained, for the run's ETA
        self.trained = 0
        self.enabled = progress_enabled() and self.context.distributed.rank == 0
        if self.enabled:
            train_batch = trial.train_batch

            def counted(*args: Any, **kwargs: Any) -> Any:
                metrics = train_batch(*args, **kwargs)
                self.advance(kwargs.get("epoch_idx", 0), kwargs.get("batch_idx", 0), metrics)
                return metrics

            trial.train_batch = counted  # type: ignore[method-assign]

    def advance(self, epoch_idx: int, batch_idx: int, metrics: Any) -> None:
        # Determined's own epoch length (private; the bars only lose their totals without it).
        length = getattr(self.context, "_epoch_len", None)
        total = run_batches(self.context.get_hparams(), length)
        if self.bar is None:
            epochs = f"/{-(-total // length)}" if total and length else ""
            self.bar = progress(
                total=length,
                initial=batch_idx % length if length else 0,
                desc=f"epoch {epoch_idx + 1}{epochs}",
                unit="batch",
                dynamic_ncols=True,
            )
        self.bar.update(1)
        self.started = self.started or time.monotonic()
        self.trained += 1
        if self.bar.n % self.every == 0 and isinstance(metrics, dict) and "loss" in metrics:
            postfix = {"loss": f"{float(metrics['loss']):.4f}"}
            if total and self.trained > 1:  # the whole run's training time left (validation not included)
                rate = (time.monotonic() - self.started) / (self.trained - 1)
                postfix["run ETA"] = self.bar.format_interval(max(0, total - batch_idx - 1) * rate)
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_training_epoch_end(self, epoch_idx: int) -> None:
        self.close()

    def on_validation_start(self) -> None:
        self.close()

    def on_trial_shutdown(self) -> None:
        self.close()


def run_batches(hparams: dict[str, Any], epoch_length: int | None) -> int | None:
    """The batches a local run trains in all (``local_config`` records --batches or the epochs)."""
    if hparams.get("batches"):
        return int(hparams["batches"])
    epochs = hparams.get("epochs")
    return int(epochs) * epoch_length if epochs and epoch_length else None


class MissingPrerequisites(ConfigError):
    """What a run needs and does not have, one line each, every one with what fixes it."""

    def __init__(self, problems: Sequence[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


IMAGENET_WEIGHTS = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1


def weights_path() -> Path:
    """Where torchvision keeps the ImageNet weights (the torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(IMAGENET_WEIGHTS.url)


def weights_problem(timeout: float = 60.0) -> str | None:
    """None when the ImageNet weights are cached or can be fetched now (fetching them), else why not.

    torch.hub announces the download on stdout ("Downloading: ...") and, without a socket timeout,
    may wait forever on a silent network; both are kept out of the check.
    """
    if weights_path().is_file():
        return None
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            IMAGENET_WEIGHTS.get_state_dict(progress=False)
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {first_line(exc, 100)}"
    finally:
        socket.setdefaulttimeout(previous)


def weights_available() -> bool:
    """Whether the ImageNet weights can be loaded (cached or downloadable)."""
    return weights_problem() is None


def missing_prerequisites(config: dict[str, Any], hparams: dict[str, Any]) -> list[str]:
    """Everything a local run lacks (ImageNet weights, the data or Kaggle credentials), checked
    before any work, each with the flag or command that fixes it."""
    problems = []
    if Hyperparameters.from_hparams(hparams).pretrained:
        reason = weights_problem()
        if reason:
            problems.append(
                f"ImageNet weights: not in the torch hub cache and not downloadable ({reason}); pass "
                f"--no-pretrained (random trunk, metrics near chance), or put {IMAGENET_WEIGHTS.url} "
                f"at {weights_path()}"
            )
    settings = DataSettings.from_config(config["data"])
    data_dir = Path(config["data"]["dir"])
    root = data.dataset_root(data_dir)
    if data.is_complete(data_dir) or (root.is_dir() and not settings.download):
        return problems
    if not settings.download:
        problems.append(
            f"no dataset under {root}: pass --data-dir with a downloaded copy (`python data.py --data-dir DIR` "
            "fetches one), or allow the download (without --no-download, data.download: true)"
        )
        return problems
    try:
        data.check_credentials()
    except SameSpaceError as exc:
        problems.append(f"{exc}; or pass --data-dir DIR --no-download with a downloaded copy")
    return problems


def check_prerequisites(config: dict[str, Any], hparams: dict[str, Any]) -> None:
    problems = missing_prerequisites(config, hparams)
    if problems:
        raise MissingPrerequisites(problems)


# Like the Airbnb splits: mostly single-photo rooms, so that the x64-upsampled positives still
# find as many negatives (a balanced pair set).
DEMO_DATASET = dict(train_rooms=20, test_rooms=6, photos_per_room=(2, 3), train_singles=120, test_singles=80)
DEMO_MARKER = ".samespace-demo-complete"
DEMO_LOCK = ".data.lock"  # beside data/, in the demo folder


def demo_folder() -> Path:
    """The demo's photos and their trunk features: ``$XDG_CACHE_HOME/samespace/demo`` (default
    ``~/.cache``), so that a second demo reuses them."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "samespace" / "demo"


def demo_dataset() -> Path:
    """The demo's data directory, generated once and reused while complete and current.

    The photos are generated into a staging folder whose marker (the dataset's parameters and
    the generator's source hash) is written last, then renamed into place: a folder without the
    current marker is incomplete or stale and is replaced, with the features cached in it.
    Demos started together wait on a lock beside the folder; the first generates, the rest reuse.
    """
    folder = demo_folder()
    data_dir = folder / "data"
    # The generator's own code, not all of synthetic.py: editing its command line keeps the photos.
    generator = (synthetic.room_scene, synthetic.photograph, synthetic.make_split, synthetic.make_dataset)
    source = "".join(inspect.getsource(function) for function in generator)
    spec = json.dumps(
        {"dataset": DEMO_DATASET, "generator": hashlib.sha256(source.encode()).hexdigest()}, sort_keys=True
    )
    if demo_is_current(data_dir, spec):
        print(f"demo: reusing the generated photos in {data_dir}")
        return data_dir
    folder.mkdir(parents=True, exist_ok=True)
    # The lock lives beside the data, not in it: replacing the data never removes a lock that
    # another demo is waiting on, so demos started together generate the photos once.
    lock = filelock.FileLock(str(folder / DEMO_LOCK))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        print(f"demo: waiting for another demo run that is generating the photos in {data_dir}")
        lock.acquire()
    try:
        if demo_is_current(data_dir, spec):  # made by the run we waited for
            print(f"demo: reusing the generated photos in {data_dir}")
            return data_dir
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
        try:
            made = synthetic.make_dataset(staging, **DEMO_DATASET)
            (staging / DEMO_MARKER).write_text(spec)
            if data_dir.exists():  # ours, and incomplete or stale: swapped out whole, then removed
                reports.exchange(staging, data_dir)
            else:
                staging.rename(data_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        lock.release()
    print(f"demo: generated {len(made['train'])} training and {len(made['test'])} test photos in {data_dir}")
    return data_dir


def demo_is_current(data_dir: Path, spec: str) -> bool:
    """Whether the demo's data is complete and made by the current generator (its marker is last)."""
    marker = data_dir / DEMO_MARKER
    try:
        return marker.is_file() and marker.read_text() == spec
    except OSError:
        return False


def refuse_demo_data_dir(args: argparse.Namespace) -> None:
    """--demo trains on its own generated photos: a --data-dir beside it would be ignored (and then
    repeated in the resume hint), so it is one line before any work."""
    if args.data_dir is not None:
        raise ConfigError(
            f"--demo trains on generated photos kept in {demo_folder() / 'data'}, not on --data-dir {args.data_dir}: "
            "leave out --data-dir, or leave out --demo to train on that folder"
        )


def run_demo(trial_cls: type[pytorch.PyTorchTrial], args: argparse.Namespace) -> pytorch.PyTorchTrial:
    """A short run on a generated dataset, with a random trunk when ImageNet weights are out of reach."""
    refuse_demo_data_dir(args)
    data_dir = demo_dataset()
    no_pretrained = args.no_pretrained
    if not no_pretrained and not weights_available():
        print(
            "demo: the ImageNet weights cannot be fetched here; continuing with random trunk weights "
            "(recorded as pretrained: false), so the metrics will be near chance",
            file=sys.stderr,
        )
        no_pretrained = True
    demo_args = argparse.Namespace(
        **{
            **vars(args),
            "data_dir": str(data_dir),
            "no_download": True,
            "no_pretrained": no_pretrained,
            "epochs": args.epochs if args.epochs is not None or args.batches is not None else 2,
        }
    )
    return train_locally(trial_cls, demo_args)


def summarise(trial: pytorch.PyTorchTrial) -> None:
    report = trial.report
    shown = {k: round(v, 6) for k, v in report.validation.items() if isinstance(v, float)}
    print(f"validation: {json.dumps(shown)}")
    if report.checkpoints:
        path = Path(report.checkpoints[-1])
        print(f"checkpoint: {path.name} ({path})")
        validated = [c for c in report.checkpoints if report.losses.get(c) is not None]
        best = min(validated, key=lambda c: report.losses[c]) if validated else None
        if best is not None and best != report.checkpoints[-1]:
            print(f"best checkpoint: {Path(best).name} (validation_loss {report.losses[best]:.6f}; {best})")
        print(f"next: {next_command(Path(best or path).name, trial.context.get_data_config().get('dir'))}")


def next_command(checkpoint: str, data_dir: str | None) -> str:
    """What to try after a run: evaluate its (best) checkpoint on the data it validated on."""
    where = ["--data-dir", str(data_dir)] if data_dir else []
    return shlex.join(["python", "model_inference.py", "evaluate", checkpoint, *where]) + (
        "  (then `compare` two photos or `dedup` a folder with the same checkpoint)"
    )


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what schedulers send


def stop_at_second_interrupt(signum: int, frame: Any) -> None:
    """The first Ctrl-C (or SIGTERM) stops the run cleanly; a second one during that cleanup ends it at once."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_DFL)
    raise Interrupted(signum)


def main(trial_cls: type[pytorch.PyTorchTrial], argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {stop: signal.signal(stop, stop_at_second_interrupt) for stop in STOP_SIGNALS} if main_thread else {}
    try:
        trial = run_demo(trial_cls, args) if args.demo else train_locally(trial_cls, args)
    except RunStopped as exc:
        if not exc.checkpoint:
            where = "no checkpoint was written"
        elif exc.resumable:
            batch = checkpoint_batch(exc.checkpoint)
            at = f" (saved at batch {batch}, where training resumes)" if batch is not None else ""
            where = f"continue from checkpoint {exc.checkpoint}{at} with: {resume_command(exc.checkpoint, argv)}"
        else:  # resuming would restore the checkpoint's optimizer settings too, so no command
            where = f"last good checkpoint: {exc.checkpoint} (in {local_checkpoint_root()})"
        print(f"stopped: {exc}; {where}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        how = "" if getattr(exc, "signum", signal.SIGINT) == signal.SIGINT else f" by {exc}"
        print(f"stopped: interrupted{how} before training began; no checkpoint was written", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    except SameSpaceError as exc:
        print("\n".join(f"error: {line}" for line in str(exc).splitlines()), file=sys.stderr)
        return 2
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
    summarise(trial)
    return 0
