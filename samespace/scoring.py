"""Scoring photo pairs with a trained network, each photo through the backbone once.

A photo's trunk features and tower embeddings do not depend on what it is paired with, so they
are computed once per photo; a pair then costs only the head. The head's first layer sees
``[e1_i; e2_j]``, so ``W [e1_i; e2_j] + b = W_a e1_i + (W_b e2_j + b)``: each photo's share of
that layer is computed once too, and a pair costs the remaining 2048->1024->512->64->1 layers.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from samespace import console, engine, features, original, photos
from samespace.errors import ConfigError

AUTOCAST_TOLERANCE = 1e-3  # largest change of a pair's probability that bfloat16 may cause

logger = logging.getLogger("samespace.scoring")


def resolve_device(name: str = "auto") -> torch.device:
    """The device for ``--device``: auto (the GPU when there is one), cpu, cuda or cuda:N.

    Checked here, before any work, so a typo or a missing GPU is one line and not a traceback
    from deep inside the first tensor copy."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"--device {name}: only auto, cpu, cuda and cuda:N are supported")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is available to this torch; use --device cpu (or auto)")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"--device {name}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return device


class Embedder:
    """Trunk features and both towers' embeddings of uint8 images; counts backbone passes.

    Inference only: the network is moved to ``device`` in eval mode, and its trunk runs as a
    channels_last copy (``features.inference_trunk``). ``autocast`` runs the trunk in bfloat16
    (CUDA only, for dedup; the towers and the head stay float32), if on the first batch the
    probabilities of all its pairs stay within ``AUTOCAST_TOLERANCE`` of float32; otherwise (a
    checkpoint whose features bfloat16 rounding moves too far) everything runs in float32.

    A network with a trunk per side (the original's) gives (N, 2, D) trunk features, each side's
    tower reading its own trunk's; a shared trunk gives (N, D), read by both towers.

    ``engine_name`` (``engine.choose``: auto is onnx on the CPU) runs each trunk through its own
    cached ONNX export, with the threads ``thread_split`` leaves the trunk (``trunk_threads``
    overrides it, for callers that decode with other than ``thread_split``'s threads); ``engine``
    says which ran.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        device: torch.device,
        batch_size: int | None = None,
        autocast: bool = False,
        engine_name: str = "torch",
        trunk_threads: int | None = None,
    ):
        self.net = net.to(device).eval()
        self.device = torch.device(device)
        threads = trunk_threads or thread_split(self.device)[1]  # the engine's: fixed at session creation
        self.runners = tuple(
            engine.load(
                trunk,
                features.trunk_fingerprint(trunk),
                self.device,
                engine_name,
                preprocessing=net.preprocessing,
                threads=threads,
            )
            for trunk in net.trunks
        )
        # torch's channels_last copy only for a trunk that torch runs (the copy costs 0.1 s a call)
        self.trunks = tuple(
            trunk if runner is not None else features.inference_trunk(trunk, device)
            for trunk, runner in zip(net.trunks, self.runners)
        )
        self.trunk = self.trunks[0]
        self.engine = engine.label(self.runners[0])
        self.batch_size = batch_size or features.default_batch_size(self.device)
        self.autocast = autocast and self.device.type == "cuda"
        self.autocast_checked = False
        self.trunk_images = 0  # images that went through the backbone

    @torch.inference_mode()
    def backbone(self, images: torch.Tensor, desc: str = "backbone") -> torch.Tensor:
        """Trunk features (on the CPU) of uint8 images, a batch at a time, in the network's
        preprocessing."""
        out = []
        for batch in console.progress(images.split(self.batch_size), desc=desc, unit="batch"):
            if self.device.type == "cuda":  # page-locked, so the copy overlaps the previous batch
                batch = batch.pin_memory()
            if self.autocast and not self.autocast_checked:
                out.append(self._checked_autocast(batch))
            else:
                out.append(self._features(batch, self.autocast))
            self.trunk_images += len(batch)
        return torch.cat(out) if out else torch.zeros(0, self.net.feature_dim)

    def _features(self, batch: torch.Tensor, autocast: bool) -> torch.Tensor:
        sides = [
            features.trunk_features(
                trunk, batch, 0, self.device, autocast=autocast, preprocessing=self.net.preprocessing, runner=runner
            )
            for trunk, runner in zip(self.trunks, self.runners)
        ]
        return sides[0] if len(sides) == 1 else torch.stack(sides, dim=1)

    def _checked_autocast(self, batch: torch.Tensor) -> torch.Tensor:
        """Float32 features of the first batch; bfloat16 stays on only if it scores its pairs alike."""
        exact = self._features(batch, False)
        rounded = self._features(batch, True)
        a, b = all_upper_pairs(len(batch))
        gap = np.abs(
            PairScorer(self.net.head, *self.embed(rounded)).probabilities(a, b)
            - PairScorer(self.net.head, *self.embed(exact)).probabilities(a, b)
        )
        if not len(gap):  # a single photo has no pair to check: decide on the next batch
            return exact
        self.autocast_checked = True
        if gap.max() > AUTOCAST_TOLERANCE:
            logger.info("bfloat16 trunk moves scores by %.1e (> %g); staying in float32", gap.max(), AUTOCAST_TOLERANCE)
            self.autocast = False
        return exact

    @torch.inference_mode()
    def embed(self, trunk_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both towers' embeddings (on the device) of trunk features."""
        x = trunk_features.to(self.device)
        if x.dim() == 3:  # a trunk per side
            return self.net.towers[0](x[:, 0]), self.net.towers[1](x[:, 1])
        return self.net.towers[0](x), self.net.towers[1](x)


