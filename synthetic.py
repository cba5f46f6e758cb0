"""Synthetic listing photos in the Airbnb layout, for the demo, the tests and the benchmarks.

Each room is a random scene (walls, floor, furniture, windows); its photos are recognisable
variants of that scene (another crop, exposure, slight tilt, JPEG quality), so duplicates are
visibly the same space and different rooms differ. Real JPEG files, nothing faked downstream.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

import data

ROOM_TYPES = ("bedroom", "bathroom", "kitchen", "living-room")
CITIES = ("london", "paris", "new_york", "lisbon")
SCENE_SIZE = (320, 240)


@dataclasses.dataclass(frozen=True)
class GeneratedPhoto:
    path: Path
    room: tuple[str, str, str]


def room_scene(rng: np.random.Generator, size: tuple[int, int] = SCENE_SIZE) -> Image.Image:
    """A random room: a wall and a floor, a window, and furniture-like shapes with some texture."""
    width, height = size
    colour = lambda: tuple(int(c) for c in rng.integers(20, 236, 3))  # noqa: E731
    scene = Image.new("RGB", size, colour())
    draw = ImageDraw.Draw(scene)
    horizon = int(height * rng.uniform(0.45, 0.7))
    draw.rectangle([0, horizon, width, height], fill=colour())
    wx, wy = int(rng.uniform(0.05, 0.6) * width), int(rng.uniform(0.05, 0.2) * height)
    ww, wh = int(rng.uniform(0.2, 0.35) * width), int(rng.uniform(0.2, 0.3) * height)
    draw.rectangle([wx, wy, wx + ww, wy + wh], fill=colour(), outline=colour(), width=4)
    draw.line([wx + ww // 2, wy, wx + ww // 2, wy + wh], fill=colour(), width=3)
    for _ in range(rng.integers(4, 9)):
        x0, y0 = rng.uniform(0, width * 0.85), rng.uniform(height * 0.3, height * 0.9)
        x1, y1 = x0 + rng.uniform(20, width * 0.4), y0 + rng.uniform(15, height * 0.35)
        shape = draw.ellipse if rng.random() < 0.35 else draw.rectangle
        shape([x0, y0, x1, y1], fill=colour(), outline=colour(), width=int(rng.integers(1, 4)))
    noise = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(scene, np.float64) + noise, 0, 255).astype(np.uint8))


def photograph(scene: Image.Image, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One photo of a scene: a different crop, exposure, contrast and a slight tilt."""
    width, height = scene.size
    scale = rng.uniform(0.75, 0.92)
    cw, ch = int(width * scale), int(height * scale)
    x0, y0 = int(rng.uniform(0, width - cw)), int(rng.uniform(0, height - ch))
    photo = scene.crop((x0, y0, x0 + cw, y0 + ch)).rotate(rng.uniform(-3, 3), resample=Image.BILINEAR)
    photo = ImageEnhance.Brightness(photo).enhance(rng.uniform(0.85, 1.15))
    photo = ImageEnhance.Contrast(photo).enhance(rng.uniform(0.9, 1.1))
    return photo.resize(size, Image.BILINEAR)


def make_split(
    split_dir: Path,
    rooms: int,
    photos_per_room: tuple[int, int] = (2, 4),
    size: tuple[int, int] = (160, 120),
    rng: np.random.Generator | None = None,
    first_room_id: int = 1000,
    singles: int = 0,
) -> list[GeneratedPhoto]:
    """Write ``rooms`` rooms' photos as ``<room-type>/<city>_<room_id>_<n>.jpg``, then ``singles``
    rooms with one photo each (most Airbnb rooms have a single photo)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    written = []
    for r in range(rooms + singles):
        count = int(rng.integers(photos_per_room[0], photos_per_room[1] + 1)) if r < rooms else 1
        room_type = ROOM_TYPES[r % len(ROOM_TYPES)]
        city = CITIES[(r // len(ROOM_TYPES)) % len(CITIES)]
        room_id = str(first_room_id + r)
        scene = room_scene(rng)
        folder = split_dir / room_type
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(count):
            path = folder / f"{city}_{room_id}_{n}.jpg"
            photograph(scene, rng, size).save(path, quality=int(rng.integers(75, 96)))
            written.append(GeneratedPhoto(path, (room_type, city, room_id)))
    return written


def make_dataset(
    data_dir: str | Path,
    train_rooms: int = 24,
    test_rooms: int = 8,
    photos_per_room: tuple[int, int] = (2, 4),
    size: tuple[int, int] = (160, 120),
    seed: int = 0,
    train_singles: int = 0,
    test_singles: int = 0,
) -> dict[str, list[GeneratedPhoto]]:
    """A small dataset under ``data_dir/Airbnb Data`` with the Kaggle layout; room ids do not
    repeat across splits. A balanced pair set needs many single-photo rooms: positives are
    upsampled x64, so a split needs N^2 >= 65 * sum(g_i^2) ordered pairs."""
    rng = np.random.default_rng(seed)
    root = data.dataset_root(Path(data_dir))
    return {
        "train": make_split(root / data.SPLITS["train"], train_rooms, photos_per_room, size, rng, 1000, train_singles),
        "test": make_split(root / data.SPLITS["test"], test_rooms, photos_per_room, size, rng, 5000, test_singles),
    }


def group_sizes(photos: list[GeneratedPhoto]) -> list[int]:
    """Photos per room, for the expected pair counts."""
    _, counts = np.unique([("/".join(p.room)) for p in photos], return_counts=True)
    return counts.tolist()
