"""SameSpace: a Siamese MobileNetV3 network that decides whether two photos show the same room.

The network is a frozen ImageNet trunk (MobileNetV3-Large ``features`` + pooling), two trainable
towers (each a copy of the classifier up to its last layer: Linear 960->1280, Hardswish, Dropout)
and an MLP head 2560->2048->1024->512->64->1 over the concatenated embeddings.

    python model_def.py                   train locally with const.yaml's hyperparameters
    python model_def.py --demo            synthetic data on the CPU, a few minutes, no credentials
    det experiment create const.yaml .    on a Determined cluster (the configs run this script)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import os
import pickle
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import appdirs
import determined as det
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import yaml
from determined import pytorch
from torch import nn

import data
import features
import metrics

logger = logging.getLogger("samespace")

PROJECT_DIR = Path(__file__).resolve().parent
TRIAL_SPEC = "model_def:SiameseTrial"
EMBEDDING_DIM = 1280
HEAD_WIDTHS = (2048, 1024, 512, 64)


class ConfigError(Exception):
    """A bad experiment config or argument; its message is one line."""


class CheckpointError(Exception):
    """A path that is not a usable SameSpace checkpoint; its message is one line."""


def allow_determined_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read Determined checkpoints.

    Determined saves numpy's RNG state (a tuple holding an ndarray) in ``state_dict.pth``. Since
    torch 2.6 ``torch.load`` refuses such globals by default, which breaks reloading and
    pause/resume. Allow exactly the numpy pieces of that state, not arbitrary pickles.
    """
    if not hasattr(torch.serialization, "add_safe_globals"):  # torch < 2.4 loads them anyway
        return
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    torch.serialization.add_safe_globals([np.ndarray, np.dtype, multiarray._reconstruct, type(np.dtype(np.uint32))])


allow_determined_checkpoints()


# --------------------------------------------------------------------------------------------
# The network


def build_backbone(pretrained: bool = True) -> torchvision.models.MobileNetV3:
    """MobileNetV3-Large, with ``IMAGENET1K_V1`` weights unless ``pretrained`` is false."""
    weights = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1 if pretrained else None
    try:
        return torchvision.models.mobilenet_v3_large(weights=weights)
    except Exception as exc:  # urllib/HTTP/OS errors from the weights download
        raise ConfigError(
            f"cannot load the ImageNet weights ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            f"put them in the torch hub cache ({torch.hub.get_dir()}) or set hyperparameters.pretrained: false"
        ) from None


def build_trunk(backbone: torchvision.models.MobileNetV3) -> nn.Sequential:
    """Everything before the classifier (features and pooling), frozen: image -> 960-d."""
    trunk = nn.Sequential(backbone.features, backbone.avgpool, nn.Flatten(1))
    trunk.requires_grad_(False)
    return trunk.eval()


def build_tower(backbone: torchvision.models.MobileNetV3) -> nn.Sequential:
    """The classifier cut before its final layer (Linear 960->1280, Hardswish, Dropout): trainable.

    A deep copy, so the two towers start from the same pretrained weights but are not tied.
    """
    return copy.deepcopy(backbone.classifier[:-1])