class PairScorer:
    """Head logits of (first, second) item pairs from per-item tower embeddings.

    The first layer's per-item shares are computed block by block, not for every item at once
    (2 x 2048 floats, 16 KB an item, more than its embeddings): pairs are taken in buckets of
    (first item's block, second item's block) of ``block`` items each, and a bucket computes the
    shares of only the items its pairs use. So memory holds at most two blocks' shares, whatever
    the number of items; up to ``block`` items it is one bucket, each item's share computed once.
    A share is a row of a matrix product, so only float32 rounding depends on the blocking."""

    def __init__(
        self,
        head: torch.nn.Sequential,
        first: torch.Tensor,
        second: torch.Tensor,
        batch_size: int = 8192,
        block: int = 4096,
    ):
        layer = head[0]
        self.width = first.shape[1]
        self.first, self.second = first, second
        self.layer = layer
        self.rest = head[1:].eval()
        self.batch_size = batch_size
        self.block = block
        self.evaluations = 0  # head evaluations (one per ordered pair)

    def shares(self, items: torch.Tensor, side: int) -> torch.Tensor:
        """The first layer's share of ``items`` (indices on the embeddings' device) as first (0)
        or second (1) of a pair; the bias goes with the second."""
        weight = self.layer.weight
        if side == 0:
            return self.first[items] @ weight[:, : self.width].T
        return self.second[items] @ weight[:, self.width :].T + self.layer.bias

    @torch.inference_mode()
    def logits(self, first: np.ndarray | torch.Tensor, second: np.ndarray | torch.Tensor) -> torch.Tensor:
        device = self.first.device
        first, second = torch.as_tensor(first).to(device), torch.as_tensor(second).to(device)
        out = torch.zeros(len(first))
        blocks = max(len(self.first), len(self.second)) // self.block + 1
        buckets = (first // self.block) * blocks + second // self.block
        order = torch.argsort(buckets, stable=True)
        bounds = torch.searchsorted(buckets[order], torch.unique(buckets[order]), right=True).tolist()
        begin = 0
        for end in bounds:
            pairs = order[begin:end]
            items_i, at_i = torch.unique(first[pairs], return_inverse=True)
            items_j, at_j = torch.unique(second[pairs], return_inverse=True)
            share_i, share_j = self.shares(items_i, 0), self.shares(items_j, 1)
            for start in range(0, len(pairs), self.batch_size):
                i, j = at_i[start : start + self.batch_size], at_j[start : start + self.batch_size]
                logits = self.rest(share_i[i] + share_j[j]).squeeze(1).float().cpu()
                out[pairs[start : start + self.batch_size].cpu()] = logits
            begin = end
        self.evaluations += len(first)
        return out

    def probabilities(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """P(same space) of unordered pairs: the network is order-sensitive (two towers), so the
        mean of both orders."""
        return ((torch.sigmoid(self.logits(a, b)) + torch.sigmoid(self.logits(b, a))) / 2).numpy()


def all_upper_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """All unordered pairs i < j of ``n`` items, row by row."""
    return np.triu_indices(n, k=1)


def photo_reader(preprocessing: str) -> Callable[[Path, photos.MemoryBudget | None], np.ndarray | photos.Skipped]:
    """How a photo file becomes trunk pixels for ``preprocessing``: the original's reader (native
    size, float resize) for "original"; else ours, 256x256 uint8, large JPEGs decoded at reduced
    scale (draft): inference, unlike training, need not be pixel-exact."""
    if preprocessing == "original":
        return original.attempt_photo
    return lambda path, budget=None: photos.attempt_photo(path, draft=True, budget=budget)


def read_images(
    paths: list, desc: str = "reading photos", preprocessing: str = "ours"
) -> tuple[torch.Tensor, list[int], list[photos.Skipped]]:
    """Decode photos to (N, 3, 256, 256) (``photo_reader``); unreadable ones are returned, not raised."""
    array, kept, skipped = photos.read_photos(paths, desc=desc, attempt=photo_reader(preprocessing))
    return photos.as_tensor(array), kept, skipped


# On the CPU, decoding a photo (640x480 JPEG, resized) costs about a tenth of its trunk pass, so a
# decode thread taken from the trunk pays only from about 8 cores on; below that, the chunks are
# decoded between trunk passes with every core (read_photos' own pool) and the trunk gets all cores.
CORES_PER_DECODE_THREAD = 8


def thread_split(device: torch.device, budget: int | None = None) -> tuple[int, int]:
    """(decode threads, torch threads) for embedding photo files; 0 decode threads: no overlap.

    The two add up to ``budget`` (torch's thread count, which honours OMP_NUM_THREADS), so the
    background decoding never oversubscribes the cores the trunk's kernels spin on. On a GPU the
    trunk needs one CPU thread to feed it; the rest decode.
    """
    budget = max(1, budget or torch.get_num_threads())
    if torch.device(device).type == "cuda":
        return max(1, budget - 1), 1
    decoders = budget // CORES_PER_DECODE_THREAD
    return (decoders, budget - decoders) if decoders else (0, budget)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count for our call only (it is process-wide), then restored."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


class Rows:
    """Row chunks gathered into tensors allocated once for at most ``capacity`` rows, rather than
    kept as a list and concatenated (which holds them twice at the end)."""

    def __init__(self, capacity: int):
        self.capacity, self.filled, self.parts = capacity, 0, None

    def add(self, parts: tuple[torch.Tensor, ...]) -> None:
        if self.parts is None:
            self.parts = [torch.empty((self.capacity, *p.shape[1:]), dtype=p.dtype, device=p.device) for p in parts]
        for whole, part in zip(self.parts, parts):
            whole[self.filled : self.filled + len(part)] = part
        self.filled += len(parts[0])

    def result(self, empty: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if self.parts is None:
            return empty
        return tuple(whole[: self.filled] for whole in self.parts)


def features_of_files(
    embedder: Embedder, paths: list, chunk: int = 512, decode_threads: int | None = None, towers: bool = False
) -> tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor], list[int], list[photos.Skipped]]:
    """Trunk features of photo files, decoded and embedded a chunk at a time so that memory holds
    960 floats per photo rather than its pixels. Returns features, the positions of the photos
    that decoded, and the files that did not. With ``towers``, each chunk's features go through
    both towers at once and only their embeddings are kept (first, second): 2 x 1280 floats a
    photo, the trunk features never all held.

    With decode threads (``thread_split``; ``decode_threads`` overrides it), chunk k+1 is decoded
    in the background while the trunk runs on chunk k, the trunk on the remaining threads.
    """
    decoders, trunk_threads = thread_split(embedder.device)
    if decode_threads is not None:
        decoders, trunk_threads = decode_threads, max(1, torch.get_num_threads() - decode_threads)
    starts = range(0, len(paths), chunk)
    rows, kept, skipped = Rows(len(paths)), [], []

    def add(start: int, images: torch.Tensor, ok: list[int], bad: list[photos.Skipped]) -> None:
        nonlocal kept, skipped
        if len(images):
            trunk_features = embedder.backbone(images)
            rows.add(embedder.embed(trunk_features) if towers else (trunk_features,))
        kept += [start + i for i in ok]
        skipped += bad

    progress = dict(desc="photos", unit="chunk", disable=len(paths) <= chunk)
    if not decoders:
        for start in console.progress(starts, **progress):
            add(start, *read_images(paths[start : start + chunk], preprocessing=embedder.net.preprocessing))
    else:
        budget = photos.decode_budget()  # as read_photos bounds its own pool's decodes
        attempt = photo_reader(embedder.net.preprocessing)
        with ThreadPoolExecutor(max_workers=decoders) as pool, torch_threads(trunk_threads):

            def submit(start: int) -> list:
                return [pool.submit(attempt, p, budget) for p in paths[start : start + chunk]]

            pending = submit(0) if len(paths) else []
            for k, start in enumerate(console.progress(starts, **progress)):
                results = [future.result() for future in pending]
                pending = submit(starts[k + 1]) if k + 1 < len(starts) else []
                images, ok, bad = photos.gather(results)
                add(start, photos.as_tensor(images), ok, bad)
    if towers:
        empty = tuple(torch.zeros(0, embedder.net.embedding_dim, device=embedder.device) for _ in range(2))
        return rows.result(empty), kept, skipped
    return rows.result((torch.zeros(0, embedder.net.feature_dim),))[0], kept, skipped
