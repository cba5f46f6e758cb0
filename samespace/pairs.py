"""The balanced pair set of a split: wavelet hashes, every positive pair upsampled, and as many
negatives drawn with weight exp(-Hamming distance of the hashes), as the original.

For duplicate groups of sizes g_i a split gives ``64 * sum(g_i^2)`` positives and as many
negatives: the Airbnb training split (631 photos) gives 199,552 pairs an epoch.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import imagehash
import numpy as np
import torch
from PIL import Image

from samespace import console, transforms
from samespace.errors import plural

logger = logging.getLogger("samespace.pairs")


def positive_upsampling() -> int:
    """Copies of each positive pair: every variant of the first photo with every variant of the
    second (64 for the three transforms; read when used, so it follows ``transforms.TRANSFORMS``)."""
    return transforms.N_VARIANTS**2


def wavelet_hashes(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """``imagehash.whash`` of each 256x256 image, packed into one uint64 per image."""
    array = images.permute(0, 2, 3, 1).numpy() if isinstance(images, torch.Tensor) else images
    bits = np.stack([imagehash.whash(Image.fromarray(image)).hash.reshape(-1) for image in array])
    return pack_bits(bits)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(N, 64) booleans to N uint64 values."""
    return np.packbits(bits.astype(bool), axis=1).view(">u8").reshape(-1).astype(np.uint64)


_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits per uint64 (``np.bitwise_count`` on numpy >= 2, a byte table on older images)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values).astype(np.uint8)
    as_bytes = np.ascontiguousarray(values).view(np.uint8).reshape(*values.shape, 8)
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise Hamming distance of packed 64-bit hashes (broadcasting)."""
    return popcount(np.bitwise_xor(a, b))


@dataclasses.dataclass
class PairSet:
    """Pairs of image indices with the variant of each side and the label (1 = same room)."""

    first: np.ndarray
    second: np.ndarray
    first_variant: np.ndarray
    second_variant: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    @property
    def positives(self) -> int:
        return int(self.label.sum())

    @staticmethod
    def concat(parts: Sequence["PairSet"]) -> "PairSet":
        fields = [f.name for f in dataclasses.fields(PairSet)]
        return PairSet(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in fields})


def positive_pairs(rooms: np.ndarray, self_pairs: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered pair of photos of the same room (``first``, ``second`` index arrays)."""
    order = np.argsort(rooms, kind="stable")
    _, starts, counts = np.unique(rooms[order], return_index=True, return_counts=True)
    firsts, seconds = [], []
    for start, count in zip(starts, counts):
        members = order[start : start + count]
        a, b = np.meshgrid(members, members, indexing="ij")
        keep = np.ones_like(a, dtype=bool) if self_pairs else a != b
        firsts.append(a[keep])
        seconds.append(b[keep])
    return np.concatenate(firsts), np.concatenate(seconds)


def upsample(first: np.ndarray, second: np.ndarray) -> PairSet:
    """Each pair in all 64 variant combinations, labelled positive."""
    variants = np.arange(transforms.N_VARIANTS)
    v1, v2 = np.meshgrid(variants, variants, indexing="ij")
    n, k = len(first), positive_upsampling()
    return PairSet(
        first=np.repeat(first, k),
        second=np.repeat(second, k),
        first_variant=np.tile(v1.reshape(-1), n).astype(np.uint8),
        second_variant=np.tile(v2.reshape(-1), n).astype(np.uint8),
        label=np.ones(n * k, dtype=np.uint8),
    )


def negative_candidates(rooms: np.ndarray) -> int:
    """How many ordered pairs show different rooms."""
    _, counts = np.unique(rooms, return_counts=True)
    return int(len(rooms) ** 2 - np.sum(counts.astype(np.int64) ** 2))


