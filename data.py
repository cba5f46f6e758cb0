"""Airbnb data: download, room labels from paths, the pair set, and the pair datasets.

The Kaggle dataset ``barelydedicated/airbnb-duplicate-image-detection`` unpacks to
``Airbnb Data/{Training Data,Test Data}/<room-type>/<city>_<room_id>_<n>.jpg``. Two photos show the
same room when room-type folder, city and room_id match.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import filelock
import imagehash
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

logger = logging.getLogger("samespace.data")

KAGGLE_DATASET = "barelydedicated/airbnb-duplicate-image-detection"
DATA_DIR_ENV = "SAMESPACE_DATA_DIR"
DEFAULT_DATA_DIR = "data"
DATASET_FOLDER = "Airbnb Data"
SPLITS = {"train": "Training Data", "test": "Test Data"}
COMPLETE_MARKER = ".samespace-download-complete"

IMAGE_SIZE = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The original upsamples positives with three fixed transforms, each growing the pair set x4
# (first image, second image, both, neither). An image therefore carries one of 2**3 variants, a
# bit per transform applied in this order, and a positive pair one of 8 x 8 = 64 combinations.
TRANSFORMS = ("hflip", "rotate+5", "rotate-5")
N_VARIANTS = 2 ** len(TRANSFORMS)
POSITIVE_UPSAMPLING = N_VARIANTS * N_VARIANTS
ROTATION_DEGREES = 5.0

NAME_PATTERN = re.compile(r"^(?P<city>.+)_(?P<room_id>[^_]+)_(?P<n>\d+)\.(?P<ext>[A-Za-z0-9]+)$")


class DataError(Exception):
    """A problem with the data that the user must fix; its message is one line."""


# --------------------------------------------------------------------------------------------
# Download


def resolve_data_dir(configured: str | os.PathLike | None = None, explicit: str | os.PathLike | None = None) -> Path:
    """The data directory: an explicit command-line value, else $SAMESPACE_DATA_DIR, else the
    config's value, else ``./data``.

    The environment variable beats the config so that a cluster can point every trial at one
    bind-mounted copy without editing the experiment configs.
    """
    chosen = explicit or os.environ.get(DATA_DIR_ENV) or configured or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()


def dataset_root(data_dir: Path) -> Path:
    return Path(data_dir) / DATASET_FOLDER


def is_complete(data_dir: Path) -> bool:
    """True when a previous download finished unzipping (it wrote the marker last)."""
    return (Path(data_dir) / COMPLETE_MARKER).is_file()


def _default_kaggle_api():
    # Importing the kaggle package authenticates once and prints a page of help when that fails.
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi

    return KaggleApi()


def _authenticate(api) -> None:
    """Authenticate without Kaggle's multi-paragraph help and its bare ``exit(1)``."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            api.authenticate()
    except (Exception, SystemExit) as exc:  # KaggleApi.authenticate() calls exit(1)
        raise DataError(
            "Kaggle credentials not found: set KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN, "
            "or put kaggle.json in ~/.kaggle/ (never inside the experiment folder, which Determined "
            f"uploads) ({type(exc).__name__})"
        ) from None


