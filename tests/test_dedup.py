"""samespace/dedup.py: duplicate maps, groups and reports of a folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import checksums, float32_atol, summed_terms
from samespace.dedup import (
    IDENTICAL,
    MODEL,
    Dedup,
    find_duplicates,
    find_hash_duplicates,
    list_files,
    score_embeddings,
    write_outputs,
)
from samespace.errors import DataError
from samespace.network import SiameseNet


def test_dedup_maps_reports_and_never_touches_the_photos(small_net, photo_folder, tmp_path):
    before = checksums(photo_folder)
    calls = []
    small_net.trunk.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    result = find_duplicates(small_net, photo_folder, torch.device("cpu"), threshold=0.5, recursive=True)
    readable = [n for n in before if n.name not in {"truncated.jpg", "cut.jpg", "notes.jpg"}]
    assert sorted(result.names) == sorted(p.relative_to(photo_folder).as_posix() for p in readable)
    assert "sub/nested.png" in result.names
    assert {s.path.name for s in result.unreadable} == {"truncated.jpg", "cut.jpg", "notes.jpg"}
    # sub/nested.png is a byte copy of grey.png: the backbone once per distinct file, the head on their pairs
    assert [[result.names[m] for m in g] for g in result.identical] == [["grey.png", "sub/nested.png"]]
    n = len(result.names) - 1
    assert sum(calls) == n == result.trunk_images
    assert result.search == "all" and result.head_evaluations == n * (n - 1)

    output = tmp_path / "out"
    write_outputs(result, photo_folder, output, with_scores=True)
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
    assert rows[0] == "first,second,score,reason,files" and len(rows) == 1 + n * (n - 1) // 2 + 1
    assert rows[-1] == "grey.png,sub/nested.png,1.000000,identical file,2"
    removed = json.loads((output / "to_remove.json").read_text())
    assert removed == sorted(result.names[m] for g in result.groups() for m in g[1:]) and "sub/nested.png" in removed
    assert checksums(photo_folder) == before  # every input byte-identical


def test_duplicate_groups_are_stars_around_the_first_photo():
    result = Dedup(
        names=["a", "b", "c", "d", "e"],
        first=np.array([0, 1, 3, 0]),
        second=np.array([1, 2, 4, 4]),
        scores=np.array([0.9, 0.7, 0.8, 0.2]),
        threshold=0.6,
        search="all",
        head_evaluations=8,
    )
    assert result.groups() == [[0, 1], [3, 4]]  # c is b's duplicate, not a's: no chain (tests/test_groups.py)
    assert result.duplicates() == {"a": ["b"], "b": ["a", "c"], "c": ["b"], "d": ["e"], "e": ["d"]}
    assert result.duplicates(with_scores=True)["b"] == [("a", 0.9), ("c", 0.7)]


def test_candidate_scores_equal_all_pairs_scores(small_net):
    torch.manual_seed(2)
    centres = torch.randn(30, 960)
    trunk_features = centres.repeat_interleave(3, 0) + 0.05 * torch.randn(90, 960)  # 30 planted groups of 3
    first, second = small_net.towers[0](trunk_features), small_net.towers[1](trunk_features)
    names = [f"p{i}" for i in range(90)]
    every = score_embeddings(first, second, small_net.head, names, search="all")
    some = score_embeddings(first, second, small_net.head, names, search="knn", neighbours=4)
    assert some.head_evaluations < every.head_evaluations / 5
    lookup = {(a, b): s for a, b, s in zip(every.first, every.second, every.scores)}
    assert len(some.scores) > 0
    # The same pairs in other batches of the head: float32 rounding only (probabilities: slope <= 1/4).
    atol = float32_atol(summed_terms(small_net.head)) / 4
    assert all(abs(lookup[(a, b)] - s) <= atol for a, b, s in zip(some.first, some.second, some.scores))
    planted = {(a, b) for a in range(90) for b in range(a + 1, 90) if a // 3 == b // 3}
    assert planted <= set(zip(some.first.tolist(), some.second.tolist()))


def test_entries_that_are_not_regular_files_are_listed_as_skipped_never_opened(photo_folder, monkeypatch):
    os.mkfifo(photo_folder / "pipe.jpg")  # opening it would block forever
    os.symlink(photo_folder / "gone.jpg", photo_folder / "dangling.jpg")
    os.symlink(photo_folder / "sub", photo_folder / "linked-folder")
    locked = photo_folder / "locked"
    locked.mkdir()
    Image.new("RGB", (20, 20)).save(locked / "inside.jpg")
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything: simulate the permission error instead
        real_scandir = os.scandir

        def scandir(path="."):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    try:
        listing = list_files(photo_folder, recursive=True)
    finally:
        locked.chmod(0o755)
    reasons = {s.path.relative_to(photo_folder).as_posix(): s.reason for s in listing.skipped}
    assert reasons == {
        "pipe.jpg": "not a regular file but a FIFO",
        "dangling.jpg": "broken link: its target is missing",
        "linked-folder": "link to a folder, not followed",
        "locked": "cannot list this folder: Permission denied",
    }
    assert "sub/nested.png" in {p.relative_to(photo_folder).as_posix() for p in listing.files}
    flat = list_files(photo_folder, recursive=False)
    assert {p.name for p in flat.subfolders} == {"sub", "locked", "linked-folder"}
    assert not any(p.is_relative_to(photo_folder / "sub") for p in flat.files)


def test_skip_reasons_do_not_repeat_the_file_name(small_net, photo_folder, caplog):
    with caplog.at_level("WARNING", logger="samespace.dedup"):
        result = find_duplicates(small_net, photo_folder, torch.device("cpu"))
    assert result.unreadable and all(s.path.name not in s.reason for s in result.unreadable)
    assert "skipped notes.jpg: not an image in a format PIL reads" in caplog.text


def test_photos_only_in_subfolders_suggest_recursive(small_net, tmp_path):
    (tmp_path / "2019").mkdir()
    for k in range(3):
        Image.new("RGB", (20, 20), (k, 0, 0)).save(tmp_path / "2019" / f"{k}.jpg")
    with pytest.raises(DataError, match=r"subfolders hold 3 files: pass --recursive"):
        find_duplicates(small_net, tmp_path, torch.device("cpu"))
    assert len(find_duplicates(small_net, tmp_path, torch.device("cpu"), recursive=True).names) == 3


def test_byte_identical_files_are_duplicates_whatever_the_model_says(tmp_path):
    """A random-weight network scores every pair about 0.5: below a 0.9 threshold, identical
    copies would be missed on the model's word alone."""
    torch.manual_seed(0)
    net = SiameseNet(pretrained=False).eval()
    rng = np.random.default_rng(1)
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "a copy.jpg").write_bytes((tmp_path / "a.jpg").read_bytes())
    result = find_duplicates(net, tmp_path, torch.device("cpu"), threshold=0.9)
    assert result.names == ["a copy.jpg", "a.jpg", "b.jpg"]
    scores = {(result.names[a], result.names[b]): (s, r) for a, b, s, r in zip(*vars_of(result))}
    assert set(scores) == {("a copy.jpg", "b.jpg")}  # the copy "a.jpg" is never scored: it is identical
    assert all(abs(s - 0.5) < 0.05 and r == MODEL for s, r in scores.values())
    assert result.identical == [[0, 1]] and result.groups() == [[0, 1]] and not len(result.duplicate_reasons)
    assert result.duplicates() == {"a copy.jpg": ["a.jpg"], "a.jpg": ["a copy.jpg"], "b.jpg": []}


