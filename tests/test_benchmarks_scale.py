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


def test_bench_scale_end_to_end_at_a_small_size_reports_what_it_measured(monkeypatch, capsys):
    monkeypatch.setattr(scale, "DIM", 256)  # still projected (PCA192), seconds instead of minutes
    monkeypatch.setattr(scale, "BLOCK", 2_000)
    monkeypatch.setattr(scale, "SAMPLE_QUERIES", 100)
    rows, targets = [], []
    scale.bench_scale(True, lambda *a: rows.append(a), lambda *a: targets.append(a), n=6_000)
    values = {what: value for _, what, value in rows}
    assert values["N=6,000 planted partners exact finds (of 100)"] == "100"  # noise 0.5: copies are nearest
    assert float(values["N=6,000 duplicate-pair recall against exact"]) >= 0.99
    assert values["N=6,000 IVF cells / training vectors"] == "256 / 6,000"
    assert 0 < float(values["N=6,000 peak RSS of the process (index, training sample, tables)"].split()[0])
    assert [name for name, *_ in targets] == ["scale_n6000_duplicate_pair_recall", "scale_n6000_index_bytes_per_photo"]
    progress = capsys.readouterr().err
    assert "scale-index: added 6,000 / 6,000" in progress and "scale-index: searched 6,000 / 6,000" in progress


def test_the_against_benchmark_takes_the_catalogue_part_and_compares_the_new_photos_pairs(tmp_path):
    import torch

    from samespace import dedup

    paths = [tmp_path / "union" / part / f"p{k}.jpg" for part, k in (("kept", 0), ("kept", 1), ("new", 2), ("new", 3))]
    first, second = torch.arange(8.0).reshape(4, 2), -torch.arange(8.0).reshape(4, 2)
    names = [path.relative_to(tmp_path / "union").as_posix() for path in paths]
    embedded = dedup.Embedded(tmp_path / "union", paths, names, [0, 1, 2, 3], {}, first, second, [], 4, "onnx")
    kept = scale.part_of(embedded, tmp_path / "union" / "kept")
    assert kept.names == ["p0.jpg", "p1.jpg"] and kept.scored == [0, 1] and kept.paths == paths[:2]
    assert torch.equal(kept.first, first[:2]) and torch.equal(kept.second, second[:2])
    result = dedup.Dedup(names, np.array([0, 0, 2]), np.array([1, 2, 3]), np.array([0.1, 0.2, 0.3]), 0.5, "knn", 3)
    found = scale.scored_with(result, tmp_path / "union", tmp_path / "union" / "new")
    assert found == {(str(paths[0]), str(paths[2])): 0.2, (str(paths[2]), str(paths[3])): 0.3}  # kept-kept left out


def test_rss_peak_sees_memory_held_for_a_moment_within_its_block():
    with scale.RssPeak() as peak:
        held = np.ones(64 * 2**20 // 8)  # 64 MiB, every page touched
        import time

        time.sleep(0.05)  # at least a few samples while it is held
        del held
    assert 60 * 2**20 <= peak.grown <= 200 * 2**20 and not peak.thread.is_alive()


def test_query_memory_queries_catalogues_cut_to_each_size(tmp_path):
    import torch

    from samespace import catalogue, dedup
    from samespace.network import SiameseNet

    torch.manual_seed(0)
    net = SiameseNet(pretrained=False).eval()
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = [folder / f"p{k}.jpg" for k in range(12)]
    for k, path in enumerate(paths):
        path.write_bytes(f"photo {k}".encode())
    first, second = torch.randn(12, 1280), torch.randn(12, 1280)
    everything = dedup.Embedded(folder, paths, [p.name for p in paths], list(range(12)), {}, first, second, [], 12, "")
    catalogue.save(tmp_path / "kept", net, everything)
    new = dedup.Embedded(folder, paths[10:], ["a", "b"], [0, 1], {}, first[10:], second[10:], [], 2, "")
    grown = scale.query_memory(tmp_path / "kept", net, new, (4, 10))
    assert set(grown) == {4, 10} and all(value >= 0 for value in grown.values())
    cut = catalogue.load(tmp_path / "cut4")
    assert len(cut) == 4 and np.array_equal(cut.first, first[:4].numpy())


def test_a_child_reports_its_own_peak_not_its_large_parents(tmp_path):
    """Linux carries a parent's resident size into a forked child's ru_maxrss: a dedup run from a
    large benchmark process reported the parent's 2.76 GiB at 5,000 and at 30,000 photos alike."""
    import subprocess
    import sys

    (tmp_path / "small.py").write_text("import numpy\nheld = numpy.ones(50 * 2**20 // 8)\n")  # 50 MiB
    held = np.ones(1024 * 2**20 // 8)  # the parent holds 1 GiB, every page touched
    done = subprocess.run(
        [sys.executable, "-c", scale.PEAK_SCRIPT, str(tmp_path / "small.py")], capture_output=True, text=True
    )
    peak = int(done.stderr.split("peak-rss-bytes")[-1].split()[0])
    assert held.sum() > 0 and 50 * 2**20 < peak < 400 * 2**20
