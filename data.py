"""The Airbnb data: Kaggle download, room labels from paths, splits, and the trial's pair datasets.

The Kaggle dataset ``barelydedicated/airbnb-duplicate-image-detection`` unpacks to
``Airbnb Data/{Training Data,Test Data}/<room-type>/<city>_<room_id>_<n>.jpg``. Two photos show the
same room when room-type folder, city and room_id match.

    python data.py [--data-dir DIR]    download once, e.g. into a folder the trials share
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
from pathlib import Path
from typing import Any, Callable, Sequence

import filelock
import numpy as np
import torch

from samespace import features, pairs, photos, transforms
from samespace.errors import DataError, first_line, plural
from samespace.photos import IMAGE_SIZE, Skipped
from samespace.settings import DATA_DIR_ENV, DEFAULT_DATA_DIR, DataSettings, resolve_data_dir

logger = logging.getLogger("samespace.data")

KAGGLE_DATASET = "barelydedicated/airbnb-duplicate-image-detection"
DATASET_FOLDER = "Airbnb Data"
SPLITS = {"train": "Training Data", "test": "Test Data"}
COMPLETE_MARKER = ".samespace-download-complete"

NUMBER = re.compile(r"[0-9]+")
NAME_FORMAT = "<city>_<room_id>_<n>.<ext>"


# --------------------------------------------------------------------------------------------
# Download


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
        # Its exit(1) means none were found; any other exception names what is wrong with them.
        found = "" if isinstance(exc, SystemExit) else f" ({first_line(exc, 100)})"
        raise DataError(
            f"Kaggle credentials not found{found}: set KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN, "
            "or put kaggle.json in ~/.kaggle/ (never inside the experiment folder, which Determined "
            "uploads)"
        ) from None


def check_credentials(api_factory: Callable[[], object] | None = None) -> None:
    """Raise DataError when no Kaggle credentials are configured; reads them, downloads nothing."""
    _authenticate((api_factory or _default_kaggle_api)())


def download(data_dir: str | os.PathLike, api_factory: Callable[[], object] | None = None) -> Path:
    """Fetch and unzip the Kaggle dataset into ``data_dir`` unless a complete copy is there.

    A download is complete only once the marker is written after a successful unzip; anything
    short of that (an interrupted download or unzip) is fetched again. Concurrent callers (the
    trials of a search sharing one data directory) wait on a file lock instead of racing.
    """
    data_dir = Path(data_dir)
    if is_complete(data_dir):
        return dataset_root(data_dir)
    api = (api_factory or _default_kaggle_api)()
    _authenticate(api)  # before anything is written: without credentials no folder, no lock file
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = data_dir / ".download.lock"
    try:
        with filelock.FileLock(str(lock)):
            if not is_complete(data_dir):
                _fetch(api, data_dir)
    finally:
        # Complete: every caller checks the marker before locking, so the lock is no longer needed.
        # After a failure it stays, so that trials still waiting on it never download side by side.
        if is_complete(data_dir):
            lock.unlink(missing_ok=True)
    return dataset_root(data_dir)


def _fetch(api, data_dir: Path) -> None:
    """Download and unzip, then write the completion marker last."""
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


def room_of_name(name: str) -> tuple[str, str] | str:
    """(city, room_id) from a file name ``<city>_<room_id>_<n>.<ext>``, or why it has none.

    Three fields: the original's reading, the first two fields of the stem whatever they hold. That
    covers every Kaggle name, ``boston_13693491_2 .jpg`` included (the space touches only ``n``).
    More fields: the room id is the first all-digit field from the second on that has a field after
    it, and the fields before it are the city: ``new_york_123_1`` is (new_york, 123), where the
    original would read (new, york) and merge every New York room; ``boston_123_1_edited`` is
    (boston, 123), as the original reads it.
    """
    fields = Path(name).stem.strip().split("_")
    if len(fields) < 3 or not Path(name).suffix:
        return f"name is not {NAME_FORMAT}"
    at = 1 if len(fields) == 3 else next((i for i in range(1, len(fields) - 1) if NUMBER.fullmatch(fields[i])), 0)
    if not at:
        return f"name is not {NAME_FORMAT}: more than three fields and no numeric room_id"
    if not all(fields[: at + 1]):
        return f"name is not {NAME_FORMAT}: empty city or room_id"
    return "_".join(fields[:at]), fields[at]


def parse_photo(path: Path, room_type: str) -> Photo | None:
    """The photo's room from its folder and name (see ``room_of_name``), or None when the name has none."""
    room = room_of_name(path.name)
    if isinstance(room, str):
        return None
    return Photo(path=path, room_type=room_type, city=room[0], room_id=room[1])


