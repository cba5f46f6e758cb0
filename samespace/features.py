"""Frozen-trunk feature cache: each (image, variant) goes through the MobileNetV3 trunk once.

The trunk is frozen and runs in eval mode, and the upsampling transforms are fixed, so a photo has
at most 8 distinct trunk inputs. Their pooled 960-d outputs are computed once, batched on the
trial's device, and kept on disk keyed by (trunk weights, preprocessing, image content, variant):
the trials of a search share them through the data directory, and training touches only the
trainable layers (the towers' Linear + Hardswish + Dropout and the head).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import itertools
import logging
import os
from pathlib import Path
from typing import Iterator

import filelock
import numpy as np
import torch

from samespace import console, engine, original, transforms
from samespace.errors import ConfigError, DataError, first_line
from samespace.pairs import PairSet
from samespace.photos import PREPROCESSING as PHOTO_PREPROCESSING

logger = logging.getLogger("samespace.features")

# Anything that changes what the trunk sees must change this string.
PREPROCESSING = f"{PHOTO_PREPROCESSING};{transforms.PREPROCESSING}"
# uint8 photos -> trunk input: ours, or the original's (what its published checkpoint was trained on).
PREPROCESSINGS = {"ours": transforms.normalise, "original": original.normalise}


def trunk_fingerprint(trunk: torch.nn.Module) -> str:
    """SHA-256 over the trunk's parameters and buffers (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(trunk.state_dict().items()):
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(array.shape)}{array.dtype}".encode())
        digest.update(array.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def image_key(image: torch.Tensor) -> str:
    """SHA-256 of a decoded 256x256 uint8 image: the content the trunk actually sees."""
    return hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest()


def default_batch_size(device: torch.device) -> int:
    """Trunk images per batch: large on a GPU, to fill it; 64 on the CPU, where larger batches
    only push the activations out of cache (MobileNetV3 at 256x256: ~1 MB an image a layer)."""
    return 256 if device.type == "cuda" else 64


def inference_trunk(trunk: torch.nn.Module, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A copy of the trunk for inference on ``device``: eval mode, weights in channels_last.

    On the CPU, oneDNN's channels_last convolutions run MobileNetV3's depthwise layers about 2.4x
    faster than NCHW; on a GPU, cuDNN's NHWC kernels (and tensor cores under autocast) want it
    too. A copy, so the caller's (training) module keeps its layout; the values are the same.
    """
    return copy.deepcopy(trunk).eval().to(device=device, memory_format=torch.channels_last)


@contextlib.contextmanager
def cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """cuDNN autotuning for the fixed-shape trunk batches, on for our call only."""
    if torch.device(device).type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


@torch.inference_mode()
def trunk_features(
    trunk: torch.nn.Module,
    images: torch.Tensor,
    variant: int = 0,
    device: torch.device | str = "cpu",
    *,
    autocast: bool = False,
    preprocessing: str = "ours",
    runner: engine.OnnxTrunk | None = None,
) -> torch.Tensor:
    """Pooled trunk outputs (float32, on the CPU) for a batch of uint8 images in one variant.

    The uint8 pixels go to the device (a quarter of the bytes of float input) and are
    preprocessed there, in channels_last, so a trunk from ``inference_trunk`` runs its fast
    kernels. ``autocast`` runs the trunk in bfloat16 on CUDA (inference only: dedup embedding);
    the features come back as float32 either way. ``runner`` (``engine.load``) runs the trunk's
    forward pass instead of ``trunk`` itself.
    """
    device = torch.device(device)
    if runner is not None:  # the ONNX export takes NCHW: preprocessing in it spares a layout copy
        return runner(PREPROCESSINGS[preprocessing](transforms.apply_variant(images.contiguous(), variant)))
    pixels = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    inputs = PREPROCESSINGS[preprocessing](transforms.apply_variant(pixels, variant))
    inputs = inputs.contiguous(memory_format=torch.channels_last)
    with cudnn_benchmark(device), torch.autocast(device.type, torch.bfloat16, enabled=autocast):
        return trunk(inputs).float().cpu()


def network_features(
    root: str | os.PathLike,
    net: torch.nn.Module,
    images: torch.Tensor,
    device: torch.device | str = "cpu",
    engine_name: str = "torch",
) -> tuple[torch.Tensor, str]:
    """A network's cached trunk features of uint8 images in its preprocessing: (N, 8, D) from a
    shared trunk, (N, 8, 2, D) when each side has its own (the original's checkpoints; one engine
    export each, as their weights differ). Also the engine that ran (``engine.label``)."""
    caches = [
        FeatureCache(root, trunk, device, preprocessing=net.preprocessing, engine_name=engine_name)
        for trunk in net.trunks
    ]
    per_trunk = [cache.features(images, f"trunk features ({i})") for i, cache in enumerate(caches)]
    ran = caches[0].engine
    return (per_trunk[0] if len(per_trunk) == 1 else torch.stack(per_trunk, dim=2)), ran


class FeatureCache:
    """Trunk features of images in all 8 variants, computed once and stored as ``.npy`` files.

    Nothing on disk is trusted: each entry has a SHA-256 sidecar written after it, and an entry
    whose bytes, checksum, shape, dtype or values are wrong (overwritten, truncated, NaN, an
    interrupted write) is computed again, with one warning line per call. ``engine_name`` (see
    ``engine.choose``) picks what runs the trunk; the key names the engine that did, so entries of
    torch and onnx never mix (torch keeps the historical key).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        trunk: torch.nn.Module,
        device: torch.device | str = "cpu",
        batch_size: int | None = None,
        preprocessing: str = "ours",
        engine_name: str = "torch",
    ):
        if preprocessing not in PREPROCESSINGS:
            raise ConfigError(f"unknown preprocessing {preprocessing!r}; known: {sorted(PREPROCESSINGS)}")
        self.trunk = trunk
        self.device = torch.device(device)
        self.batch_size = batch_size or default_batch_size(self.device)
        self.preprocessing = preprocessing
        # Ours keeps its historical key, so existing caches stay valid.
        what = PREPROCESSING if preprocessing == "ours" else f"{PREPROCESSING}|{original.PREPROCESSING}"
        fingerprint = trunk_fingerprint(trunk)
        self.runner = engine.load(trunk, fingerprint, self.device, engine_name, preprocessing=preprocessing)
        self.engine = engine.label(self.runner)
        if self.engine != "torch":
            what = f"{what}|engine={self.engine}"
        key = hashlib.sha256(f"{fingerprint}|{what}".encode()).hexdigest()
        self.folder = Path(root) / key[:24]
        self.built = 0  # images computed (rather than read) by the last call, for tests and logs
        self.rebuilt = 0  # of those, entries that were on disk but damaged
        self._dim: int | None = None
        self.write_failed = False

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    @staticmethod
    def checksum_path(path: Path) -> Path:
        return path.with_name(path.name + ".sha256")

    def feature_dim(self, sample: torch.Tensor) -> int:
        """The trunk's output size, from one forward pass of one image (once per cache)."""
        if self._dim is None:
            was_training = self.trunk.training
            self.trunk.eval()
            try:
                self._dim = int(trunk_features(self.trunk, sample[:1], 0, self.device, runner=self.runner).shape[-1])
            finally:
                self.trunk.train(was_training)
        return self._dim

    def features(self, images: torch.Tensor, desc: str = "trunk features") -> torch.Tensor:
        """(N, 8, D) float32 features for uint8 images (N, 3, H, W), from disk where present and intact."""
        keys = [image_key(image) for image in images]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = filelock.FileLock(str(self.folder / ".lock"))
            lock.acquire()
        except OSError as exc:
            raise DataError(
                f"cannot use the feature cache {self.folder}: {first_line(exc)}; "
                "point data.cache_dir (or --cache-dir) at a writable folder"
            ) from None
        # One process computes; the trials of a search waiting here then read its files.
        try:
            loaded = [self._read(self.path(key), images) for key in keys]
            missing = [i for i, array in enumerate(loaded) if not isinstance(array, np.ndarray)]
            self.rebuilt = sum(loaded[i] == "damaged" for i in missing)
            self.built = len(missing)
            if self.rebuilt:
                logger.warning(
                    "feature cache: rebuilding %d damaged entries in %s (checksum, size or values wrong)",
                    self.rebuilt,
                    self.folder,
                )
            if missing:
                remove_partials(self.folder)  # under the lock: no writer is at work
                logger.info("computing trunk features of %d images into %s", len(missing), self.folder)
                for index, array in zip(missing, self._compute(images, keys, missing, desc)):
                    loaded[index] = array
        finally:
            lock.release()
        return torch.from_numpy(np.stack(loaded))

    def _read(self, path: Path, images: torch.Tensor) -> np.ndarray | str:
        """An intact entry, else "missing" or "damaged"."""
        if not path.is_file():
            return "missing"
        try:
            payload = path.read_bytes()
            expected = self.checksum_path(path).read_text().strip()
            if hashlib.sha256(payload).hexdigest() != expected:
                return "damaged"
            array = np.load(io.BytesIO(payload), allow_pickle=False)
        except (OSError, ValueError, EOFError):  # unreadable, no sidecar, not an .npy at all
            return "damaged"
        if array.dtype != np.float32 or array.shape != (transforms.N_VARIANTS, self.feature_dim(images)):
            return "damaged"
        if not np.isfinite(array).all():
            return "damaged"
        return array

    def _compute(self, images: torch.Tensor, keys: list[str], missing: list[int], desc: str) -> list[np.ndarray]:
        # A channels_last copy: the training network's own trunk is neither switched nor re-laid.
        trunk = inference_trunk(self.trunk, self.device)
        pin = self.device.type == "cuda"  # page-locked, so the copy to the GPU runs asynchronously
        computed = []
        with console.progress(total=len(missing) * transforms.N_VARIANTS, desc=desc, unit="img") as bar:
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start : start + self.batch_size]
                batch = images[chunk].pin_memory() if pin else images[chunk]
                batch = batch.to(self.device, non_blocking=True)  # once for all 8 variants
                per_variant = []
                for variant in range(transforms.N_VARIANTS):
                    per_variant.append(
                        trunk_features(
                            trunk, batch, variant, self.device, preprocessing=self.preprocessing, runner=self.runner
                        )
                    )
                    bar.update(len(chunk))
                stacked = torch.stack(per_variant, dim=1).numpy()
                if not np.isfinite(stacked).all():
                    raise DataError("the trunk gives non-finite features: its weights are damaged")
                for row, index in enumerate(chunk):
                    self._write(self.path(keys[index]), stacked[row])
                    computed.append(stacked[row])
        return computed

    def _write(self, path: Path, array: np.ndarray) -> None:
        """Write the entry, then its checksum, each atomically: a reader sees no half file, and an
        entry without a matching checksum (say, a write cut between the two) is rebuilt. A cache
        that cannot be written (disk full) costs speed, not the run: one warning, then memory only."""
        buffer = io.BytesIO()
        np.save(buffer, array)
        payload = buffer.getvalue()
        digest = hashlib.sha256(payload).hexdigest().encode()
        partial = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for target, content in ((path, payload), (self.checksum_path(path), digest)):
                partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
                partial.write_bytes(content)
                os.replace(partial, target)
        except OSError as exc:
            if partial is not None:  # a full disk leaves it created and empty
                partial.unlink(missing_ok=True)
            if not self.write_failed:
                logger.warning("feature cache: cannot write %s (%s); keeping features in memory", path, first_line(exc))
            self.write_failed = True


