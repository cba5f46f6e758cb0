"""synthetic.py: generated photos follow the Airbnb layout, and a room's photos look alike."""

from __future__ import annotations

import numpy as np
from PIL import Image

import data
import synthetic


def test_layout_names_and_rooms(tmp_path):
    made = synthetic.make_dataset(
        tmp_path, train_rooms=3, test_rooms=2, photos_per_room=(2, 2), size=(48, 36), train_singles=2
    )
    photos, skipped = data.scan_split(data.dataset_root(tmp_path) / "Training Data")
    assert not skipped and len(photos) == len(made["train"]) == 3 * 2 + 2
    assert sorted(synthetic.group_sizes(made["train"])) == [1, 1, 2, 2, 2]
    assert {p.room for p in photos} == {p.room for p in made["train"]}
    test_rooms = {p.room[2] for p in made["test"]}
    assert not test_rooms & {p.room[2] for p in made["train"]}  # room ids do not repeat across splits


def test_same_room_photos_are_closer_than_other_rooms(tmp_path):
    made = synthetic.make_split(tmp_path, rooms=8, photos_per_room=(3, 3), size=(64, 48), rng=np.random.default_rng(1))
    small = {p.path: np.asarray(Image.open(p.path).resize((16, 12)), np.float64) for p in made}
    same, other = [], []
    for i, a in enumerate(made):
        for b in made[i + 1 :]:
            (same if a.room == b.room else other).append(np.abs(small[a.path] - small[b.path]).mean())
    assert max(np.median(same), 0) * 2 < np.median(other)