def vars_of(result):
    return result.first, result.second, result.scores, result.reasons


def test_identical_groups_are_kept_as_groups_and_scored_pairs_of_them_marked():
    result = Dedup(["a", "b", "c"], np.array([0, 0]), np.array([1, 2]), np.array([0.3, 0.2]), 0.5, "knn", 2)
    result.mark_identical([[2, 0]])
    assert list(zip(*vars_of(result))) == [(0, 1, pytest.approx(0.3), MODEL), (0, 2, 1.0, IDENTICAL)]
    assert result.groups() == [[0, 2]]
    assert result.duplicates() == {"a": ["c"], "b": [], "c": ["a"]}  # once, though also scored


def test_reports_carry_warnings_and_label_identical_files_apart_from_scores(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for k, name in enumerate(("a.jpg", "b.jpg", "c.jpg")):
        Image.new("RGB", (30, 20), (k * 80, 10, 10)).save(folder / name)
    result = Dedup(["a.jpg", "b.jpg", "c.jpg"], np.array([0]), np.array([2]), np.array([0.75]), 0.5, "all", 2)
    result.mark_identical([[0, 1]])
    warning = "checkpoint x was trained on a trunk with random weights: its scores are meaningless"
    write_outputs(result, folder, tmp_path / "out", with_scores=False, warnings=[warning])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["warnings"] == [warning] and summary["identical copies"] == 1 and summary["to remove"] == 2
    page = (tmp_path / "out" / "report.html").read_text()
    assert f"<p class='warning' role='alert'>Warning: {warning}</p>" in page
    assert "1 identical file, score 0.7500" in page  # the group's caption: the copy is no model score
    assert "<td class='score'>identical file</td>" in page and "<td class='score'>0.750000</td>" in page
    assert page.count("class='kept'") == 1


def test_hidden_folders_are_left_out_unless_asked(small_net, tmp_path):
    for sub in (".samespace-cache", "rooms"):
        (tmp_path / sub).mkdir()
        Image.new("RGB", (20, 20), (5, 6, 7)).save(tmp_path / sub / "a.png")
    Image.new("RGB", (20, 20), (50, 6, 7)).save(tmp_path / "top.png")
    assert [p.relative_to(tmp_path).as_posix() for p in list_files(tmp_path, True).files] == ["rooms/a.png", "top.png"]
    flat = list_files(tmp_path, False)
    assert [p.name for p in flat.subfolders] == ["rooms"]  # a hidden one never prompts --recursive
    every = list_files(tmp_path, True, include_hidden=True).files
    assert [p.relative_to(tmp_path).as_posix() for p in every] == [".samespace-cache/a.png", "rooms/a.png", "top.png"]
    result = find_duplicates(small_net, tmp_path, torch.device("cpu"), recursive=True, include_hidden=True)
    assert result.identical == [[0, 1]]  # the two a.png are byte-identical


def test_a_folder_without_photos_is_one_clear_error(small_net, tmp_path):
    with pytest.raises(DataError, match=r"^no photos found in .*: nothing to compare$"):
        find_duplicates(small_net, tmp_path, torch.device("cpu"))
    (tmp_path / "notes.jpg").write_text("text")
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / ".hidden" / "a.png")
    with pytest.raises(DataError, match=r"no photos found in .* \(1 file skipped, see above\): nothing to compare"):
        find_duplicates(small_net, tmp_path, torch.device("cpu"), recursive=True)


