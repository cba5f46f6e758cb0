"""benchmarks/scale.py counts what it says: its planted pairs are real, its exact reference is exact."""

from __future__ import annotations

import numpy as np

import benchmarks.scale as scale


def test_blocks_are_unit_vectors_with_near_copies_and_regenerate_alike(monkeypatch):
    monkeypatch.setattr(scale, "BLOCK", 400)
    centres = scale.themes()
    x, planted = scale.block(0, 400, centres)
    again, _ = scale.block(0, 400, centres)
    assert np.array_equal(x, again) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    copies = np.einsum("ij,ij->i", x[planted[:, 0]], x[planted[:, 1]])
    assert len(planted) == 20 and copies.min() > 0.8  # a copy is far closer than a theme-mate (~0.5)
    picked = scale.pick(np.array([3, 401, 799]), 800, centres)
    assert np.array_equal(picked[1], scale.block(1, 400, centres)[0][1])


def test_exact_top_k_is_brute_force_without_the_query_itself(monkeypatch):
    monkeypatch.setattr(scale, "BLOCK", 300)
    monkeypatch.setattr(scale, "K", 5)
    centres = scale.themes()
    every = np.concatenate(list(scale.blocks(700, centres)))
    rows = np.array([0, 299, 300, 650])
    found = scale.exact_top_k(every[rows], rows, 700, centres)
    similarity = every[rows] @ every.T
    similarity[np.arange(4), rows] = -np.inf
    assert np.array_equal(np.sort(found, 1), np.sort(np.argsort(-similarity, 1)[:, :5], 1))


def test_memory_benchmark_runs_the_real_command_at_two_sizes(monkeypatch, tmp_path):
    """bench_memory end to end on 6 and 12 tiny photos: the random checkpoint loads in the real
    ``dedup`` command, each size is its own process with its own peak, and --quick's target line
    is marked not measured (a slope from so few photos means nothing)."""
    from PIL import Image

    from samespace.checkpoints import load_checkpoint

    scale.random_checkpoint(tmp_path / "checkpoint")
    net, meta = load_checkpoint(tmp_path / "checkpoint")
    assert meta["hparams"]["pretrained"] is False and net.embedding_dim == 1280

    def write_photos(folder, n, size):
        folder.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", size, (20 * i % 256, 100, 200)).save(folder / f"p{i:02d}.jpg")

    rows, targets = [], []
    monkeypatch.setitem(scale.MEMORY_SIZES, True, (6, 12))
    scale.bench_memory(True, lambda *r: rows.append(r), lambda *t: targets.append(t), write_photos)
    peaks = [float(value.split(" GiB")[0]) for _, what, value in rows if "peak RSS" in what]
    assert len(peaks) == 2 and all(0.1 < peak < 8 for peak in peaks)
    assert [(name, met) for name, _, _, met in targets] == [("dedup_memory_per_photo", None)]