def download(data_dir: str | os.PathLike, api_factory: Callable[[], object] | None = None) -> Path:
    """Fetch and unzip the Kaggle dataset into ``data_dir`` unless a complete copy is there.

    A download is complete only once the marker is written after a successful unzip; anything
    short of that (an interrupted download or unzip) is fetched again. Concurrent callers (the
    trials of a search sharing one data directory) wait on a file lock instead of racing.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(data_dir / ".download.lock")):
        if is_complete(data_dir):
            return dataset_root(data_dir)
        api = (api_factory or _default_kaggle_api)()
        _authenticate(api)
        logger.info("downloading %s into %s", KAGGLE_DATASET, data_dir)
        try:
            api.dataset_download_files(KAGGLE_DATASET, path=str(data_dir), unzip=True, quiet=False, force=True)
        except Exception as exc:
            raise DataError(f"Kaggle download of {KAGGLE_DATASET} failed: {exc}") from None
        root = dataset_root(data_dir)
        missing = [name for name in SPLITS.values() if not (root / name).is_dir()]
        if missing:
            raise DataError(f"the download has no {', '.join(missing)} under {root}")
        files = sum(1 for p in root.rglob("*") if p.is_file())
        (data_dir / COMPLETE_MARKER).write_text(json.dumps({"dataset": KAGGLE_DATASET, "files": files}))
        return root


def ensure_dataset(data_dir: str | os.PathLike, allow_download: bool = True) -> Path:
    """The dataset root, downloading it first when allowed and needed."""
    data_dir = Path(data_dir)
    root = dataset_root(data_dir)
    if is_complete(data_dir) or (root.is_dir() and not allow_download):
        # A copy placed by hand (no marker) is used as is when downloads are off.
        return root
    if not allow_download:
        raise DataError(
            f"no dataset under {root}; fetch it with `python data.py --data-dir {data_dir}` "
            "or allow downloads (data.download: true)"
        )
    if root.is_dir():
        logger.warning(
            "%s has no complete-download marker: downloading again (data.download: false uses it as is)", root
        )
    return download(data_dir)


# --------------------------------------------------------------------------------------------
# Photos and labels


@dataclasses.dataclass(frozen=True)
class Photo:
    """One listing photo and the room it shows."""

    path: Path
    room_type: str
    city: str
    room_id: str

    @property
    def room(self) -> tuple[str, str, str]:
        return (self.room_type, self.city, self.room_id)


@dataclasses.dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


def parse_photo(path: Path, room_type: str) -> Photo | None:
    """The photo's room from ``<city>_<room_id>_<n>.<ext>``, or None when the name does not parse."""
    match = NAME_PATTERN.match(path.name)
    if match is None:
        return None
    return Photo(path=path, room_type=room_type, city=match["city"], room_id=match["room_id"])


def scan_split(split_dir: str | os.PathLike) -> tuple[list[Photo], list[Skipped]]:
    """The photos of one split, sorted by path, and the files that cannot be labelled."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"split folder not found: {split_dir}")
    photos, skipped = [], []
    for path in sorted(p for p in split_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(split_dir)
        if len(relative.parts) != 2:
            skipped.append(Skipped(path, "not inside a <room-type> folder"))
            continue
        photo = parse_photo(path, room_type=relative.parts[0])
        if photo is None:
            skipped.append(Skipped(path, "name is not <city>_<room_id>_<n>.<ext>"))
        else:
            photos.append(photo)
    return photos, skipped


def room_labels(photos: Sequence[Photo]) -> np.ndarray:
    """An integer per photo; equal integers mean the same room."""
    codes: dict[tuple[str, str, str], int] = {}
    return np.array([codes.setdefault(p.room, len(codes)) for p in photos], dtype=np.int64)


def report_skipped(skipped: Sequence[Skipped], what: str = "files", examples: int = 5) -> None:
    """Log how many files were skipped and why, with the first few examples."""
    if not skipped:
        return
    shown = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:examples])
    more = f" (+{len(skipped) - examples} more)" if len(skipped) > examples else ""
    logger.warning("skipped %d %s: %s%s", len(skipped), what, shown, more)


# --------------------------------------------------------------------------------------------
# Images


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode; transparency is composited onto white rather than dropped to black."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of letting PIL clip at 255.
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        image = Image.fromarray((array / peak * 255).round().astype(np.uint8))
    return image.convert("RGB")


def read_photo(path: str | os.PathLike, size: int = IMAGE_SIZE) -> np.ndarray:
    """A photo as a ``size x size x 3`` uint8 array: EXIF orientation applied, RGB, bilinear resize.

    Raises ``DataError`` (one line) for unreadable, truncated or non-image files.
    """
    try:
        with Image.open(path) as image:
            image.load()  # decodes fully, so a truncated file fails here and not later
            image = ImageOps.exif_transpose(image)
            image = to_rgb(image).resize((size, size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8).copy()
    except UnidentifiedImageError:
        raise DataError(f"cannot read {Path(path).name}: not an image in a format PIL reads") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {Path(path).name}: {reason}") from None


def read_photos(
    paths: Sequence[Path], size: int = IMAGE_SIZE, desc: str = "reading photos"
) -> tuple[np.ndarray, list[int], list[Skipped]]:
    """Decode photos in parallel (PIL releases the GIL).

    Returns the images that decoded (``(M, size, size, 3)`` uint8), their positions in ``paths``,
    and the ones that did not.
    """

    def attempt(path: Path) -> np.ndarray | Skipped:
        try:
            return read_photo(path, size)
        except DataError as exc:
            return Skipped(path, str(exc))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(tqdm(pool.map(attempt, paths), total=len(paths), desc=desc, leave=False))
    kept = [i for i, r in enumerate(results) if not isinstance(r, Skipped)]
    skipped = [r for r in results if isinstance(r, Skipped)]
    images = np.stack([results[i] for i in kept]) if kept else np.zeros((0, size, size, 3), np.uint8)
    return images, kept, skipped


@dataclasses.dataclass
class Split:
    """A split's readable photos, their decoded 256x256 images (N, 3, H, W uint8) and room labels."""

    photos: list[Photo]
    images: torch.Tensor
    rooms: np.ndarray
    skipped: list[Skipped]

    def __len__(self) -> int:
        return len(self.photos)


