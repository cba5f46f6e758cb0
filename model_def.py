"""SameSpace: a Siamese MobileNetV3 network that decides whether two photos show the same room.

This file is the Determined trial (``model_def:SiameseTrial``) and the script the configs run:

    python model_def.py                   train locally with const.yaml's hyperparameters
    python model_def.py --demo            generated photos on the CPU, no credentials
    det experiment create const.yaml .    on a Determined cluster (the configs run this script)

The network is in ``samespace/network.py``, the data in ``data.py``, local runs in ``local_run.py``.
"""

from __future__ import annotations

import logging
import shutil
import sys
from typing import Any, Sequence

import determined as det
import numpy as np
import torch
import torch.nn.functional as F
from determined import pytorch

import data
from samespace import metrics
from samespace.checkpoints import allow_determined_checkpoints, write_checksum
from samespace.console import known_noise_silenced
from samespace.errors import TrainingError
from samespace.network import make_optimizer, network_from_hparams
from samespace.settings import DataSettings, Hyperparameters

logger = logging.getLogger("samespace")

allow_determined_checkpoints()  # pause/resume on a cluster reloads with weights_only=True


class PairMetrics(pytorch.MetricReducer):
    """Validation loss, accuracy and ROC-AUC over the whole validation set, across all slots."""

    def __init__(self, prefix: str = "validation_"):
        self.prefix = prefix
        self.expected: int | None = None  # the validation set's pairs, when known (why_null)
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
        result = metrics.pair_metrics(logits, labels, prefix=self.prefix)
        return result | short_validation_why(result, labels, self.expected, self.prefix)


def short_validation_why(result: dict, labels: np.ndarray, expected: int | None, prefix: str) -> dict[str, str]:
    """Why ROC-AUC is null when only part of the validation set was scored (a test run,
    ``det experiment create --test``, validates one batch): not "the split needs two rooms"."""
    if f"{prefix}why_null" not in result or not len(labels) or not expected or len(labels) >= expected:
        return {}
    kind = "same-room" if labels.all() else "different-room"
    return {
        f"{prefix}why_null": f"ROC-AUC needs both same-room and different-room pairs; only {len(labels)} of the "
        f"{expected} validation pairs were scored (a test run validates one batch), all {kind}"
    }


def is_finite(value: Any) -> bool:
    """Whether a reported metric is a finite number (metrics arrive as numpy scalars)."""
    try:
        return bool(np.isfinite(np.asarray(value, dtype=np.float64)).all())
    except (TypeError, ValueError):
        return False


class RunReport(pytorch.PyTorchCallback):
    """Follows a run: the checkpoints it wrote and the validation loss of each, the last
    validation metrics, and the losses, stopping a run whose loss is no longer finite.

    The loss check reads the per-batch losses Determined has already copied to the CPU for its
    report, at the end of each training workload (before any validation or checkpoint), so it
    adds no device synchronisation and a diverged model is never validated or checkpointed.

    With ``keep_best_and_latest`` (local runs) it deletes the checkpoints this run wrote that are
    neither the latest nor the best by validation_loss, like ``save_trial_best: 1`` and
    ``save_trial_latest: 1`` on a cluster.
    """

    def __init__(self, hyperparameters: str = "", keep_best_and_latest: bool = False) -> None:
        self.hyperparameters = hyperparameters  # named in the divergence message
        self.keep_best_and_latest = keep_best_and_latest
        self.checkpoints: list[str] = []  # written by this run and still kept, oldest first
        self.removed: list[str] = []
        self.losses: dict[str, float | None] = {}  # checkpoint -> validation_loss of its weights
        self.validation: dict[str, Any] = {}
        self.first_batch: int | None = None
        self.batches = 0  # trained so far, counting from the start of the trial
        self.current_loss: float | None = None  # validation_loss of the weights as they are now
        self.trained_with: dict[str, str] = {}  # recorded in each checkpoint's samespace.json

    def on_trial_startup(self, first_batch_idx: int, checkpoint_uuid: str | None) -> None:
        self.first_batch = first_batch_idx
        self.batches = first_batch_idx

    def on_training_workload_end(self, avg_metrics: dict[str, Any], batch_metrics: list[dict[str, Any]]) -> None:
        self.current_loss = None  # trained since the last validation
        for offset, batch in enumerate(batch_metrics):
            if "loss" in batch and not is_finite(batch["loss"]):
                raise TrainingError(
                    f"training stopped: the loss is {float(np.asarray(batch['loss']))} at batch "
                    f"{self.batches + offset + 1}; the run diverged ({self.hyperparameters}): start a new run "
                    "with a lower learning rate, and alpha below 1"
                )
        self.batches += len(batch_metrics)

    def on_validation_end(self, metrics: dict[str, Any]) -> None:
        self.validation = dict(metrics)
        loss = metrics.get("validation_loss")
        if loss is not None and not is_finite(loss):
            raise TrainingError(
                f"training stopped: validation_loss is {loss} after batch {self.batches}; the weights are no "
                f"longer finite ({self.hyperparameters}): start a new run with a lower learning rate"
            )
        self.current_loss = None if loss is None else float(loss)

    def on_checkpoint_write_end(self, checkpoint_dir: str) -> None:
        write_checksum(checkpoint_dir, self.trained_with)  # samespace.json: loading refuses a damaged state_dict.pth
        self.checkpoints.append(checkpoint_dir)
        self.losses[checkpoint_dir] = self.current_loss
        logger.info("checkpoint written: %s (validation_loss %s)", checkpoint_dir, self.current_loss)
        if self.keep_best_and_latest:
            self.keep_only_best_and_latest()

    def keep_only_best_and_latest(self) -> None:
        """Delete superseded checkpoints of this run (never one it did not write)."""
        validated = [c for c in self.checkpoints if self.losses[c] is not None]
        keep = {self.checkpoints[-1]}
        if validated:
            keep.add(min(validated, key=lambda c: self.losses[c]))  # the earliest of equal losses
        for folder in [c for c in self.checkpoints if c not in keep]:
            shutil.rmtree(folder, ignore_errors=True)
            self.checkpoints.remove(folder)
            self.removed.append(folder)
            logger.info("removed superseded checkpoint %s", folder)