@pytest.mark.parametrize("method", ["phash", "dhash", "whash", "ahash"])
def test_hash_dedup_finds_copies_and_not_other_photos(method, tmp_path):
    """imagededup's hashes at their default 10 bits: an exact copy (distance 0, score 1.0) and a
    slightly resized copy are duplicates of the original; a distinct photo is not."""
    rng = np.random.default_rng(7)
    for name in ("original", "distinct"):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)  # smooth, as photos are to a hash
        Image.fromarray(coarse).resize((160, 120), Image.BICUBIC).save(tmp_path / f"{name}.png")
    original = Image.open(tmp_path / "original.png")
    original.convert("RGBA").save(tmp_path / "copy.png")  # same pixels, other bytes
    original.resize((170, 128), Image.BILINEAR).save(tmp_path / "resized.png")
    (tmp_path / "notes.png").write_text("not a photo")
    result = find_hash_duplicates(tmp_path, method)
    assert [s.path.name for s in result.unreadable] == ["notes.png"]
    found = result.duplicates(with_scores=True)
    assert sorted(n for n, _ in found["original.png"]) == ["copy.png", "resized.png"]
    assert dict(found["original.png"])["copy.png"] == 1.0 and found["distinct.png"] == []
    assert result.threshold == 1 - 10 / 64 and result.reasons.tolist() == [MODEL] * len(result.scores)
    (group,) = result.groups()  # a star around the kept file: the largest resolution
    assert [result.names[m] for m in group] == ["resized.png", "copy.png", "original.png"]


