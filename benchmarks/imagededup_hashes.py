"""Regenerate tests/imagededup/hashes.json: imagededup 0.3.3's own PHash, DHash, WHash and
AHash of the photos in tests/imagededup/photos/ (made here from synthetic room scenes, in
the PIL modes imagededup converts differently: RGB, L, RGBA, P).

    pip install --no-deps imagededup==0.3.3   # its other requirements are already pinned here
    python benchmarks/imagededup_hashes.py

``imagededup.methods`` imports its CNN module, which downloads ImageNet weights at import; that
module is replaced by an empty stub here (only here: product code never imports imagededup)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import synthetic  # noqa: E402

DATA = ROOT / "tests" / "imagededup"
PHOTOS = DATA / "photos"


def make_photos(folder: Path) -> list[Path]:
    """Six small photos of three rooms, seeded: enough variety for every bit route."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(16)
    scenes = [synthetic.room_scene(rng, (240, 180)) for _ in range(3)]
    made = {
        "room0-rgb.png": synthetic.photograph(scenes[0], rng, (160, 120)),
        "room0-grey.png": synthetic.photograph(scenes[0], rng, (150, 110)).convert("L"),
        "room1-rgba.png": synthetic.photograph(scenes[1], rng, (128, 96)).convert("RGBA"),
        "room1-palette.png": synthetic.photograph(scenes[1], rng, (140, 100)).convert("P"),
        "room2-large.png": synthetic.photograph(scenes[2], rng, (300, 220)),
        "room2-small.png": synthetic.photograph(scenes[2], rng, (40, 30)),
    }
    for name, image in made.items():
        image.save(folder / name)
    return [folder / name for name in made]


def imagededup_hashers() -> dict:
    sys.modules.setdefault("imagededup.methods.cnn", types.SimpleNamespace(CNN=None))  # no weights download
    from imagededup.methods.hashing import AHash, DHash, PHash, WHash

    return {
        "phash": PHash(verbose=False),
        "dhash": DHash(verbose=False),
        "whash": WHash(verbose=False),
        "ahash": AHash(verbose=False),
    }


def main() -> int:
    import imagededup

    paths = make_photos(PHOTOS)
    hashers = imagededup_hashers()
    table = {
        "imagededup": imagededup.__version__,
        "hashes": {p.name: {m: h.encode_image(image_file=str(p)) for m, h in hashers.items()} for p in paths},
    }
    (DATA / "hashes.json").write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(paths)} photos' hashes to {DATA / 'hashes.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
