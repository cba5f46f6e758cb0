"""dedup as a Determined batch job (``dedup.yaml``, entry point ``dedup_job.py``).

Determined's ``torch_batch_process`` deals whole batches of a sorted manifest round-robin to the
slots (worker r's local batch j is global batch j*W + r). Each worker embeds its photos with the
same ``scoring.Embedder`` as local ``dedup`` and, at every progress checkpoint, writes one shard
named by (rank, first batch, last batch): each photo's id (its line in the manifest), the SHA-256
of its file and both towers' float32 embeddings, or why it was skipped. A restart resumes from the
newest progress checkpoint, replays the batches after it and overwrites their shards under the same
names (delivery is at-least-once; a replay writes the same bytes). When every worker is done, the
chief reads all shards back, checks that every photo id is there exactly once, and runs local
dedup's own stages (``dedup.dedup_embedded`` and ``dedup.write_outputs``; ``catalogue.save`` for
the catalogue): the job adds only the sharding.

Private names of determined 0.38.1 this module relies on (pinned in requirements.txt):
``TorchBatchProcessorContext._core_context`` and ``._storage_path`` (to read every worker's
shards back through the checkpoint storage manager's ``restore_path``). The tests also use
``det._info._info`` and ``core._dummy_init``, as Determined's own tests do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils import data

from samespace import catalogue, dedup, photos, reports, scoring
from samespace.errors import ConfigError, DataError, first_line, printable
from samespace.photos import Skipped

logger = logging.getLogger("samespace.batch")

SHARD = re.compile(r"^shard-r(\d{3})-b(\d{8})-(\d{8})\.npz$")
SEARCHES = ("auto", "all", "knn")


@dataclasses.dataclass(frozen=True)
class JobSettings:
    """The job's hyperparameters (``dedup.yaml``), checked once."""

    checkpoint: str  # a checkpoint folder on a shared mount, or a checkpoint UUID in this storage
    photos: Path  # a folder (listed, sorted) or a text file with one photo path a line
    output: Path  # where the chief writes dedup's outputs (a shared mount)
    threshold: float = 0.5
    search: str = "auto"
    neighbours: int = 20
    index: str = "auto"
    keep: str = "largest"
    recursive: bool = True
    include_hidden: bool = False
    preprocessing: str = "auto"
    catalogue: bool = True  # also keep the catalogue, in OUTPUT/catalogue
    batch_size: int = 64
    checkpoint_interval: int = 10
    workers: int = 2

    @classmethod
    def from_hparams(cls, hparams: dict[str, Any]) -> "JobSettings":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(hparams) - set(known))
        if unknown:
            raise ConfigError(f"hyperparameters.{unknown[0]}: not a dedup job setting; known: {sorted(known)}")
        missing = [name for name in ("checkpoint", "photos", "output") if name not in hparams]
        if missing:
            raise ConfigError(f"hyperparameters.{missing[0]} is required (see dedup.yaml)")
        values = dict(hparams)
        for name in ("photos", "output"):
            values[name] = Path(str(values[name]))
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if not isinstance(self.threshold, (int, float)) or not 0.0 <= float(self.threshold) <= 1.0:
            raise ConfigError(f"hyperparameters.threshold = {self.threshold!r}: must be a number from 0 to 1")
        for name in ("neighbours", "batch_size", "checkpoint_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"hyperparameters.{name} = {value!r}: must be a whole number >= 1")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"hyperparameters.workers = {self.workers!r}: must be a whole number >= 0")
        if self.search not in SEARCHES:
            raise ConfigError(f"hyperparameters.search = {self.search!r}: must be one of {list(SEARCHES)}")


@dataclasses.dataclass
class Manifest:
    """The photos of a job, sorted: their line is their id; entries left out at listing time."""

    root: Path
    paths: list[Path]
    skipped: list[Skipped]

    @property
    def digest(self) -> str:
        """SHA-256 of the photo list: a shard of another list is refused."""
        return hashlib.sha256("\n".join(map(str, self.paths)).encode("utf-8", "surrogateescape")).hexdigest()


def manifest_of(settings: JobSettings) -> Manifest:
    """A folder's sorted listing (as local dedup lists it), or a text file's paths, sorted."""
    where = settings.photos
    if where.is_dir():
        listing = dedup.list_files(where, settings.recursive, settings.output, settings.include_hidden)
        return Manifest(where, listing.files, listing.skipped)
    if where.is_file():
        lines = where.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        paths = sorted({Path(line.strip()) for line in lines if line.strip()})
        return Manifest(Path("/"), [p if p.is_absolute() else where.parent / p for p in paths], [])
    raise DataError(f"hyperparameters.photos = {printable(str(where))}: neither a folder nor a file list")


class PhotoList(data.Dataset):
    """Manifest lines as (id, 256x256 uint8 photo, SHA-256 of the file, why it was skipped)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        digest = catalogue.file_digests([path])[0] or ""
        photo = photos.attempt_photo(path, draft=True)  # as dedup decodes: inference, not training
        skipped = isinstance(photo, Skipped)
        reason = photo.reason if skipped else ""
        if not digest and not skipped:  # gone between the two reads
            skipped, reason = True, "vanished while it was read"
        image = np.zeros((photos.IMAGE_SIZE, photos.IMAGE_SIZE, 3), np.uint8) if skipped else photo
        return {"id": index, "image": photos.as_tensor(image[None])[0], "sha256": digest, "reason": reason}


def shard_name(rank: int, first: int, last: int) -> str:
    return f"shard-r{rank:03d}-b{first:08d}-{last:08d}.npz"


def write_shard(folder: Path, name: str, arrays: dict[str, np.ndarray]) -> Path:
    """One shard, whole or not at all, with its SHA-256 beside it (written last)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    with reports.atomic_write(folder / name, "wb") as handle:
        handle.write(payload)
    with reports.atomic_write(folder / f"{name}.sha256", "w") as handle:
        handle.write(hashlib.sha256(payload).hexdigest())
    return folder / name


def read_shard(path: Path, manifest_digest: str) -> dict[str, np.ndarray]:
    """A shard's arrays after checking its SHA-256, its fields and its photo list; one line if not."""
    sidecar = path.with_name(path.name + ".sha256")
    try:
        payload = path.read_bytes()
        expected = sidecar.read_text().strip()
    except OSError as exc:
        raise DataError(f"shard {path.name} or its .sha256 is unreadable ({first_line(exc)}): run the job again")
    if hashlib.sha256(payload).hexdigest() != expected:
        raise DataError(f"shard {path.name} is corrupt or cut short (SHA-256 differs): run the job again")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"shard {path.name} is not a shard ({first_line(exc)}): run the job again") from None
    fields = {"ids", "sha256", "first", "second", "skipped_ids", "skipped_reasons", "manifest"}
    if set(arrays) != fields or len({len(arrays[k]) for k in ("ids", "sha256", "first", "second")}) != 1:
        raise DataError(f"shard {path.name} does not hold a shard's fields: run the job again")
    if str(arrays["manifest"]) != manifest_digest:
        raise DataError(
            f"shard {path.name} was written for another photo list: never change the photos between a run "
            "and its resume; start a new experiment"
        )
    return arrays