def test_hash_dedup_hashes_each_group_of_identical_copies_once(tmp_path, monkeypatch):
    """5,000 copies of one photo, a resized copy and a distinct photo: three files hashed (the
    copies' representative among them), no pair among the copies (they are one group of 5,000
    entries, never 12.5 M pairs), and the copies of an undecodable file skipped with its reason."""
    from samespace.baselines import hashes

    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((160, 120), Image.BICUBIC).save(tmp_path / "copy0000.png")
    Image.open(tmp_path / "copy0000.png").resize((150, 112), Image.BILINEAR).save(tmp_path / "resized.png")
    distinct = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(distinct).resize((160, 120), Image.BICUBIC).save(tmp_path / "distinct.png")
    photo = (tmp_path / "copy0000.png").read_bytes()
    for k in range(1, 5000):
        (tmp_path / f"copy{k:04d}.png").write_bytes(photo)
    for name in ("notes.png", "notes-copy.png"):
        (tmp_path / name).write_text("not a photo")
    hashed = []
    real_hash = hashes.file_hash
    monkeypatch.setattr(hashes, "file_hash", lambda path, *args: hashed.append(path.name) or real_hash(path, *args))
    result = find_hash_duplicates(tmp_path, "phash")
    assert sorted(hashed) == ["copy0000.png", "distinct.png", "notes-copy.png", "resized.png"]
    assert len(result.names) == 5002 and len(result.scores) == 1  # copy0000 ~ resized, by hash
    assert [len(group) for group in result.identical] == [5000]
    (group,) = result.groups()
    assert len(group) == 5001 and result.names[group[0]] == "copy0000.png"
    assert result.duplicates()["resized.png"] == ["copy0000.png"]
    assert sorted((s.path.name, s.reason) for s in result.unreadable)[0][0] == "notes-copy.png"
    assert len({s.reason for s in result.unreadable}) == 1 and len(result.unreadable) == 2


def swap_for_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)  # opening it for reading, blocking, would wait for a writer forever


@pytest.mark.parametrize("stage", ["decode", "identical bytes", "thumbnail"])
def test_a_photo_swapped_for_a_fifo_at_any_stage_is_refused_and_nothing_hangs(
    small_net, photo_folder, tmp_path, monkeypatch, stage
):
    import threading

    from samespace import dedup, scoring

    victim = photo_folder / "grey.png"  # byte-identical to sub/nested.png, so every stage opens it
    # The stages in order: identical bytes (before decoding, so copies are decoded once), decode, thumbnail.
    after = {"identical bytes": (dedup, "list_files"), "decode": (dedup, "identical_files")}
    after["thumbnail"] = (scoring, "features_of_files")
    module, name = after[stage]
    real = getattr(module, name)

    def then_swap(*args, **kwargs):
        answer = real(*args, **kwargs)
        swap_for_fifo(victim)
        if stage == "identical bytes":  # two FIFOs share size 0, so the check would open them
            swap_for_fifo(photo_folder / "sub" / "nested.png")
        return answer

    monkeypatch.setattr(module, name, then_swap)
    done: dict = {}

    def work() -> None:
        result = find_duplicates(small_net, photo_folder, torch.device("cpu"), threshold=0.99, recursive=True)
        write_outputs(result, photo_folder, tmp_path / "out", with_scores=True)
        done["result"] = result

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), f"dedup hung on a FIFO swapped in before the {stage} stage"
    result = done["result"]
    reasons = {s.path.name: s.reason for s in result.unreadable}
    identical = {tuple(result.names[m] for m in group) for group in result.identical}
    page = (tmp_path / "out" / "report.html").read_text()
    if stage == "decode":  # grouped as identical, then the representative gone: its copy goes with it
        assert reasons["grey.png"] == reasons["nested.png"] == "not a regular file but a FIFO"
        assert "grey.png" not in result.names
    elif stage == "identical bytes":  # they join no identical group, and decoding refuses them
        assert reasons["grey.png"] == reasons["nested.png"] == "not a regular file but a FIFO" and not identical
    else:  # grouped as identical, then gone: the report says so instead of a preview
        assert identical == {("grey.png", "sub/nested.png")}
        assert page.count("no preview: not a regular file but a FIFO") == 1  # its copy still has its own