def build_head(dropouts: Sequence[float]) -> nn.Sequential:
    """2560->2048->1024->512->64->1, with ReLU and Dropout after the first three linears."""
    layers: list[nn.Module] = []
    width = 2 * EMBEDDING_DIM
    for i, out in enumerate(HEAD_WIDTHS):
        layers.append(nn.Linear(width, out))
        if i < len(dropouts):
            layers += [nn.ReLU(), nn.Dropout(dropouts[i])]
        width = out
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class SiameseNet(nn.Module):
    """Trunk, two towers and head. Inputs are image batches (B, 3, H, W) or cached trunk features
    (B, 960); the output is one logit per pair."""

    def __init__(self, pretrained: bool = True, dropouts: Sequence[float] = (0.5, 0.5, 0.5)):
        super().__init__()
        backbone = build_backbone(pretrained)
        # One trunk serves both sides: the original's two frozen trunks hold identical ImageNet
        # weights, so sharing changes no output and lets a photo's trunk features be reused.
        self.trunk = build_trunk(backbone)
        self.towers = nn.ModuleList([build_tower(backbone) for _ in range(2)])
        self.head = build_head(dropouts)

    def train(self, mode: bool = True) -> "SiameseNet":
        super().train(mode)
        self.trunk.eval()  # frozen BatchNorm keeps its ImageNet statistics, also while training
        return self

    def trunk_features(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.trunk(inputs) if inputs.dim() == 4 else inputs

    def embed(self, inputs: torch.Tensor, side: int) -> torch.Tensor:
        """Tower ``side`` (0 = first photo, 1 = second) applied to images or trunk features."""
        return self.towers[side](self.trunk_features(inputs))

    def score(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Logits from the two towers' embeddings."""
        return self.head(torch.cat([first, second], dim=1)).squeeze(1)

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return self.score(self.embed(first, 0), self.embed(second, 1))


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class CompiledAfter:
    """An optimizer's ``step``, eager for the first ``after`` calls and then through torch.compile.

    On the CPU, eager RMSprop makes five passes over the 10.4M trainable values per step (mul,
    addcmul, sqrt, add, addcdiv), about a third of a cached training step; compiled, it is one
    fused pass. Compiling costs ~20 s once, so short runs (tests, demos) never pay it. If
    compilation fails (no C++ compiler, say), the step stays eager for good, with one warning.
    """

    def __init__(self, step: Any, after: int):
        self.eager, self.after, self.calls = step, after, 0
        self.compiled: Any = None
        self.failed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.failed or self.calls <= self.after:
            return self.eager(*args, **kwargs)
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.eager)
            return self.compiled(*args, **kwargs)
        except Exception as exc:  # compilation happens before the update is applied
            logger.warning(
                "torch.compile of the optimizer step failed (%s); continuing eagerly",
                str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__,
            )
            self.failed = True
            return self.eager(*args, **kwargs)


COMPILE_AFTER_STEPS = 500


def make_optimizer(
    net: nn.Module, hparams: dict[str, Any], device: torch.device | str, compile_after: int = COMPILE_AFTER_STEPS
) -> torch.optim.RMSprop:
    """RMSprop(lr, alpha) over the trainable parameters. ``hparams.compile_optimizer``: ``auto``
    (compile the step on the CPU, where it is memory-bound), ``true`` or ``false``."""
    optimizer = torch.optim.RMSprop(trainable_parameters(net), lr=float(hparams["lr"]), alpha=float(hparams["alpha"]))
    mode = str(hparams.get("compile_optimizer", "auto")).lower()
    if mode not in {"auto", "true", "false"}:
        raise ConfigError(f"hyperparameters.compile_optimizer must be auto, true or false, not {mode!r}")
    if mode == "true" or (mode == "auto" and torch.device(device).type == "cpu"):
        optimizer.step = CompiledAfter(optimizer.step, after=compile_after)  # type: ignore[method-assign]
    return optimizer


def as_flag(value: Any) -> bool:
    """A config boolean, also when it arrives as a string ("false" from a command-line override)."""
    if isinstance(value, str):
        return value.strip().lower() in {"true", "yes", "1", "on"}
    return bool(value)


def network_from_hparams(hparams: dict[str, Any], pretrained: bool | None = None) -> SiameseNet:
    dropouts = [float(hparams[f"dropout{i}"]) for i in (1, 2, 3)]
    use_weights = as_flag(hparams.get("pretrained", True)) if pretrained is None else pretrained
    return SiameseNet(pretrained=use_weights, dropouts=dropouts)


# --------------------------------------------------------------------------------------------
# The trial


@dataclasses.dataclass
class DataSettings:
    """The experiment config's ``data`` section."""

    dir: str | None = None
    download: bool = True
    self_pairs: bool = True
    sampler: str = "streaming"
    seed: int = 0
    feature_cache: bool = True
    cache_dir: str | None = None
    workers: int = 2

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> "DataSettings":
        section = dict(section or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"unknown data setting(s) {unknown}; known: {sorted(known)}")
        for field in dataclasses.fields(cls):
            if field.type == "bool" and field.name in section:
                section[field.name] = as_flag(section[field.name])
        settings = cls(**section)
        if settings.sampler not in data.SAMPLERS:
            raise ConfigError(f"data.sampler must be one of {sorted(data.SAMPLERS)}, not {settings.sampler!r}")
        return settings

    @property
    def data_dir(self) -> Path:
        return data.resolve_data_dir(self.dir)

    def cache_root(self, data_dir: Path | None = None) -> Path:
        """Where trunk features are cached: ``cache_dir``, else inside the data directory, so the
        trials of a search sharing the data share the features too."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        return (data_dir or self.data_dir) / ".samespace-cache" / "features"


class PairMetrics(pytorch.MetricReducer):
    """Validation loss, accuracy and ROC-AUC over the whole validation set, across all slots."""

    def __init__(self, prefix: str = "validation_"):
        self.prefix = prefix
        self.reset()

    def reset(self) -> None:
        self.logits: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.logits.append(logits.detach().float().cpu().numpy())
        self.labels.append(labels.detach().cpu().numpy())

    def per_slot_reduce(self) -> tuple[np.ndarray, np.ndarray]:
        empty = np.empty(0, np.float32)
        return (
            np.concatenate(self.logits) if self.logits else empty,
            np.concatenate(self.labels) if self.labels else empty,
        )

    def cross_slot_reduce(self, per_slot: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        logits = np.concatenate([s[0] for s in per_slot])
        labels = np.concatenate([s[1] for s in per_slot])
        return metrics.pair_metrics(logits, labels, prefix=self.prefix)


class RunReport(pytorch.PyTorchCallback):
    """Remembers where checkpoints were written and the last validation metrics."""

    def __init__(self) -> None:
        self.checkpoints: list[str] = []
        self.validation: dict[str, Any] = {}
        self.first_batch: int | None = None

    def on_trial_startup(self, first_batch_idx: int, checkpoint_uuid: str | None) -> None:
        self.first_batch = first_batch_idx

    def on_checkpoint_write_end(self, checkpoint_dir: str) -> None:
        self.checkpoints.append(checkpoint_dir)

    def on_validation_end(self, metrics: dict[str, Any]) -> None:
        self.validation = dict(metrics)


def load_pairs(
    settings: DataSettings, split_name: str, data_dir: Path | None = None
) -> tuple[data.Split, data.PairSet]:
    """A split of the dataset (downloading it first if allowed) and its balanced pair set."""
    root = data.ensure_dataset(data_dir or settings.data_dir, allow_download=settings.download)
    split = data.load_split(root / data.SPLITS[split_name])
    pairs = data.build_pairs(
        split.rooms,
        data.wavelet_hashes(split.images),
        seed=settings.seed,
        self_pairs=settings.self_pairs,
        sampler=settings.sampler,
    )
    logger.info(
        "%s: %d photos of %d rooms, %d pairs (%d positive)",
        split_name,
        len(split),
        len(np.unique(split.rooms)),
        len(pairs),
        pairs.positives,
    )
    return split, pairs


def pair_dataset(
    split: data.Split,
    pairs: data.PairSet,
    settings: DataSettings,
    trunk: nn.Module,
    device: torch.device | str,
    name: str = "",
) -> tuple[torch.utils.data.Dataset, dict[str, Any]]:
    """The pairs as a dataset and the DataLoader options it needs: cached trunk features by
    default, or images through the trunk per pair (``feature_cache: false``, the reference)."""
    if not settings.feature_cache:
        return data.ImagePairDataset(split.images, pairs), {"num_workers": settings.workers}
    cache = features.FeatureCache(settings.cache_root(), trunk, device=device)
    cached = cache.features(split.images, desc=f"trunk features ({name})" if name else "trunk features")
    return features.FeaturePairDataset(cached, pairs), {"collate_fn": features.collate_batch}


class SiameseTrial(pytorch.PyTorchTrial):
    """The SameSpace experiment: BCE-with-logits, RMSprop over the trainable parameters."""

    def __init__(self, context: pytorch.PyTorchTrialContext, pretrained: bool | None = None):
        self.context = context
        hparams = context.get_hparams()
        self.settings = DataSettings.from_config(context.get_data_config())
        self.net = network_from_hparams(hparams, pretrained)
        self.model = context.wrap_model(self.net)
        self.optimizer = context.wrap_optimizer(make_optimizer(self.net, hparams, context.device))
        self.validation = context.wrap_reducer(PairMetrics(), for_training=False)
        self.report = RunReport()

    def build_callbacks(self) -> dict[str, pytorch.PyTorchCallback]:
        return {"report": self.report}

    def build_training_data_loader(self) -> pytorch.DataLoader:
        return self._loader("train", shuffle=True)

    def build_validation_data_loader(self) -> pytorch.DataLoader:
        return self._loader("test", shuffle=False)

    def _loader(self, split_name: str, shuffle: bool) -> pytorch.DataLoader:
        split, pairs = load_pairs(self.settings, split_name)
        dataset, options = pair_dataset(split, pairs, self.settings, self.net.trunk, self.context.device, split_name)
        return pytorch.DataLoader(
            dataset, batch_size=self.context.get_per_slot_batch_size(), shuffle=shuffle, **options
        )

    def train_batch(self, batch: pytorch.TorchData, epoch_idx: int, batch_idx: int) -> dict[str, torch.Tensor]:
        first, second, labels = batch
        logits = self.model(first, second)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        self.context.backward(loss)
        self.context.step_optimizer(self.optimizer)
        accuracy = ((logits.detach() > 0).float() == labels).float().mean()
        return {"loss": loss.detach(), "accuracy": accuracy}

    def evaluate_batch(self, batch: pytorch.TorchData, batch_idx: int) -> dict[str, Any]:
        first, second, labels = batch
        self.validation.update(self.model(first, second), labels)
        return {}  # the reducer reports validation_loss/_accuracy/_auc over the whole set


# --------------------------------------------------------------------------------------------
# Checkpoints


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[SiameseNet, dict[str, Any]]:
    """The network (in eval mode, on ``device``) of a SameSpace checkpoint folder, and the
    checkpoint's ``load_data.json`` (hyperparameters and experiment config).

    Builds the network without downloading ImageNet weights (the state dict has them all), loads
    with ``weights_only=True``, and refuses anything that is not a SameSpace checkpoint.
    """
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    load_data, state_file = folder / "load_data.json", folder / "state_dict.pth"
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not load_data.is_file() or not state_file.is_file():
        raise CheckpointError(f"{path} is not a Determined checkpoint (no load_data.json and state_dict.pth)")
    try:
        meta = json.loads(load_data.read_text())
    except ValueError:
        raise CheckpointError(f"{load_data} is not valid JSON") from None
    if meta.get("trial_cls_spec") != TRIAL_SPEC:
        raise CheckpointError(f"{path} is a checkpoint of {meta.get('trial_cls_spec')!r}, not SameSpace ({TRIAL_SPEC})")
    hparams = meta.get("hparams") or {}
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        net = network_from_hparams(hparams, pretrained=False)
        net.load_state_dict(state["models_state_dict"][0])
    except Exception as exc:
        raise CheckpointError(
            f"cannot load {state_file}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        ) from None
    return net.to(device).eval(), meta


def local_checkpoint_root() -> Path:
    """Where Determined's local Trainer writes checkpoints ($XDG_DATA_HOME/determined)."""
    return Path(appdirs.user_data_dir("determined"))


# --------------------------------------------------------------------------------------------
# Running


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path) as handle:
            return yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", default=str(PROJECT_DIR / "const.yaml"), help="experiment config with const hyperparameters"
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="train this many epochs (default: hyperparameters.epochs)")
    length.add_argument("--batches", type=int, help="train this many batches instead")
    parser.add_argument("--data-dir", help=f"data directory (default: ${data.DATA_DIR_ENV} or the config's data.dir)")
    parser.add_argument("--no-download", action="store_true", help="use the data directory as is, never Kaggle")
    parser.add_argument("--resume", metavar="UUID", help="continue from a local checkpoint")
    parser.add_argument(
        "--checkpoint-epochs", type=int, default=0, help="also checkpoint every N epochs (default: at the end only)"
    )
    parser.add_argument("--no-pretrained", action="store_true", help="random trunk weights instead of ImageNet")
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="run the trunk per pair (the reference path) instead of cached features",
    )
    parser.add_argument(
        "--demo", action="store_true", help="train briefly on a generated dataset in a temporary folder"
    )
    return parser.parse_args(argv)


