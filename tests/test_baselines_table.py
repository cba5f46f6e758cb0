"""Baseline rows on every distinct pair: the same figures as metrics.score_report of the hash
similarities, at imagededup's fixed 10 bits, and bad names in one line."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from samespace.baselines import hashes, table
from samespace.errors import DataError


def rooms_of_photos(folder, rooms: int = 3, per_room: int = 3):
    """Photos of ``rooms`` smooth random scenes; the room's photos are a copy and resized copies."""
    rng = np.random.default_rng(11)
    paths, labels = [], []
    for room in range(rooms):
        scene = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((160, 120), Image.BICUBIC)
        for shot in range(per_room):
            paths.append(folder / f"r{room}-{shot}.png")
            scene.resize((160 - 8 * shot, 120 - 6 * shot), Image.BILINEAR).save(paths[-1])
            labels.append(room)
    shutil.copyfile(paths[0], folder / "r0-copy.png")
    return [*paths, folder / "r0-copy.png"], np.array([*labels, 0])


@pytest.mark.parametrize("method", hashes.METHODS)
def test_rows_are_the_auc_of_the_hash_similarities_on_every_distinct_pair(method, tmp_path):
    paths, rooms = rooms_of_photos(tmp_path)
    row = table.hash_row(paths, rooms, method)
    values = hashes.as_integers([hashes.file_hash(p, method) for p in paths])
    a, b = np.triu_indices(len(paths), 1)
    labels = rooms[a] == rooms[b]
    scores = 1 - hashes.hamming(values, a, b) / 64
    assert row["pairs"] == len(a) == 45 and row["positives"] == int(labels.sum())
    assert row["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert row["pr_auc"] == pytest.approx(skm.average_precision_score(labels, scores), abs=1e-12)
    at_default = row["at_default_10_bits"]
    assert at_default["threshold"] == 1 - 10 / 64  # imagededup's default, not chosen on these pairs
    assert at_default["recall"] == pytest.approx(np.mean(scores[labels] >= 1 - 10 / 64))
    assert row["photos_per_s"] > 0 and row["trained_on"] == "nothing (fixed hash)"
    copy = (a == 0) & (b == len(paths) - 1)
    assert scores[copy].item() == scores.max() == 1.0  # the exact copy scores top


def test_one_room_gives_null_figures_with_a_reason(tmp_path):
    paths, rooms = rooms_of_photos(tmp_path, rooms=1)
    row = table.hash_row(paths, rooms, "phash")
    assert row["roc_auc"] is None and row["pr_auc"] is None and "at least two rooms" in row["why_null"]


def test_names_and_unknown_names():
    assert table.parse_names("all") == list(hashes.METHODS)
    assert table.parse_names("dhash, phash,dhash") == ["dhash", "phash"]
    with pytest.raises(DataError) as error:
        table.parse_names("phash,vgg99")
    assert str(error.value) == "unknown baseline vgg99: choose from phash, dhash, whash, ahash or all"


def test_table_lines_show_samespace_first_and_reasons():
    block = {
        "phash": {"roc_auc": 0.75, "pr_auc": 0.5, "photos_per_s": 120.0},
        "ahash": {"roc_auc": None, "why_null": "x.jpg: gone"},
    }
    lines = table.table_lines({"roc_auc": 0.9, "pr_auc": None}, block)
    assert [line.split()[0] for line in lines[1:]] == ["samespace", "phash", "ahash"]
    assert lines[1].split()[1:] == ["0.9000", "n/a"] and "120 photos/s" in lines[2] and "(x.jpg: gone)" in lines[3]
