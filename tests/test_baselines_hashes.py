"""imagededup's hashes, bit-equal to its own output, and their Hamming distances."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samespace.baselines import hashes
from samespace.photos import Skipped

DATA = Path(__file__).parent / "imagededup"
PINNED = json.loads((DATA / "hashes.json").read_text())


@pytest.mark.parametrize("method", hashes.METHODS)
@pytest.mark.parametrize("name", sorted(PINNED["hashes"]))
def test_hashes_equal_imagededup_bit_for_bit(name, method):
    """Pinned by benchmarks/imagededup_hashes.py with imagededup 0.3.3 itself, on RGB, L, RGBA and
    P photos (each goes its own conversion route), large and smaller than the hash's size."""
    got = hashes.file_hash(DATA / "photos" / name, method)
    assert got == PINNED["hashes"][name][method]


def test_the_pinned_photos_differ_in_most_bits_between_rooms():
    """The pinned photos exercise the hashes: photos of different rooms are far apart (so an
    implementation that hashed everything alike could not pass the pin test by luck)."""
    rooms = {name: name.split("-")[0] for name in PINNED["hashes"]}
    names = sorted(rooms)
    for method in hashes.METHODS:
        values = hashes.as_integers([PINNED["hashes"][n][method] for n in names])
        a, b = np.triu_indices(len(names), 1)
        far = hashes.hamming(values, a, b)[[rooms[names[i]] != rooms[names[j]] for i, j in zip(a, b)]]
        assert far.min() > hashes.DEFAULT_DISTANCE, method


def photo(seed: int, size=(120, 90)) -> Image.Image:
    """A smooth random photo: low-frequency structure, as real photos have (hashes see nothing else)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.BICUBIC)


@pytest.mark.parametrize("method", hashes.METHODS)
def test_an_exact_copy_is_at_distance_zero_and_the_closest_pair(method, tmp_path):
    """A copy of a photo (another file, same pixels) hashes equal: distance 0 and similarity 1.0,
    the top-scoring pair; a slightly resized copy stays within the default 10 bits."""
    images = [photo(seed) for seed in range(6)]
    images += [images[0].copy(), images[1].resize((132, 99), Image.BILINEAR)]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"p{i}.png")
        image.save(paths[-1])
    found, kept, skipped = hashes.file_hashes(paths, method)
    assert kept == list(range(len(paths))) and skipped == []
    values = hashes.as_integers(found)
    a, b = np.triu_indices(len(paths), 1)
    distances = hashes.hamming(values, a, b)
    copy = int(np.flatnonzero((a == 0) & (b == 6))[0])
    assert distances[copy] == 0
    scores = hashes.similarity(distances)
    assert scores[copy] == 1.0 == scores.max()
    assert hashes.hamming(values, np.array([1]), np.array([7]))[0] <= hashes.DEFAULT_DISTANCE


def test_hamming_distance_is_symmetric_and_counts_differing_bits():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 2**63, 50, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    a, b = rng.integers(0, 50, 200), rng.integers(0, 50, 200)
    forward = hashes.hamming(values, a, b)
    assert np.array_equal(forward, hashes.hamming(values, b, a))
    expected = [bin(int(values[i]) ^ int(values[j])).count("1") for i, j in zip(a, b)]
    assert forward.tolist() == expected
    assert hashes.hamming(hashes.as_integers(["ffffffffffffffff", "0000000000000000"]), [0], [1]).tolist() == [64]


def test_close_pairs_equal_brute_force_over_every_pair():
    """Blocked search (here 7 rows at a time) finds exactly the pairs within the distance."""
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2**63, 10, dtype=np.int64).astype(np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (30, 3)).astype(np.uint64)
    values = np.concatenate([base, base[rng.integers(0, 10, 30)] ^ flips[:, 0] ^ flips[:, 1]])
    a, b, d = hashes.close_pairs(values, 4, rows=7)
    every_a, every_b = np.triu_indices(len(values), 1)
    every = hashes.hamming(values, every_a, every_b)
    keep = every <= 4
    assert sorted(zip(a.tolist(), b.tolist(), d.tolist())) == sorted(
        zip(every_a[keep].tolist(), every_b[keep].tolist(), every[keep].tolist())
    )
    assert len(a) >= 30  # each altered copy is within 2 bits of its original


def test_unreadable_files_are_skipped_with_a_reason(tmp_path):
    (tmp_path / "notes.png").write_text("not a photo")
    good = tmp_path / "good.png"
    photo(0).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:200])
    found, kept, skipped = hashes.file_hashes([tmp_path / "cut.png", good, tmp_path / "notes.png"], "phash")
    assert kept == [1] and len(found) == 1
    assert [s.path.name for s in skipped] == ["cut.png", "notes.png"]
    assert all(isinstance(s, Skipped) and s.reason and "\n" not in s.reason for s in skipped)
    assert skipped[1].reason == "not an image in a format PIL reads"


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    """A FIFO where a photo was listed (swapped in after the listing): one reason, no hang."""
    import os

    os.mkfifo(tmp_path / "pipe.png")
    assert hashes.file_hash(tmp_path / "pipe.png", "ahash") == Skipped(
        tmp_path / "pipe.png", "not a regular file but a FIFO"
    )