def local_config(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The experiment config and hyperparameters of a local run, with the flags applied."""
    config = read_config(args.config)
    hparams = const_hparams(config.get("hyperparameters") or {})
    section = config.setdefault("data", {}) or {}
    config["data"] = section
    if args.data_dir:
        os.environ[data.DATA_DIR_ENV] = str(Path(args.data_dir).expanduser().resolve())
    # Absolute, because the run switches to the project folder (see train_locally).
    section["dir"] = str(data.resolve_data_dir(section.get("dir")))
    if args.end_to_end:
        section["feature_cache"] = False
    if args.no_download:
        section["download"] = False
    if args.no_pretrained:
        hparams["pretrained"] = False
    return config, hparams


def send_tensorboard_to(context: pytorch.PyTorchTrialContext, root: Path) -> None:
    """Write a local run's TensorBoard events beside the checkpoints.

    Off-cluster, Determined leaves the path unset and torch's SummaryWriter then writes ``./runs``,
    which would put outputs into the experiment folder. There is no public setter, so set the
    dummy train context's directory, and turn TensorBoard off if that attribute ever goes away.
    """
    train = context._core.train
    if hasattr(train, "_tbd_directory"):
        train._tbd_directory = root / time.strftime("%Y%m%d-%H%M%S")
        logger.info("TensorBoard events: %s", train._tbd_directory)
    else:
        context.set_enable_tensorboard_logging(False)


@contextlib.contextmanager
def resume_at(batches: int):
    """Start the local Trainer's batch counter at a checkpoint's batch.

    Off-cluster, Determined's Trainer always starts counting (and skipping data) at batch 0, so a
    resumed local run would replay the data from the start and train ``max_length`` more batches.
    On a cluster the master passes the checkpoint's batch; do the same here, for this call only.
    """
    original = pytorch._PyTorchTrialController

    def controller(*args: Any, **kwargs: Any) -> Any:
        kwargs["steps_completed"] = batches
        return original(*args, **kwargs)

    pytorch._PyTorchTrialController = controller
    try:
        yield
    finally:
        pytorch._PyTorchTrialController = original


def local_checkpoint(reference: str) -> tuple[str, int]:
    """A local checkpoint's storage id (UUID) and the batches it had trained, from a UUID or path."""
    root = local_checkpoint_root()
    folder = Path(reference) if os.sep in reference else root / reference
    if folder.resolve().parent != root.resolve():
        raise CheckpointError(f"--resume takes a local checkpoint under {root}, not {reference}")
    state = folder / "trial_state.pkl"
    if not state.is_file():
        raise CheckpointError(f"no local checkpoint {folder.name} under {root}")
    with state.open("rb") as handle:
        batches = int(pickle.load(handle).get("batches_trained") or 0)  # Determined's own file
    return folder.name, batches


def seed_everything(seed: int) -> None:
    """Seed a local run as the master seeds a trial: reproducible runs, and identical initial
    weights in every process of a multi-process run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def local_distributed():
    """Several local processes under ``torchrun`` (one per GPU, or CPU processes with gloo);
    None for a plain single-process run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield None
        return
    # What determined.launch.torch_distributed sets on a cluster: DDP over torch.distributed.
    os.environ.setdefault(det._DistributedBackend.TORCH, "True")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend)
    try:
        yield det.core.DistributedContext.from_torch_distributed()
    finally:
        torch.distributed.destroy_process_group()