class SiameseTrial(pytorch.PyTorchTrial):
    """The SameSpace experiment: BCE-with-logits, RMSprop over the trainable parameters."""

    def __init__(self, context: pytorch.PyTorchTrialContext, pretrained: bool | None = None):
        self.context = context
        self.hparams = Hyperparameters.from_hparams(context.get_hparams())
        self.settings = DataSettings.from_config(context.get_data_config())
        self.net = network_from_hparams(self.hparams, pretrained)
        self.model = context.wrap_model(self.net)
        self.optimizer = context.wrap_optimizer(make_optimizer(self.net, self.hparams, context.device))
        self.validation = context.wrap_reducer(PairMetrics(), for_training=False)
        self.report = RunReport(f"learning_rate {self.hparams.learning_rate}, alpha {self.hparams.alpha}")

    def build_callbacks(self) -> dict[str, pytorch.PyTorchCallback]:
        if det.get_cluster_info() is not None:
            return {"report": self.report}
        import local_run  # a local run: a progress bar per epoch

        return {"report": self.report, "progress": local_run.EpochProgress(self)}

    def build_training_data_loader(self) -> pytorch.DataLoader:
        return self._loader("train", shuffle=True)

    def build_validation_data_loader(self) -> pytorch.DataLoader:
        return self._loader("test", shuffle=False)

    def _loader(self, split_name: str, shuffle: bool) -> pytorch.DataLoader:
        split, pairs = data.load_pairs(self.settings, split_name)
        dataset, options = data.pair_dataset(
            split, pairs, self.settings, self.net.trunk, self.context.device, split_name
        )
        # what ran the frozen trunk: the feature cache's engine, or torch inside the training graph
        self.report.trained_with["trunk engine"] = getattr(dataset, "engine", "torch")
        if not shuffle:  # the validation set: a shorter validation is then told apart
            self.validation.expected = len(dataset)
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


def train_on_cluster(info: det.ClusterInfo) -> None:
    """A trial the master started: its hyperparameters, and its checkpoint when resuming."""
    with pytorch.init() as context:
        trial = SiameseTrial(context)
        pytorch.Trainer(trial, context).fit(
            max_length=pytorch.Epoch(trial.hparams.epochs),
            validation_period=pytorch.Epoch(1),
            latest_checkpoint=info.latest_checkpoint,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """On a cluster, run the trial the master asks for; anywhere else, a local run."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = det.get_cluster_info()
    with known_noise_silenced():
        if info is not None and info.task_type == "TRIAL":
            train_on_cluster(info)
            return 0
        import local_run

        return local_run.main(SiameseTrial, argv)


if __name__ == "__main__":
    # Run through the importable module so checkpoints record "model_def:SiameseTrial", not
    # "__main__:SiameseTrial", and reload from any directory.
    import model_def

    sys.exit(model_def.main())
