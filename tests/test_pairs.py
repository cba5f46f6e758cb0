"""samespace/pairs.py: pair counts, upsampling, sampling and hashes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from samespace.pairs import (
    SAMPLERS,
    build_pairs,
    expected_pair_count,
    hamming,
    popcount,
    sample_negatives_streaming,
    wavelet_hashes,
)


def rooms_of(sizes):
    return np.repeat(np.arange(len(sizes)), sizes)


def random_hashes(n, seed=0):
    return np.random.default_rng(seed).integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)


def test_pair_counts_follow_group_sizes():
    sizes = [2, 3, 5, 4] + [1] * 130  # enough different-room pairs for 64 x sum(g^2) negatives
    rooms = rooms_of(sizes)
    pairs = build_pairs(rooms, random_hashes(len(rooms)))
    positives = 64 * sum(g * g for g in sizes)
    assert pairs.positives == positives
    assert len(pairs) == expected_pair_count(sizes) == 2 * positives
    # Labels agree with the rooms, positives include self-pairs, negatives are untransformed.
    assert np.array_equal(pairs.label, (rooms[pairs.first] == rooms[pairs.second]).astype(np.uint8))
    pos = pairs.label == 1
    assert np.any(pairs.first[pos] == pairs.second[pos])
    assert not np.any(pairs.first_variant[~pos]) and not np.any(pairs.second_variant[~pos])


def test_each_positive_pair_appears_in_all_64_variant_combinations():
    rooms = rooms_of([3, 2])
    pairs = build_pairs(rooms, random_hashes(5))
    pos = pairs.label == 1
    combos = {}
    for a, b, v1, v2 in zip(pairs.first[pos], pairs.second[pos], pairs.first_variant[pos], pairs.second_variant[pos]):
        combos.setdefault((a, b), set()).add((v1, v2))
    assert len(combos) == 9 + 4
    assert all(len(c) == 64 for c in combos.values())


def test_self_pairs_can_be_excluded():
    sizes = [2, 3, 1]
    pairs = build_pairs(rooms_of(sizes), random_hashes(6), self_pairs=False)
    assert pairs.positives == 64 * sum(g * g - g for g in sizes)
    assert not np.any(pairs.first == pairs.second)


def test_airbnb_sized_split_gives_the_original_epoch():
    # The room groups of the Kaggle Training Data (tests/test_data.py derives them from its names):
    # 631 photos, 1,559 same-room ordered pairs with self-pairs, as the original.
    sizes = [1] * 3 + [2] * 218 + [3] * 37 + [4] * 15 + [5] * 3 + [6] * 1
    assert sum(sizes) == 631 and sum(g * g for g in sizes) == 1559
    pairs = build_pairs(rooms_of(sizes), random_hashes(631))
    assert pairs.positives == 99_776 and len(pairs) == 199_552 == expected_pair_count(sizes)
    # Self-pairs count among the positives: 631 x 64 of the 99,776, as in the original.
    positives = pairs.label == 1
    assert np.sum(pairs.first[positives] == pairs.second[positives]) == 631 * 64


@pytest.mark.parametrize("sampler", ["exact", "streaming"])
def test_sampling_is_reproducible_without_repeats(sampler):
    rooms = rooms_of([2, 3, 2, 4] + [1] * 120)
    hashes = random_hashes(len(rooms))
    a = build_pairs(rooms, hashes, sampler=sampler)
    b = build_pairs(rooms, hashes, sampler=sampler)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("first", "second", "label"))
    neg = a.label == 0
    flat = a.first[neg] * len(rooms) + a.second[neg]
    assert len(np.unique(flat)) == neg.sum()
    c = build_pairs(rooms, hashes, sampler=sampler, seed=1)
    assert not np.array_equal(a.first, c.first) or not np.array_equal(a.second, c.second)


def test_too_few_negatives_takes_all_of_them(caplog):
    rooms = rooms_of([3, 1])  # 9+1 positive pairs x64 but only 6 negative ordered pairs
    pairs = build_pairs(rooms, random_hashes(4))
    assert (pairs.label == 0).sum() == 6
    assert "only 6 negative pairs for 640 positives" in caplog.text
    caplog.clear()
    assert (build_pairs(rooms_of([3]), random_hashes(3)).label == 0).sum() == 0
    assert "no negative pairs for 576 positives: all photos show one room" in caplog.text
    assert "only 0" not in caplog.text


def test_near_negatives_are_drawn_more_often():
    # Singletons whose hashes sit at controlled distances: 1 bit, 8 bits or 32 bits from photo 0.
    base = np.uint64(0)
    hashes = np.array(
        [base]
        + [np.uint64(1 << i) for i in range(5)]
        + [np.uint64((1 << 8) - 1) << np.uint64(8 * (i + 1)) for i in range(5)]
        + [np.uint64(0xFFFFFFFF) << np.uint64(i) for i in range(5)],
        dtype=np.uint64,
    )
    rooms = np.arange(len(hashes))
    distance = hamming(hashes[:, None], hashes[None, :])
    near, far = (distance > 0) & (distance <= 2), distance >= 24
    counts = np.zeros((len(rooms), len(rooms)))
    for seed in range(40):
        flat = sample_negatives_streaming(rooms, hashes, 60, seed=seed)
        np.add.at(counts, (flat // len(rooms), flat % len(rooms)), 1)
    rate_near, rate_far = counts[near].mean() / 40, counts[far].mean() / 40
    assert rate_near > 0.5 and rate_far < 0.05 and rate_near > 10 * rate_far


def test_streaming_sampler_matches_exact_draw_frequencies():
    """Both methods sample the same distribution: compare inclusion frequencies per pair."""
    rooms = np.array([0, 0, 1, 2, 3])
    hashes = np.array([0, 0b1, 0b11, 0b1111, 0b11111111], dtype=np.uint64)
    n, k, runs = len(rooms), 4, 3000
    freq = {}
    for name, sampler in SAMPLERS.items():
        counts = np.zeros(n * n)
        for seed in range(runs):
            counts[sampler(rooms, hashes, k, seed=seed)] += 1
        freq[name] = counts / runs
    candidates = (rooms[:, None] != rooms[None, :]).reshape(-1)
    assert np.all(freq["exact"][~candidates] == 0) and np.all(freq["streaming"][~candidates] == 0)
    # Binomial standard error at 3000 runs is at most 0.009; allow 4 of them.
    assert np.max(np.abs(freq["exact"] - freq["streaming"])) < 0.036
    assert np.isclose(freq["streaming"].sum(), k, rtol=1e-12)  # float64 sum of counts / runs


def test_streaming_sampler_result_does_not_depend_on_block_size():
    rooms = rooms_of([2, 1, 3, 2, 1, 1, 2])
    hashes = random_hashes(len(rooms), seed=3)
    a = sample_negatives_streaming(rooms, hashes, 20, block=12)
    b = sample_negatives_streaming(rooms, hashes, 20, block=1 << 20)
    assert np.array_equal(a, b)


def test_wavelet_hashes_match_imagehash():
    import imagehash

    images = torch.randint(0, 256, (3, 3, 256, 256), dtype=torch.uint8)
    packed = wavelet_hashes(images)
    for i in range(3):
        expected = imagehash.whash(Image.fromarray(images[i].permute(1, 2, 0).numpy()))
        assert int(packed[i]) == int(str(expected), 16)
    first = imagehash.whash(Image.fromarray(images[0].permute(1, 2, 0).numpy()))
    second = imagehash.whash(Image.fromarray(images[1].permute(1, 2, 0).numpy()))
    assert hamming(packed[0], packed[1]) == first - second


def test_popcount_fallback_matches_numpy(monkeypatch):
    values = random_hashes(50, seed=9)
    expected = np.array([bin(int(v)).count("1") for v in values])
    assert np.array_equal(popcount(values), expected)
    monkeypatch.delattr(np, "bitwise_count")  # the byte-table path of numpy < 2 images
    assert np.array_equal(popcount(values), expected)
    assert np.array_equal(popcount(values.reshape(5, 10)), expected.reshape(5, 10))