def read_shards(folder: Path, manifest: Manifest) -> dict[str, np.ndarray]:
    """Every worker's shards under ``folder`` (``rank_*/``), joined and sorted by photo id; each
    id of the manifest must be there exactly once (embedded or skipped)."""
    paths = sorted(p for p in folder.glob("rank_*/shard-*") if SHARD.match(p.name))
    parts = [read_shard(p, manifest.digest) for p in paths]
    joined = {
        key: np.concatenate([part[key] for part in parts]) if parts else np.zeros(0)
        for key in ("ids", "sha256", "first", "second", "skipped_ids", "skipped_reasons")
    }
    seen = np.concatenate([joined["ids"], joined["skipped_ids"]]).astype(np.int64)
    counts = np.bincount(seen, minlength=len(manifest.paths)) if len(seen) else np.zeros(len(manifest.paths), int)
    if len(counts) > len(manifest.paths) or (counts > 1).any():
        raise DataError(
            "a photo id is in two shards or beyond the photo list: slots, batch size or photos changed "
            "between a run and its resume; start a new experiment"
        )
    if (counts == 0).any():
        missing = int(np.flatnonzero(counts == 0)[0])
        where = printable(str(manifest.paths[missing]))
        raise DataError(f"no shard holds photo {missing} ({where}): run the job again")
    order = np.argsort(joined["ids"], kind="stable")
    for key in ("ids", "sha256", "first", "second"):
        joined[key] = joined[key][order]
    return joined


