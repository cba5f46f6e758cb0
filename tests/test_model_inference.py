"""model_inference.py: evaluate, compare and dedup against direct computations, on generated
photos. Tests that need photo-dependent features use the small injected trunk (conftest)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm

import data
import metrics
import model_inference
import synthetic


def direct_logits(net, images, first, second, first_variant, second_variant):
    """The network on the two photos of each pair, end to end, no caching or layer splitting."""
    out = []
    with torch.inference_mode():
        for k in range(len(first)):
            a = data.model_input(images[first[k]][None], int(first_variant[k]))
            b = data.model_input(images[second[k]][None], int(second_variant[k]))
            out.append(float(net(a, b)))
    return np.array(out)


def test_evaluate_equals_a_direct_computation_on_the_same_pairs(small_net, airbnb, tmp_path):
    outcome = model_inference.evaluate(small_net, {"data": {"seed": 0}}, airbnb["dir"], torch.device("cpu"))
    report = outcome["report"]
    split = data.load_split(airbnb["root"] / data.SPLITS["test"])
    pairs = data.build_pairs(split.rooms, data.wavelet_hashes(split.images))
    logits = direct_logits(
        small_net, split.images, pairs.first, pairs.second, pairs.first_variant, pairs.second_variant
    )
    labels = pairs.label
    balanced = report["balanced"]
    assert balanced["pairs"] == len(pairs) and balanced["positives"] == pairs.positives
    assert balanced["loss"] == pytest.approx(metrics.bce_with_logits(logits, labels), abs=1e-5)
    assert balanced["accuracy"] == pytest.approx(np.mean((logits > 0) == (labels == 1)), abs=1e-9)
    scores = outcome["curves"]["balanced"][1]
    assert np.allclose(scores, metrics.sigmoid(logits), atol=1e-6)  # pair by pair, same order
    # Many pairs tie (the same photos in other variants); rounding noise may order ties differently.
    assert balanced["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, logits), abs=1e-4)
    assert balanced["pr_auc"] == pytest.approx(skm.average_precision_score(labels, logits), abs=1e-3)

    n = len(split)
    a, b = np.triu_indices(n, k=1)
    zeros = np.zeros(len(a), int)
    both = (
        1 / (1 + np.exp(-direct_logits(small_net, split.images, a, b, zeros, zeros)))
        + 1 / (1 + np.exp(-direct_logits(small_net, split.images, b, a, zeros, zeros)))
    ) / 2
    natural = report["all_distinct_pairs"]
    natural_labels = (split.rooms[a] == split.rooms[b]).astype(int)
    assert natural["pairs"] == n * (n - 1) // 2 and natural["positives"] == natural_labels.sum()
    assert np.allclose(outcome["curves"]["all distinct pairs"][1], both, atol=1e-6)
    assert natural["roc_auc"] == pytest.approx(skm.roc_auc_score(natural_labels, both), abs=1e-6)
    f1 = skm.f1_score(natural_labels, both >= 0.5, zero_division=0)
    assert natural["at_0.5"]["f1"] == pytest.approx(f1, abs=1e-9)
    best = natural["at_best_f1"]
    assert best["f1"] >= f1 - 1e-12
    assert best["f1"] == pytest.approx(skm.f1_score(natural_labels, both >= best["threshold"] - 1e-6), abs=1e-6)


def test_compare_is_symmetric_and_matches_the_network(small_net, airbnb):
    photos = [p.path for p in airbnb["made"]["test"][:2]]
    forward = model_inference.compare(small_net, photos[0], photos[1], torch.device("cpu"))
    backward = model_inference.compare(small_net, photos[1], photos[0], torch.device("cpu"))
    assert forward["probability"] == pytest.approx(backward["probability"], abs=1e-7)
    assert forward["a_then_b"] == pytest.approx(backward["b_then_a"], abs=1e-7)
    assert abs(forward["a_then_b"] - forward["b_then_a"]) > 1e-4  # the network itself is order-sensitive
    images = torch.from_numpy(np.stack([data.read_photo(p) for p in photos])).permute(0, 3, 1, 2)
    direct = torch.sigmoid(torch.tensor(direct_logits(small_net, images, [0], [1], [0], [0])))
    assert forward["a_then_b"] == pytest.approx(float(direct), abs=1e-6)


@pytest.fixture()
def photo_folder(tmp_path):
    """Known duplicate groups, singletons, a truncated JPEG, a text file named .jpg, a name that
    needs escaping in HTML, odd formats, and a subfolder."""
    folder = tmp_path / "listing"
    made = synthetic.make_split(
        folder, rooms=3, photos_per_room=(3, 3), size=(80, 60), rng=np.random.default_rng(3), singles=3
    )
    flat = folder / "flat"
    flat.mkdir()
    for photo in made:  # dedup photos without the Airbnb layout: one folder, any names
        photo.path.rename(flat / f"{photo.room[2]}-{photo.path.stem}.jpg")
    Image.new("RGB", (50, 40), (10, 200, 30)).convert("L").save(flat / "grey.png")
    Image.new("CMYK", (50, 40), (0, 255, 255, 0)).save(flat / "cmyk.jpg")
    Image.new("RGB", (50, 40), (90, 20, 200)).save(flat / "photo.webp")
    Image.new("RGB", (50, 40), (9, 9, 9)).save(flat / "room <b>&'q'.jpg")
    whole = (flat / "grey.png").read_bytes()
    (flat / "truncated.jpg").write_bytes(Image.new("RGB", (300, 300)).tobytes()[:10])
    good = flat / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(good, quality=95)
    (flat / "cut.jpg").write_bytes(good.read_bytes()[:600])
    (flat / "notes.jpg").write_text("this is text, not a photo")
    (flat / "sub").mkdir()
    (flat / "sub" / "nested.png").write_bytes(whole)
    return flat


def checksums(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dedup_maps_reports_and_never_touches_the_photos(small_net, photo_folder, tmp_path):
    before = checksums(photo_folder)
    calls = []
    small_net.trunk.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    result = model_inference.dedup(small_net, photo_folder, torch.device("cpu"), threshold=0.5, recursive=True)
    readable = [n for n in before if n.name not in {"truncated.jpg", "cut.jpg", "notes.jpg"}]
    assert sorted(result.names) == sorted(p.relative_to(photo_folder).as_posix() for p in readable)
    assert "sub/nested.png" in result.names
    assert {s.path.name for s in result.unreadable} == {"truncated.jpg", "cut.jpg", "notes.jpg"}
    assert sum(calls) == len(result.names) == result.trunk_images  # the backbone once per photo
    n = len(result.names)
    assert result.search == "all" and result.head_evaluations == n * (n - 1)

    output = tmp_path / "out"
    model_inference.write_dedup_outputs(result, photo_folder, output, with_scores=True)
    duplicates = json.loads((output / "duplicates.json").read_text())
    assert set(duplicates) == set(result.names)
    for name, hits in duplicates.items():
        assert all(other != name and other in duplicates for other, _ in hits)
        assert all(any(back == name for back, _ in duplicates[other]) for other, _ in hits)  # symmetric
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
        assert all(s >= 0.5 for _, s in hits)
    page = (output / "report.html").read_text()
    assert "room &lt;b&gt;&amp;&#x27;q&#x27;.jpg" in page and "room <b>" not in page
    assert "truncated.jpg" in page and "notes.jpg" in page and "cut.jpg" in page
    rows = (output / "pairs.csv").read_text().strip().splitlines()
    assert rows[0] == "first,second,score" and len(rows) == 1 + n * (n - 1) // 2
    assert checksums(photo_folder) == before  # every input byte-identical


def test_duplicate_groups_are_connected_components():
    result = model_inference.Dedup(
        names=["a", "b", "c", "d", "e"],
        first=np.array([0, 1, 3, 0]),
        second=np.array([1, 2, 4, 4]),
        scores=np.array([0.9, 0.7, 0.8, 0.2]),
        threshold=0.6,
        search="all",
        head_evaluations=8,
    )
    assert result.groups() == [[0, 1, 2], [3, 4]]
    assert result.duplicates() == {"a": ["b"], "b": ["a", "c"], "c": ["b"], "d": ["e"], "e": ["d"]}
    assert result.duplicates(with_scores=True)["b"] == [("a", 0.9), ("c", 0.7)]


def test_candidate_scores_equal_all_pairs_scores(small_net):
    torch.manual_seed(2)
    centres = torch.randn(30, 960)
    trunk_features = centres.repeat_interleave(3, 0) + 0.05 * torch.randn(90, 960)  # 30 planted groups of 3
    first, second = small_net.towers[0](trunk_features), small_net.towers[1](trunk_features)
    names = [f"p{i}" for i in range(90)]
    every = model_inference.score_embeddings(first, second, small_net.head, names, search="all")
    some = model_inference.score_embeddings(first, second, small_net.head, names, search="knn", neighbours=4)
    assert some.head_evaluations < every.head_evaluations / 5
    lookup = {(a, b): s for a, b, s in zip(every.first, every.second, every.scores)}
    assert len(some.scores) > 0
    assert all(abs(lookup[(a, b)] - s) < 1e-6 for a, b, s in zip(some.first, some.second, some.scores))
    planted = {(a, b) for a in range(90) for b in range(a + 1, 90) if a // 3 == b // 3}
    assert planted <= set(zip(some.first.tolist(), some.second.tolist()))


# ---------------------------------------------------------------- command line


def run_cli(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != data.DATA_DIR_ENV}
    return subprocess.run(
        [sys.executable, str(Path(model_inference.__file__)), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_on_a_training_checkpoint(trained, airbnb, photo_folder, tmp_path):
    checkpoint = trained["checkpoint"]
    a, b = [p.path for p in airbnb["made"]["test"][:2]]
    out = run_cli("--device", "cpu", "compare", checkpoint, a, b, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "P(same space)" in out.stdout

    out = run_cli("evaluate", checkpoint, "--data-dir", airbnb["dir"], "--output", tmp_path / "eval", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert {"balanced", "all_distinct_pairs"} <= set(report)
    assert (tmp_path / "eval" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    before = checksums(photo_folder)
    out = run_cli("dedup", checkpoint, photo_folder, "--recursive", "--scores", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    produced = tmp_path / "samespace-outputs" / f"dedup-{photo_folder.name}"
    assert {p.name for p in produced.iterdir()} == {"duplicates.json", "pairs.csv", "report.html", "summary.json"}
    assert "skipped" in out.stderr and "notes.jpg" in out.stderr
    assert checksums(photo_folder) == before
    again = run_cli("dedup", checkpoint, photo_folder, cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.strip().endswith("pass --force to overwrite its reports")


def test_cli_refuses_what_is_not_a_checkpoint(tmp_path, airbnb):
    a, b = [p.path for p in airbnb["made"]["test"][:2]]
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "model.pt").write_bytes(b"weights")
    for target in (tmp_path / "stray", tmp_path / "missing"):
        out = run_cli("compare", target, a, b, cwd=tmp_path)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("error: ")


def test_cli_reports_an_unreadable_photo_in_one_line(trained, tmp_path, airbnb):
    (tmp_path / "x.jpg").write_text("text")
    out = run_cli("compare", trained["checkpoint"], tmp_path / "x.jpg", airbnb["made"]["test"][0].path, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == "error: cannot read x.jpg: not an image in a format PIL reads"