def train_locally(args: argparse.Namespace) -> SiameseTrial:
    config, hparams = local_config(args)
    DataSettings.from_config(config["data"])  # fail on a bad data section before any work
    if args.batches:
        max_length: pytorch.TrainUnit = pytorch.Batch(args.batches)
    else:
        max_length = pytorch.Epoch(args.epochs or int(hparams.get("epochs", 30)))
    checkpoint_period = pytorch.Epoch(args.checkpoint_epochs) if args.checkpoint_epochs else None
    resume, resume_batches = local_checkpoint(args.resume) if args.resume else (None, 0)
    # Determined copies the working directory into each local checkpoint as its code: make that
    # the project folder (filtered by .detignore), never wherever the user happened to be.
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.chdir(PROJECT_DIR))
        distributed = stack.enter_context(local_distributed())
        context = stack.enter_context(pytorch.init(hparams=hparams, exp_conf=config, distributed=distributed))
        stack.enter_context(resume_at(resume_batches))
        send_tensorboard_to(context, local_checkpoint_root() / "tensorboard")
        seed_everything(int((config.get("reproducibility") or {}).get("experiment_seed", 0)))
        trial = SiameseTrial(context)
        pytorch.Trainer(trial, context).fit(
            max_length=max_length,
            validation_period=pytorch.Epoch(1),
            checkpoint_period=checkpoint_period,
            checkpoint_policy="all",
            latest_checkpoint=resume,
        )
    return trial