def embedded_from_shards(
    shards: dict[str, np.ndarray], manifest: Manifest, engine: str | None = None
) -> dedup.Embedded:
    """The shards as ``dedup.Embedded``: one embedded photo per set of byte-identical copies, the
    first of each in manifest order, exactly as local dedup groups them."""
    ids = shards["ids"].astype(np.int64)
    unread = zip(shards["skipped_ids"], shards["skipped_reasons"])
    skipped = manifest.skipped + [Skipped(manifest.paths[int(i)], str(reason)) for i, reason in unread]
    skipped.sort(key=lambda s: s.path)
    dedup.log_skipped(skipped, manifest.root)
    if not len(ids):
        raise DataError(f"no photos found in {printable(str(manifest.root))}: nothing to compare")
    by_digest: dict[str, list[int]] = {}
    for position, digest in enumerate(shards["sha256"].tolist()):
        by_digest.setdefault(str(digest), []).append(position)
    scored = [group[0] for group in by_digest.values()]
    scored.sort()
    paths = [manifest.paths[int(i)] for i in ids]
    names = [p.relative_to(manifest.root).as_posix() if manifest.root != Path("/") else str(p) for p in paths]
    rows = torch.from_numpy(np.asarray(scored, dtype=np.int64))
    return dedup.Embedded(
        manifest.root,
        paths,
        names,
        scored,
        {group[0]: group[1:] for group in by_digest.values() if len(group) > 1},
        torch.from_numpy(shards["first"])[rows],
        torch.from_numpy(shards["second"])[rows],
        skipped,
        0,
        engine,
    )


def finish(
    settings: JobSettings, net: Any, shards_folder: Path, manifest: Manifest, label: str, engine: str | None = None
) -> dict:
    """The chief's part: shards to dedup's outputs (and the catalogue), local dedup's own stages."""
    embedded = embedded_from_shards(read_shards(shards_folder, manifest), manifest, engine)
    result = dedup.dedup_embedded(
        embedded, net.head, threshold=settings.threshold, search=settings.search,
        neighbours=settings.neighbours, index=settings.index, keep=settings.keep, keep_table=settings.catalogue,
    )  # fmt: skip
    summary = dedup.write_outputs(result, manifest.root, settings.output, False, checkpoint=label, keep=settings.keep)
    if settings.catalogue:
        kept = settings.output / "catalogue"
        if not (kept / catalogue.INDEX).exists():  # a restart after the chief's last step: kept already
            catalogue.save(kept, net, embedded, neighbours=settings.neighbours, index=settings.index, result=result)
    logger.info("dedup job: %d photos, %d groups, outputs in %s", summary["photos"], summary["groups"], settings.output)
    return summary


