"""benchmarks/run.py compares like with like: the original method it times builds the same pair
set as ours (the timing itself belongs to the benchmark, not to the tests)."""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PROJECT
from samespace.pairs import build_pairs

sys.path.insert(0, str(PROJECT / "benchmarks"))
import run as bench  # noqa: E402


def test_original_method_builds_the_same_pair_set():
    rooms = bench.airbnb_like_rooms(300, seed=3)  # enough different-room pairs for the x64 positives
    hashes = bench.random_hashes(300)
    original = bench.original_pair_set(rooms, hashes)
    ours = build_pairs(rooms, hashes)
    assert len(original) == len(ours)
    positives = original[original.label == 1]
    assert Counter(zip(positives.image1, positives.image2)) == Counter(
        zip(ours.first[ours.label == 1].tolist(), ours.second[ours.label == 1].tolist())
    )
    negatives = original[original.label == 0]
    assert not negatives.duplicated(["image1", "image2"]).any()
    assert np.all(rooms[negatives.image1] != rooms[negatives.image2])


def test_airbnb_like_rooms_reproduce_the_original_split():
    rooms = bench.airbnb_like_rooms(631)
    sizes = np.unique(rooms, return_counts=True)[1]
    assert sizes.sum() == 631 and (sizes**2).sum() == 1559
    assert len(bench.airbnb_like_rooms(5_000, seed=1)) == 5_000


def test_planted_clusters_are_what_the_recall_counts():
    features, rooms = bench.planted_trunk_features(200, noise_ratio=1.0, seed=0)
    assert features.shape == (200, 960) and features.min() >= 0
    same = [(a, b) for a in range(200) for b in range(a + 1, 200) if rooms[a] == rooms[b]]
    first, second = np.array([a for a, _ in same[:5]]), np.array([b for _, b in same[:5]])
    found = bench.Dedup([], first, second, np.ones(5), 0.5, "knn", 10)
    kept, planted = bench.kept_share(found, rooms)
    assert planted == len(same) and kept == 5 / len(same)


def test_photo_folder_holds_rooms_of_airbnb_like_sizes(tmp_path):
    rooms = bench.write_photo_folder(tmp_path / "photos", 12, size=(64, 48))
    files = sorted((tmp_path / "photos").iterdir())
    assert [p.name for p in files] == [f"photo_{i:05d}.jpg" for i in range(12)] and len(rooms) == 12
    with Image.open(files[0]) as photo:
        assert photo.format == "JPEG" and photo.size == (64, 48)


def test_imagededup_comparison_skips_with_one_line(tmp_path):
    seconds, why = bench.imagededup_seconds(None, tmp_path)
    assert seconds is None and why.startswith("skipped: no --imagededup-python")
    seconds, why = bench.imagededup_seconds(str(tmp_path / "no-python"), tmp_path)
    assert seconds is None and why.startswith("skipped: cannot run") and "\n" not in why


def test_trunk_rates_time_the_same_work_three_ways(monkeypatch):
    monkeypatch.setattr(bench.features, "default_batch_size", lambda device: 2)  # speed is not tested here
    with bench.scoring.torch_threads(1):  # tiny batches on a shared machine: OpenMP barriers would dominate
        rates = bench.trunk_rates(torch.device("cpu"), batches=1)
    assert set(rates) == {"trunk alone, NCHW", "trunk alone, channels_last", "our trunk path"}
    assert all(rate > 0 for rate in rates.values())


def test_trunk_rates_time_an_engine_in_the_same_turns(monkeypatch):
    monkeypatch.setattr(bench.features, "default_batch_size", lambda device: 2)
    calls = []
    with bench.scoring.torch_threads(1):
        rates = bench.trunk_rates(torch.device("cpu"), batches=2, runner=lambda x: calls.append(x.shape))
    assert rates["trunk alone, onnxruntime"] > 0
    assert calls == [(2, 3, 256, 256)] * 3  # a warm-up turn and two timed ones, same batch as torch


def test_openvino_trunk_matches_torch_in_float32(monkeypatch):
    from conftest import small_trunk

    pytest.importorskip("openvino", reason="openvino is a benchmark-only package (requirements-dev.txt)")
    monkeypatch.setattr(bench, "trunk_under_test", small_trunk)  # the export path, on a small trunk
    runner, how = bench.openvino_trunk(threads=1)
    x = torch.rand(3, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = small_trunk().eval()(x)
    # float32 forced: a few float32 roundings of kernels ordered differently, not bfloat16's ~1e-2
    assert how == "measured" and (runner(x) - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_openvino_trunk_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    runner, how = bench.openvino_trunk(threads=1)
    assert runner is None and how.startswith("not measured: openvino is not installed") and "\n" not in how


def test_cache_build_times_both_engines_on_the_same_chunks(monkeypatch, tmp_path):
    from conftest import small_trunk

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the engine's export cache
    monkeypatch.setattr(bench, "trunk_under_test", small_trunk)  # speed is not tested here
    calls = []
    real = bench.features.FeatureCache.features

    def features(cache, images, desc="trunk features"):
        calls.append((cache.engine, len(images)))
        return real(cache, images, desc)

    monkeypatch.setattr(bench.features.FeatureCache, "features", features)
    seconds = bench.cache_build_seconds(8 + 4 + 3, chunk=4)
    assert set(seconds) == {"torch", "onnx"} and all(s > 0 for s in seconds.values())
    # the warm-up, then each chunk by torch and then by onnxruntime, in turn
    assert calls == [("torch", 8), ("onnx", 8), ("torch", 4), ("onnx", 4), ("torch", 3), ("onnx", 3)]


def test_gpu_section_lists_its_targets_as_not_measured_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "TARGETS", [])
    bench.bench_gpu(quick=True)
    assert {name for name, _, _, met in bench.TARGETS if met is None} == set(bench.GPU_GOALS)


def test_baseline_photos_are_rooms_of_alike_scenes():
    rooms = np.array([0, 0, 1, 2, 2])
    images = bench.smooth_photos(rooms)
    assert images.shape == (5, 3, 256, 256) and images.dtype == torch.uint8
    same = (images[0].float() - images[1].float()).abs().mean()
    other = (images[0].float() - images[2].float()).abs().mean()
    assert same < other  # a room's photos vary less than two rooms do