def load_split(split_dir: str | os.PathLike, size: int = IMAGE_SIZE) -> Split:
    """Scan, label and decode one split; unlabelled or unreadable files are skipped and reported."""
    photos, skipped = scan_split(split_dir)
    array, kept, unreadable = read_photos([p.path for p in photos], size, desc=f"reading {Path(split_dir).name}")
    photos = [photos[i] for i in kept]
    skipped = skipped + unreadable
    report_skipped(skipped, what=f"files in {split_dir}")
    if not photos:
        raise DataError(f"no readable photos named <city>_<room_id>_<n>.<ext> under {split_dir}")
    images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    return Split(photos=photos, images=images, rooms=room_labels(photos), skipped=skipped)


def apply_variant(images: torch.Tensor, variant: int) -> torch.Tensor:
    """Apply the variant's transforms (hflip, +5 deg, -5 deg, in that order) to uint8 image(s)."""
    if variant & 1:
        images = TF.horizontal_flip(images)
    if variant & 2:
        images = TF.rotate(images, ROTATION_DEGREES, interpolation=TF.InterpolationMode.BILINEAR)
    if variant & 4:
        images = TF.rotate(images, -ROTATION_DEGREES, interpolation=TF.InterpolationMode.BILINEAR)
    return images


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to the network's input: scale to [0, 1] first, then ImageNet normalisation."""
    return TF.normalize(images.float().div(255.0), IMAGENET_MEAN, IMAGENET_STD)


def model_input(images: torch.Tensor, variant: int = 0) -> torch.Tensor:
    return normalise(apply_variant(images, variant))


# --------------------------------------------------------------------------------------------
# Hashes and the pair set


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
    v1, v2 = np.meshgrid(np.arange(N_VARIANTS), np.arange(N_VARIANTS), indexing="ij")
    n, k = len(first), POSITIVE_UPSAMPLING
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
    for start in tqdm(starts, desc="sampling negatives", disable=not progress, leave=False):
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
        logger.warning("only %d negative pairs for %d positives: taking all of them", available, count)
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


# --------------------------------------------------------------------------------------------
# Datasets


class ImagePairDataset(torch.utils.data.Dataset):
    """(image1, image2, label) with each pair's transforms applied lazily, per item."""

    def __init__(self, images: torch.Tensor, pairs: PairSet):
        self.images = images
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.pairs
        first = model_input(self.images[p.first[index]], int(p.first_variant[index]))
        second = model_input(self.images[p.second[index]], int(p.second_variant[index]))
        return first, second, torch.tensor(float(p.label[index]))


def expected_pair_count(group_sizes: Sequence[int]) -> int:
    """2 * 64 * sum(g_i^2): the epoch length for duplicate groups of these sizes."""
    return 2 * POSITIVE_UPSAMPLING * int(sum(g * g for g in group_sizes))


def main(argv: Sequence[str] | None = None) -> int:
    """``python data.py [--data-dir DIR]``: download the dataset once, e.g. into a shared folder."""
    import argparse

    parser = argparse.ArgumentParser(description="Download the Airbnb duplicate-image dataset from Kaggle.")
    parser.add_argument("--data-dir", help=f"target folder (default: ${DATA_DIR_ENV}, else ./{DEFAULT_DATA_DIR})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        root = download(resolve_data_dir(explicit=args.data_dir))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, folder in SPLITS.items():
        photos, skipped = scan_split(root / folder)
        print(f"{key}: {len(photos)} photos, {len(skipped)} other files, in {root / folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