def remove_partials(folder: Path) -> int:
    """Delete the ``.partial`` files a writer left in the cache (killed, or out of disk) and
    return how many; the caller holds the cache's lock, so none is being written."""
    removed = 0
    for partial in itertools.chain(folder.glob(".*.partial"), folder.glob("*/.*.partial")):
        with contextlib.suppress(OSError):
            partial.unlink()
            removed += 1
    if removed:
        logger.info("feature cache: removed %d unfinished files in %s", removed, folder)
    return removed


class FeaturePairDataset(torch.utils.data.Dataset):
    """(features1, features2, label) gathered from cached trunk features.

    ``__getitems__`` gathers a whole batch with three index operations; use it with
    ``collate=collate_batch`` (a DataLoader's default collate expects a list of items).
    """

    def __init__(self, features: torch.Tensor, pairs: PairSet, engine: str = "torch"):
        self.features = features
        self.engine = engine  # what computed the features (``FeatureCache.engine``), for the checkpoint
        self.first = torch.from_numpy(pairs.first.astype(np.int64))
        self.second = torch.from_numpy(pairs.second.astype(np.int64))
        self.first_variant = torch.from_numpy(pairs.first_variant.astype(np.int64))
        self.second_variant = torch.from_numpy(pairs.second_variant.astype(np.int64))
        self.label = torch.from_numpy(pairs.label.astype(np.float32))

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        first, second, label = self.__getitems__([index])
        return first[0], second[0], label[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return (
            self.features[self.first[index], self.first_variant[index]],
            self.features[self.second[index], self.second_variant[index]],
            self.label[index],
        )


def collate_batch(batch):
    """The batch ``FeaturePairDataset.__getitems__`` already assembled."""
    return batch
