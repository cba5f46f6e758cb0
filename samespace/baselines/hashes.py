"""imagededup 0.3.3's four 64-bit hashes (AHash, DHash, PHash, WHash), bit for bit, without
importing imagededup (its ``methods`` package builds a CNN and downloads weights at import).

As imagededup: the photo is opened with PIL, any mode other than RGB goes through RGBA to RGB
(alpha dropped), it is resized with Lanczos to the hash's size, *then* made greyscale ("L");
EXIF orientation is not applied. Two photos are duplicates at Hamming distance <= 10 bits (its
default for all four). ``tests/imagededup/hashes.json`` pins imagededup's own output
(``benchmarks/imagededup_hashes.py`` regenerates it)."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pywt
from PIL import Image, UnidentifiedImageError
from scipy.fftpack import dct  # imagededup's DCT: the legacy interface, for identical floats

from samespace import console, photos
from samespace.errors import first_line
from samespace.photos import Skipped

BITS = 64
DEFAULT_DISTANCE = 10  # imagededup's max_distance_threshold default
# Resize target (width, height) of each hash, as PIL's Image.resize takes it.
SIZES = {"phash": (32, 32), "dhash": (9, 8), "whash": (256, 256), "ahash": (8, 8)}
METHODS = tuple(SIZES)


def grey_pixels(image: Image.Image, method: str) -> np.ndarray:
    """imagededup's load_image + preprocess_image: RGB, Lanczos resize, then greyscale, uint8."""
    if image.mode != "RGB":
        image = image.convert("RGBA").convert("RGB")  # imagededup's route: alpha is dropped
    return np.array(image.resize(SIZES[method], Image.LANCZOS).convert("L")).astype("uint8")


def hash_bits(pixels: np.ndarray, method: str) -> np.ndarray:
    """The 8x8 boolean hash matrix of greyscale ``pixels`` (as ``grey_pixels`` returns them)."""
    if method == "ahash":
        return pixels >= np.mean(pixels)
    if method == "dhash":
        return pixels[:, 1:] > pixels[:, :-1]
    if method == "phash":
        coefficients = dct(dct(pixels, axis=0), axis=1)[:8, :8]
        return coefficients >= np.median(coefficients.flatten()[1:])  # median without the DC term
    if method == "whash":
        low = pywt.wavedec2(data=pixels / 255, wavelet="haar", level=5)[0]  # 256 / 2**5 = 8x8 LL band
        return low >= np.median(low.flatten())
    raise ValueError(f"unknown hash {method!r}: one of {', '.join(METHODS)}")


def to_hex(bits: np.ndarray) -> str:
    """imagededup's hash string: the bits packed row by row, 16 hex digits."""
    return "".join(f"{byte:02x}" for byte in np.packbits(bits))


def image_hash(image: Image.Image, method: str) -> str:
    """One photo's hash as imagededup writes it."""
    return to_hex(hash_bits(grey_pixels(image, method), method))


def file_hash(path: Path, method: str, budget: photos.MemoryBudget | None = None) -> str | Skipped:
    """The hash of a photo file, or ``Skipped`` (with the reason) when it cannot be decoded."""
    try:  # open_regular: a FIFO or device swapped in after the listing is refused, never waited on
        with photos.open_regular(path) as handle, Image.open(handle) as image:
            if image.format == "PNG" and photos.png_too_short(handle):
                return Skipped(path, f"truncated: too little image data for {image.width}x{image.height}")
            with budget.reserve(photos.decode_bytes(image)) if budget else contextlib.nullcontext():
                image.load()  # decodes fully, so a truncated file fails here
                return image_hash(image, method)
    except UnidentifiedImageError:
        return Skipped(path, "not an image in a format PIL reads")
    except MemoryError:
        return Skipped(path, "not enough memory to decode it")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return Skipped(path, first_line(exc))


def file_hashes(paths: Sequence[Path], method: str) -> tuple[list[str], list[int], list[Skipped]]:
    """Hashes of the files that decoded, their positions in ``paths``, and the ones that did not;
    decoded in parallel (PIL releases the GIL) within half the available memory."""
    budget = photos.decode_budget()
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        attempts = pool.map(lambda path: file_hash(path, method, budget), paths)
        results = list(console.progress(attempts, total=len(paths), desc=f"{method} of photos"))
    kept = [i for i, r in enumerate(results) if not isinstance(r, Skipped)]
    return [results[i] for i in kept], kept, [r for r in results if isinstance(r, Skipped)]


def as_integers(hashes: Sequence[str]) -> np.ndarray:
    """Hash strings as uint64 values, for vectorised Hamming distances."""
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def hamming(values: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Hamming distances (bits that differ) of the pairs ``(first[i], second[i])`` of ``values``."""
    return np.bitwise_count(values[first] ^ values[second]).astype(np.int64)


def close_pairs(values: np.ndarray, max_distance: int, rows: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``a < b`` within ``max_distance`` bits, with its distance: brute force as
    imagededup does, ``rows`` photos against all at a time, so memory stays ``rows * n``."""
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start in range(0, len(values), rows):
        block = values[start : start + rows]
        distances = np.bitwise_count(block[:, None] ^ values[None, :])
        a, b = np.nonzero(distances <= max_distance)
        a += start
        upper = a < b
        found.append((a[upper], b[upper], distances[a[upper] - start, b[upper]].astype(np.int64)))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return tuple(np.concatenate(parts).astype(np.int64) for parts in zip(*found))  # type: ignore[return-value]


def similarity(distances: np.ndarray) -> np.ndarray:
    """Bits that agree, as a fraction: 1.0 for equal hashes (higher = more alike, as SameSpace's
    scores), exact in float64 because 64 is a power of two."""
    return 1.0 - np.asarray(distances, dtype=np.float64) / BITS
