"""Decoding photo files: any format and mode PIL reads, EXIF orientation applied, RGB, resized.

Memory: a photo much larger than the output is box-reduced (``Image.reduce``) in horizontal bands
before the final bilinear resize, converting each band to RGB on the way, so that beyond the
decoded pixels themselves a decode holds only one band and the reduced image. With ``draft=True``
(dedup, compare; never training) a JPEG is also decoded at 1/2 to 1/8 scale by the codec (DCT
scaling). ``read_photos`` lets concurrent decodes hold at most half the available memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from samespace import console
from samespace.errors import DataError, first_line

IMAGE_SIZE = 256
# A photo is box-reduced only while it stays at least this many times the output on each axis, so
# the final bilinear resize still averages over >= 4 source pixels per output pixel: photos under
# 2 * 4 * 256 = 2048 pixels on an axis decode exactly as a plain bilinear resize, and larger ones
# differ by well under one uint8 level on average (tests/test_photos.py states the bound).
REDUCING_GAP = 4
# Rows of a large photo converted to RGB at a time, as pixels (about 16 MB as RGBA).
BAND_PIXELS = 1 << 22

# Anything that changes read_photo's output (draft=False) must change this string: it keys the
# trunk-feature cache. v2: 16-bit photos scaled by 65535, 32-bit/float by their range; box
# reduction of photos far larger than the output.
# Modes where box-averaging commutes with to_rgb (identity, channel copy, or a linear scale).
REDUCE_FIRST = ("RGB", "L", "I", "F")

PREPROCESSING = f"read_photo:v2:exif,rgb,reduce>={REDUCING_GAP}x,bilinear{IMAGE_SIZE}"

ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # as PIL.ImageOps.exif_transpose, applied to the reduced image rather than the full-size one


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A file left out, and why."""

    path: Path
    reason: str