def train_on_cluster(info: det.ClusterInfo) -> None:
    with pytorch.init() as context:
        trial = SiameseTrial(context)
        pytorch.Trainer(trial, context).fit(
            max_length=pytorch.Epoch(int(info.trial.hparams["epochs"])),
            validation_period=pytorch.Epoch(1),
            latest_checkpoint=info.latest_checkpoint,
        )


def weights_available() -> bool:
    """Whether the ImageNet weights can be loaded (cached or downloadable)."""
    try:
        torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        return True
    except Exception:
        return False


# Like the Airbnb splits: mostly single-photo rooms, so that the x64-upsampled positives still
# find as many negatives (a balanced pair set).
DEMO_DATASET = dict(train_rooms=20, test_rooms=6, photos_per_room=(2, 3), train_singles=120, test_singles=80)


def run_demo(args: argparse.Namespace) -> SiameseTrial:
    import synthetic

    with tempfile.TemporaryDirectory(prefix="samespace-demo-") as folder:
        data_dir = Path(folder) / "data"
        made = synthetic.make_dataset(data_dir, **DEMO_DATASET)
        print(f"demo: generated {len(made['train'])} training and {len(made['test'])} test photos in {data_dir}")
        args.data_dir, args.no_download = str(data_dir), True
        if not args.no_pretrained and not weights_available():
            print(
                "demo: the ImageNet weights cannot be fetched here; continuing with random trunk weights, "
                "so the metrics will be near chance",
                file=sys.stderr,
            )
            args.no_pretrained = True
        args.epochs = args.epochs or (None if args.batches else 2)
        return train_locally(args)


def summarise(report: RunReport) -> None:
    shown = {k: round(v, 6) for k, v in report.validation.items() if isinstance(v, float)}
    print(f"validation: {json.dumps(shown)}")
    if report.checkpoints:
        path = Path(report.checkpoints[-1])
        print(f"checkpoint: {path.name} ({path})")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = det.get_cluster_info()
    try:
        if info is not None and info.task_type == "TRIAL":
            train_on_cluster(info)
            return 0
        args = parse_args(argv)
        trial = run_demo(args) if args.demo else train_locally(args)
        summarise(trial.report)
        return 0
    except (ConfigError, data.DataError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Run through the importable module so checkpoints record "model_def:SiameseTrial", not
    # "__main__:SiameseTrial", and reload from any directory.
    import model_def

    sys.exit(model_def.main())