def load_network(settings: JobSettings, context: Any) -> tuple[Any, str]:
    """The checkpoint's network on the worker's device: a folder path, else a UUID restored from
    this experiment's checkpoint storage."""
    from determined import errors

    from samespace.checkpoints import UUID, open_checkpoint

    if Path(settings.checkpoint).exists():
        net, _ = open_checkpoint(settings.checkpoint, context.device, settings.preprocessing)
        return net, Path(settings.checkpoint).resolve().name
    where = f"hyperparameters.checkpoint = {printable(settings.checkpoint)}"
    if not UUID.fullmatch(settings.checkpoint):  # S3/GCS look up by key prefix: a part of a UUID finds others
        raise ConfigError(f"{where}: neither a checkpoint folder every slot sees nor a checkpoint UUID")
    try:
        with context._core_context.checkpoint.restore_path(settings.checkpoint) as path:
            net, _ = open_checkpoint(path, context.device, settings.preprocessing)
    except (errors.CheckpointNotFound, errors.NoDirectStorageAccess) as exc:
        raise ConfigError(
            f"{where}: not in this experiment's checkpoint storage ({first_line(exc)}); give a UUID stored "
            "there or a checkpoint folder on a mount"
        ) from None
    return net, settings.checkpoint


def processor_class(settings: JobSettings, manifest: Manifest) -> type:
    """A ``TorchBatchProcessor`` bound to this job (torch_batch_process builds it from a context)."""
    from determined.pytorch import experimental

    class DedupProcessor(experimental.TorchBatchProcessor):
        def __init__(self, context: experimental.TorchBatchProcessorContext) -> None:
            self.context = context
            self.rank = context.get_distributed_rank()
            self.net, self.label = load_network(settings, context)
            self.embedder = scoring.Embedder(self.net, context.device, autocast=True, engine_name="torch")
            self.clear()

        def clear(self) -> None:
            self.parts: list[dict[str, Any]] = []
            self.first_batch: int | None = None
            self.last_batch = -1

        def process_batch(self, batch: dict[str, Any], batch_idx: int) -> None:
            ok = torch.tensor([not reason for reason in batch["reason"]], dtype=torch.bool)
            images = batch["image"][ok]
            features = self.embedder.backbone(images, desc=f"batch {batch_idx}")
            nothing = (torch.zeros(0, self.net.embedding_dim),) * 2  # a batch where no photo decoded
            first, second = self.embedder.embed(features) if len(images) else nothing
            ids = batch["id"].numpy()
            self.parts.append(
                {
                    "ids": ids[ok.numpy()],
                    "sha256": np.array(batch["sha256"], dtype="U64")[ok.numpy()],
                    "first": first.float().cpu().numpy(),
                    "second": second.float().cpu().numpy(),
                    "skipped_ids": ids[~ok.numpy()],
                    "skipped_reasons": np.array([r for r in batch["reason"] if r], dtype=str),
                }
            )
            self.first_batch = batch_idx if self.first_batch is None else self.first_batch
            self.last_batch = batch_idx

        def on_checkpoint_start(self) -> None:
            if self.first_batch is None:  # nothing since the last checkpoint (this worker ran out)
                return
            arrays = {key: np.concatenate([p[key] for p in self.parts]) for key in self.parts[0]}
            arrays["manifest"] = np.array(manifest.digest)
            with self.context.upload_path() as folder:
                write_shard(Path(folder), shard_name(self.rank, self.first_batch, self.last_batch), arrays)
            self.clear()

        def on_finish(self) -> None:
            if self.rank != 0:
                return
            output_uuid = self.context._storage_path.split("/")[0]
            with self.context._core_context.checkpoint._storage_manager.restore_path(output_uuid) as folder:
                finish(settings, self.net, Path(folder), manifest, self.label, self.embedder.engine)

    return DedupProcessor


def run(settings: JobSettings) -> None:
    """The job on the slots Determined gives it (on a cluster; see dedup_job.py)."""
    from determined.pytorch import experimental

    manifest = manifest_of(settings)
    reports.prepare_output(settings.output, force=True, create=False)
    experimental.torch_batch_process(
        processor_class(settings, manifest),
        PhotoList(manifest.paths),
        batch_size=settings.batch_size,
        checkpoint_interval=settings.checkpoint_interval,
        dataloader_kwargs={"num_workers": settings.workers},
    )