def finite_range(image: Image.Image) -> tuple[float, float]:
    """Smallest and largest finite value of a 32-bit integer or float image, a band at a time."""
    low, high = math.inf, -math.inf
    rows = max(1, BAND_PIXELS // max(1, image.width))
    for top in range(0, image.height, rows):
        band = np.asarray(image.crop((0, top, image.width, min(image.height, top + rows))), dtype=np.float64)
        band = band[np.isfinite(band)]
        if band.size:
            low, high = min(low, float(band.min())), max(high, float(band.max()))
    return (low, high) if low <= high else (0.0, 0.0)


def to_rgb(image: Image.Image, value_range: tuple[float, float] | None = None) -> Image.Image:
    """RGB from any mode.

    Transparency is composited onto white rather than dropped to black. 16-bit greyscale is
    scaled by 65535, its full scale, so a dark 16-bit photo stays dark. 32-bit integer (``I``) and
    float (``F``) images have no fixed white level (HDR, scientific or depth data, negative
    values), so their own finite range ``value_range`` (default: the image's) maps to 0..255;
    PIL would instead clip them to 0..255, turning a 0..1 float photo black and wrapping
    negatives. Non-finite floats become black (NaN, -inf) or white (+inf).
    """
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16"):
        levels = np.asarray(image, dtype=np.float32) * np.float32(255 / 65535)
        image = Image.fromarray(np.rint(levels).astype(np.uint8))
    elif image.mode in ("I", "F"):
        low, high = value_range if value_range is not None else finite_range(image)
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 / (high - low) if high > low else 0.0
        with np.errstate(invalid="ignore", over="ignore"):
            levels = np.nan_to_num((array - low) * scale, nan=0.0, posinf=255.0, neginf=0.0)
        image = Image.fromarray(np.rint(np.clip(levels, 0, 255)).astype(np.uint8))
    return image.convert("RGB")


class UnreadablePhoto(DataError):
    """A photo file that cannot be decoded; ``reason`` says why without repeating the name."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"cannot read {name}: {reason}")
        self.reason = reason


def not_a_regular_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a regular file (a FIFO would block ``open`` forever), or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return "broken link: its target is missing" if os.path.islink(path) else (exc.strerror or first_line(exc))
    if stat.S_ISREG(mode):
        return None
    return "not a regular file but " + (
        "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
    )


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for reading in binary, refused (``OSError`` whose message is the reason)
    unless the opened descriptor is a regular file: opened non-blocking, so a FIFO or device
    swapped in after any earlier check cannot block, and re-checked with ``fstat``, so what is
    read is what was checked. Reads are then bounded by the file's size."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise OSError(not_a_regular_file(path) or exc.strerror or first_line(exc)) from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(
                "not a regular file but "
                + ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket")
            )
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(descriptor, True)  # a regular file: ordinary reads from here on
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


# Deflate encodes at most 258 bytes in 2 bits (one length-258, distance-1 match): no complete
# stream is smaller than 1/1032 of what it decodes to.
DEFLATE_MAX_RATIO = 1032
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type


def png_too_short(handle: BinaryIO) -> bool:
    """True when a PNG's image data (IDAT chunks) is too short to hold the size its header
    declares: a stream that ends early decodes without error in PIL, the missing rows blank."""
    handle.seek(8)
    header = handle.read(25)
    if len(header) < 25 or header[4:8] != b"IHDR":
        return False  # not a PNG PIL would read as one: PIL says why
    width, height = int.from_bytes(header[8:12], "big"), int.from_bytes(header[12:16], "big")
    bits = header[16] * PNG_CHANNELS.get(header[17], 4)
    pixel_bytes = height * -(-width * bits // 8)  # a lower bound, interlaced or not (no filter bytes)
    data, position = 0, 33
    while True:
        handle.seek(position)
        chunk = handle.read(8)
        if len(chunk) < 8 or chunk[4:8] == b"IEND":
            break
        length = int.from_bytes(chunk[:4], "big")
        data += length if chunk[4:8] == b"IDAT" else 0
        position += 12 + length
    handle.seek(0)
    return (data + 1) * DEFLATE_MAX_RATIO < pixel_bytes


def reduction(size: tuple[int, int], target: int) -> tuple[int, int]:
    """Integer box-reduction factors per axis that keep at least REDUCING_GAP x ``target`` pixels."""
    return tuple(max(1, side // (REDUCING_GAP * target)) for side in size)  # type: ignore[return-value]


Box = tuple[float, float, float, float]


def shrink_to_rgb(image: Image.Image, target: int, box: Box | None = None) -> tuple[Image.Image, Box]:
    """An RGB image at most ~2 x REDUCING_GAP x ``target`` on each axis, and the box of the photo
    in its pixels (fractional: a partial last reduction box is one whole pixel, and resizing
    from this box keeps the geometry exact, as ``PIL.Image.resize(reducing_gap=...)`` does).

    Modes whose conversion to RGB is linear per pixel are reduced first and converted small.
    Others (transparency, palettes, CMYK, 16-bit) are converted and reduced band by band (band
    heights a multiple of the vertical factor, so the result equals reducing the whole converted
    image); either way there is never a full-size converted copy.
    """
    box = box or (0.0, 0.0, float(image.width), float(image.height))
    factors = reduction(image.size, target)
    if factors == (1, 1):
        return to_rgb(image), box
    fx, fy = factors
    box = (box[0] / fx, box[1] / fy, box[2] / fx, box[3] / fy)
    value_range = finite_range(image) if image.mode in ("I", "F") else None
    if image.mode in REDUCE_FIRST:
        return to_rgb(image.reduce(factors), value_range), box
    width, height = image.size
    reduced = Image.new("RGB", (-(-width // fx), -(-height // fy)))
    rows = max(1, BAND_PIXELS // (width * fy)) * fy
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(height, top + rows)))
        reduced.paste(to_rgb(band, value_range).reduce(factors), (0, top // fy))
    return reduced, box


def decode_bytes(image: Image.Image) -> int:
    """Estimated peak bytes of decoding an opened (not yet loaded) image with ``read_photo``:
    PIL's pixels (1, 2 or 4 bytes each) plus the working band, converted and reduced."""
    pixels = image.width * image.height
    per_pixel = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    return pixels * per_pixel + min(pixels, BAND_PIXELS) * 16


class MemoryBudget:
    """Bytes that concurrent decodes may hold. Decodes are admitted first come, first served,
    each once its estimate fits; one alone is always admitted, however large."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.next_ticket = 0
        self.serving = 0
        self.condition = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        with self.condition:
            ticket = self.next_ticket
            self.next_ticket += 1
            self.condition.wait_for(
                lambda: self.serving == ticket and (self.used == 0 or self.used + nbytes <= self.limit)
            )
            self.serving += 1
            self.used += nbytes
            self.condition.notify_all()
        try:
            yield
        finally:
            with self.condition:
                self.used -= nbytes
                self.condition.notify_all()


def available_memory() -> int:
    """Bytes of memory available to this process: MemAvailable, or the cgroup's remaining limit
    if smaller (containers), else free physical pages; 2 GiB when none can be read."""
    candidates = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            candidates.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    if not candidates:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return max(min(candidates), 0) if candidates else 2 << 30


def read_photo(
    path: str | os.PathLike, size: int = IMAGE_SIZE, draft: bool = False, budget: MemoryBudget | None = None
) -> np.ndarray:
    """A photo as a ``size x size x 3`` uint8 array: EXIF orientation applied, RGB, bilinear resize.

    ``draft=True`` lets the JPEG codec decode a large photo at a reduced scale: faster and smaller,
    but not the exact pixels, so training (and the feature cache) never uses it. ``budget`` bounds
    the memory of concurrent decodes. Raises ``DataError`` (one line) for unreadable, truncated,
    non-image or too-large files.
    """
    name = Path(path).name
    try:
        with open_regular(path) as handle, Image.open(handle) as image:
            if image.format == "PNG" and png_too_short(handle):
                raise UnreadablePhoto(name, f"truncated: too little image data for {image.width}x{image.height}")
            box = None
            if draft and image.format == "JPEG":
                drafted = image.draft(None, (REDUCING_GAP * size, REDUCING_GAP * size))
                box = drafted[1] if drafted else None
            with budget.reserve(decode_bytes(image)) if budget else contextlib.nullcontext():
                image.load()  # decodes fully, so a truncated file fails here and not later
                orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
                small, box = shrink_to_rgb(image, size, box)
        upright = ORIENTATION_FIX.get(orientation)
        if box == (0, 0, *small.size):  # decoded whole: exactly PIL's exif_transpose, then resize
            small = small.transpose(upright) if upright is not None else small
            resized = small.resize((size, size), Image.BILINEAR)
        else:  # reduced: resize first, so that only the small square is transposed
            resized = small.resize((size, size), Image.BILINEAR, box=box)
            resized = resized.transpose(upright) if upright is not None else resized
        return np.asarray(resized, dtype=np.uint8).copy()
    except UnidentifiedImageError:
        raise UnreadablePhoto(name, "not an image in a format PIL reads") from None
    except MemoryError:
        raise UnreadablePhoto(name, "not enough memory to decode it") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnreadablePhoto(name, first_line(exc)) from None


def read_thumbnail(path: str | os.PathLike, size: int) -> Image.Image:
    """An upright RGB thumbnail, its longer side ``size`` (or less), decoded in bounded memory
    (JPEG draft, box reduction) for reports. Raises PIL's errors (callers show readable photos)."""
    with open_regular(path) as handle, Image.open(handle) as image:
        width, height = image.size
        scale = min(1.0, size / max(width, height))
        fitted = (max(1, round(width * scale)), max(1, round(height * scale)))
        drafted = image.draft(None, fitted) if image.format == "JPEG" else None
        image.load()
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        small, box = shrink_to_rgb(image, max(fitted), drafted[1] if drafted else None)
    thumbnail = small.resize(fitted, Image.BILINEAR, box=box)
    return thumbnail.transpose(ORIENTATION_FIX[orientation]) if orientation in ORIENTATION_FIX else thumbnail


def attempt_photo(
    path: Path, size: int = IMAGE_SIZE, draft: bool = False, budget: MemoryBudget | None = None
) -> np.ndarray | Skipped:
    """``read_photo``, with an unreadable file returned as ``Skipped`` rather than raised."""
    try:
        return read_photo(path, size, draft=draft, budget=budget)
    except UnreadablePhoto as exc:
        return Skipped(path, exc.reason)


def gather(
    results: Sequence[np.ndarray | Skipped], size: int = IMAGE_SIZE
) -> tuple[np.ndarray, list[int], list[Skipped]]:
    """``attempt_photo`` results as the images that decoded (``(M, size, size, 3)`` uint8), their
    positions in ``results``, and the files that did not."""
    kept = [i for i, r in enumerate(results) if not isinstance(r, Skipped)]
    skipped = [r for r in results if isinstance(r, Skipped)]
    images = np.stack([results[i] for i in kept]) if kept else np.zeros((0, size, size, 3), np.uint8)
    return images, kept, skipped


def decode_budget() -> MemoryBudget:
    """Concurrent decodes stay within half the memory available now."""
    return MemoryBudget(available_memory() // 2)


def read_photos(
    paths: Sequence[Path],
    size: int = IMAGE_SIZE,
    desc: str = "reading photos",
    draft: bool = False,
    attempt: Callable[[Path, MemoryBudget], np.ndarray | Skipped] | None = None,
) -> tuple[np.ndarray, list[int], list[Skipped]]:
    """Decode photos in parallel (PIL releases the GIL), within half the available memory.

    Returns the images that decoded (``(M, size, size, 3)`` uint8), their positions in ``paths``,
    and the ones that did not. ``attempt(path, budget)`` replaces ``attempt_photo`` (the
    original's reader, ``samespace.original.attempt_photo``).
    """
    budget = decode_budget()
    attempt = attempt or (lambda path, budget: attempt_photo(path, size, draft, budget))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        attempts = pool.map(lambda path: attempt(path, budget), paths)
        results = list(console.progress(attempts, total=len(paths), desc=desc))
    return gather(results, size)


def as_tensor(images: np.ndarray) -> "torch.Tensor":  # noqa: F821
    """(N, H, W, 3) uint8 arrays as the (N, 3, H, W) uint8 tensor the network's transforms take."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