def sample_negatives_exact(rooms: np.ndarray, hashes: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """The original's draw: every negative pair in memory, ``RandomState(seed).choice`` without
    replacement with probability proportional to exp(-Hamming distance), as ``DataFrame.sample``
    does. Returns flat pair indices ``first * N + second``, sorted. Memory O(N^2).
    """
    n = len(rooms)
    flat = np.flatnonzero((rooms[:, None] != rooms[None, :]).reshape(-1))
    distance = hamming(hashes[flat // n], hashes[flat % n]).astype(np.float64)
    weight = np.exp(-distance)
    chosen = np.random.RandomState(seed).choice(len(flat), size=count, replace=False, p=weight / weight.sum())
    return np.sort(flat[chosen])


def sample_negatives_streaming(
    rooms: np.ndarray, hashes: np.ndarray, count: int, seed: int = 0, block: int = 1 << 22, progress: bool = False
) -> np.ndarray:
    """The same distribution as ``sample_negatives_exact`` in one pass over blocks of rows.

    Weighted sampling without replacement equals keeping the ``count`` smallest keys
    ``E / w`` with ``E ~ Exp(1)`` (Efraimidis-Spirakis), so each block draws its keys, and a running
    top-``count`` keeps the winners: memory O(block + count), never O(N^2). Keys are compared as
    ``log E + distance`` (the log of ``E / exp(-distance)``), which cannot overflow.
    Returns flat pair indices ``first * N + second``, sorted.
    """
    n = len(rooms)
    rows_per_block = max(1, block // max(n, 1))
    rng = np.random.Generator(np.random.PCG64(seed))
    best_keys = np.empty(0, np.float64)
    best_index = np.empty(0, np.int64)
    starts = range(0, n, rows_per_block)
    for start in console.progress(starts, desc="sampling negatives", disable=not progress):
        stop = min(n, start + rows_per_block)
        distance = hamming(hashes[start:stop, None], hashes[None, :])
        # Draw for every cell, same-room ones included, so the stream does not depend on labels.
        keys = np.log(rng.standard_exponential(distance.shape)) + distance
        keys[rooms[start:stop, None] == rooms[None, :]] = np.inf
        keys = keys.reshape(-1)
        if len(best_keys) >= count:
            candidates = np.flatnonzero(keys < best_keys.max())
        else:
            candidates = np.flatnonzero(np.isfinite(keys))
        if len(candidates) == 0:
            continue
        best_keys = np.concatenate([best_keys, keys[candidates]])
        best_index = np.concatenate([best_index, candidates + start * n])
        if len(best_keys) > count:
            keep = np.argpartition(best_keys, count - 1)[:count]
            best_keys, best_index = best_keys[keep], best_index[keep]
    return np.sort(best_index)


SAMPLERS = {"exact": sample_negatives_exact, "streaming": sample_negatives_streaming}


def build_pairs(
    rooms: np.ndarray,
    hashes: np.ndarray,
    *,
    seed: int = 0,
    self_pairs: bool = True,
    sampler: str = "streaming",
) -> PairSet:
    """The original's balanced pair set.

    Positives: every ordered same-room pair (self-pairs included unless ``self_pairs=False``) in all
    64 variant combinations. Negatives: as many different-room pairs, untransformed, drawn without
    replacement with weight exp(-Hamming distance of the wavelet hashes). For duplicate groups of
    sizes g_i that is 64 * sum(g_i^2) of each.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, not {sampler!r}")
    rooms = np.asarray(rooms)
    first, second = positive_pairs(rooms, self_pairs=self_pairs)
    positives = upsample(first, second)
    available = negative_candidates(rooms)
    count = len(positives)
    if available < count:
        if available:
            have, need = plural(available, "negative pair"), plural(count, "positive")
            logger.warning("only %s for %s: taking all of them", have, need)
        else:
            logger.warning("no negative pairs for %s: all photos show one room", plural(count, "positive"))
        count = available
    flat = SAMPLERS[sampler](rooms, hashes, count, seed=seed) if count else np.empty(0, np.int64)
    n = len(rooms)
    negatives = PairSet(
        first=flat // n,
        second=flat % n,
        first_variant=np.zeros(count, np.uint8),
        second_variant=np.zeros(count, np.uint8),
        label=np.zeros(count, np.uint8),
    )
    return PairSet.concat([positives, negatives])


def expected_pair_count(group_sizes: Sequence[int]) -> int:
    """2 * 64 * sum(g_i^2): the epoch length for duplicate groups of these sizes."""
    return 2 * positive_upsampling() * int(sum(g * g for g in group_sizes))