def scan_split(split_dir: str | os.PathLike) -> tuple[list[Photo], list[Skipped]]:
    """The photos of one split, sorted by path, and the files that cannot be labelled."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"split folder not found: {split_dir}")
    labelled, skipped = [], []
    for path in sorted(p for p in split_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(split_dir)
        if len(relative.parts) != 2:
            skipped.append(Skipped(path, "not inside a <room-type> folder"))
            continue
        room = room_of_name(path.name)
        if isinstance(room, str):
            skipped.append(Skipped(path, room))
        else:
            labelled.append(Photo(path=path, room_type=relative.parts[0], city=room[0], room_id=room[1]))
    return labelled, skipped


def room_labels(labelled: Sequence[Photo]) -> np.ndarray:
    """An integer per photo; equal integers mean the same room."""
    codes: dict[tuple[str, str, str], int] = {}
    return np.array([codes.setdefault(p.room, len(codes)) for p in labelled], dtype=np.int64)


def report_skipped(skipped: Sequence[Skipped], what: str = "files", examples: int = 5) -> None:
    """Log how many files were skipped and why, with the first few examples."""
    if not skipped:
        return
    shown = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:examples])
    more = f" (+{len(skipped) - examples} more)" if len(skipped) > examples else ""
    logger.warning("skipped %d %s: %s%s", len(skipped), what, shown, more)


# --------------------------------------------------------------------------------------------
# Splits


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
    labelled, skipped = scan_split(split_dir)
    array, kept, unreadable = photos.read_photos(
        [p.path for p in labelled], size, desc=f"reading {Path(split_dir).name}"
    )
    readable = [labelled[i] for i in kept]
    skipped = skipped + unreadable
    report_skipped(skipped, what=f"files in {split_dir}")
    if not readable:
        raise DataError(f"no readable photos named {NAME_FORMAT} under {split_dir}")
    return Split(photos=readable, images=photos.as_tensor(array), rooms=room_labels(readable), skipped=skipped)


def load_pairs(settings: DataSettings, split_name: str, data_dir: Path | None = None) -> tuple[Split, pairs.PairSet]:
    """A split of the dataset (downloading it first if allowed) and its balanced pair set."""
    root = ensure_dataset(data_dir or settings.data_dir, allow_download=settings.download)
    split = load_split(root / SPLITS[split_name])
    pair_set = pairs.build_pairs(
        split.rooms,
        pairs.wavelet_hashes(split.images),
        seed=settings.seed,
        self_pairs=settings.self_pairs,
        sampler=settings.sampler,
    )
    logger.info(
        "%s: %s of %s, %s (%d positive)",
        split_name,
        plural(len(split), "photo"),
        plural(len(np.unique(split.rooms)), "room"),
        plural(len(pair_set), "pair"),
        pair_set.positives,
    )
    return split, pair_set


# --------------------------------------------------------------------------------------------
# Datasets


class ImagePairDataset(torch.utils.data.Dataset):
    """(image1, image2, label) with each pair's transforms applied lazily, per item."""

    def __init__(self, images: torch.Tensor, pair_set: pairs.PairSet):
        self.images = images
        self.pairs = pair_set

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.pairs
        first = transforms.model_input(self.images[p.first[index]], int(p.first_variant[index]))
        second = transforms.model_input(self.images[p.second[index]], int(p.second_variant[index]))
        return first, second, torch.tensor(float(p.label[index]))


def pair_dataset(
    split: Split,
    pair_set: pairs.PairSet,
    settings: DataSettings,
    trunk: torch.nn.Module,
    device: torch.device | str,
    name: str = "",
) -> tuple[torch.utils.data.Dataset, dict[str, Any]]:
    """The pairs as a dataset and the DataLoader options it needs: cached trunk features by
    default, or images through the trunk per pair (``feature_cache: false``, the reference)."""
    if not settings.feature_cache:
        return ImagePairDataset(split.images, pair_set), {"num_workers": settings.workers}
    cache = features.FeatureCache(settings.cache_root(), trunk, device=device, engine_name=settings.engine)
    cached = cache.features(split.images, desc=f"trunk features ({name})" if name else "trunk features")
    return features.FeaturePairDataset(cached, pair_set, engine=cache.engine), {"collate_fn": features.collate_batch}


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
        labelled, skipped = scan_split(root / folder)
        print(f"{key}: {len(labelled)} photos, {len(skipped)} other files, in {root / folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
