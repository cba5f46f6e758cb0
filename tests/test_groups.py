"""samespace/groups.py: identical copies collapsed before scoring, star groups, the file to keep."""

from __future__ import annotations

import csv
import json
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import checksums
from samespace.dedup import Dedup, find_duplicates, write_outputs
from samespace.groups import (
    PhotoFacts,
    best_matches,
    closest_to_threshold,
    facts_of,
    keep_ranks,
    representatives,
    star_groups,
    to_remove,
)


def chain() -> Dedup:
    """A~B and B~C above the threshold, A and C not: connected components would chain all three."""
    return Dedup(
        names=["A.jpg", "B.jpg", "C.jpg"],
        first=np.array([0, 1, 0]),
        second=np.array([1, 2, 2]),
        scores=np.array([0.9, 0.8, 0.1]),
        threshold=0.5,
        search="all",
        head_evaluations=6,
    )


def assert_stars(result: Dedup) -> None:
    """Every removed photo is a duplicate of its group's kept photo itself."""
    a, b, s = result.duplicate_pairs
    direct = {frozenset(p) for p in zip(a.tolist(), b.tolist())}
    direct |= {frozenset((g[0], m)) for g in result.identical for m in g[1:]}
    for members in result.groups():
        assert all(frozenset((members[0], m)) in direct for m in members[1:]), members


def test_a_chain_gives_a_star_around_the_kept_photo_not_one_group():
    result = chain()
    assert result.groups() == [[0, 1]]  # A kept (first by name), B joins it; C scores 0.1 against A
    assert_stars(result)
    result.ranks = np.array([1, 0, 2])  # B preferred: it is a duplicate of both
    assert result.groups() == [[1, 0, 2]]
    assert_stars(result)
    result.ranks = np.array([1, 2, 0])  # C kept first: B joins C, A is left alone
    assert result.groups() == [[2, 1]]
    assert_stars(result)


def test_identical_copies_travel_together_and_the_best_copy_is_kept():
    # 0,1,2 byte-identical; 3 a model duplicate of copy 0 only (copies score alike); 4 alone.
    ranks = np.array([2, 0, 1, 3, 4])  # copy 1 preferred
    groups = star_groups(5, np.array([0]), np.array([3]), [[0, 1, 2]], ranks)
    assert groups == [[1, 2, 0, 3]]
    assert representatives(5, [[0, 1, 2]]) == [0, 3, 4]
    assert to_remove(groups, ["a", "b", "c", "d", "e"]) == ["a", "c", "d"]


def test_keep_rules_rank_by_resolution_size_date_or_name():
    facts = {
        0: PhotoFacts(100, 100, 5_000, 30.0),
        1: PhotoFacts(200, 100, 4_000, 10.0),  # the largest resolution
        2: PhotoFacts(200, 100, 6_000, 20.0),  # same resolution, larger file: kept first
    }
    assert np.argsort(keep_ranks(facts, 3, "largest")).tolist() == [2, 1, 0]
    assert np.argsort(keep_ranks(facts, 3, "newest")).tolist() == [0, 2, 1]
    assert np.argsort(keep_ranks(facts, 3, "oldest")).tolist() == [1, 2, 0]
    assert np.argsort(keep_ranks(facts, 3, "first")).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown keep rule"):
        keep_ranks(facts, 3, "smallest")


def test_facts_come_from_the_header_and_stat(tmp_path):
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    (tmp_path / "notes.jpg").write_text("not a photo")
    os.mkfifo(tmp_path / "pipe.jpg")  # never opened
    fact = facts_of(tmp_path / "a.png")
    assert (fact.width, fact.height, fact.bytes) == (64, 48, (tmp_path / "a.png").stat().st_size)
    assert facts_of(tmp_path / "notes.jpg").width == 0 and facts_of(tmp_path / "pipe.jpg").width == 0
    assert facts_of(tmp_path / "gone.jpg") == PhotoFacts(0, 0, 0, 0.0)


def test_thousands_of_identical_copies_cost_one_score_and_one_row(small_net, tmp_path):
    """2,000 copies of one photo and 3 distinct photos: one decode and one score per distinct
    file, one group, one pairs.csv row for the copies, and duplicates.json linear in the copies."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"distinct{k}.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(folder / "copy0000.png")
    photo = (folder / "copy0000.png").read_bytes()
    for k in range(1, 2000):
        (folder / f"copy{k:04d}.png").write_bytes(photo)
    before = checksums(folder)
    started = time.perf_counter()
    # threshold 1.0: the small random network's scores make no model duplicates, so the one group is the copies
    result = find_duplicates(small_net, folder, torch.device("cpu"), threshold=1.0)
    output = tmp_path / "out"
    write_outputs(result, folder, output, with_scores=False)
    elapsed = time.perf_counter() - started
    assert len(result.names) == 2003 and result.trunk_images == 4 and result.head_evaluations == 4 * 3
    groups = result.groups()
    assert len(groups) == 1 and len(groups[0]) == 2000
    assert result.names[groups[0][0]] == "copy0000.png"  # equal facts: the first name is kept
    removed = json.loads((output / "to_remove.json").read_text())
    assert removed == [f"copy{k:04d}.png" for k in range(1, 2000)]
    rows = list(csv.reader((output / "pairs.csv").open()))
    assert rows[0] == ["first", "second", "score", "reason", "files"]
    assert rows[-1] == ["copy0000.png", "copy0001.png", "1.000000", "identical file", "2000"]
    assert len(rows) == 1 + 4 * 3 // 2 + 1
    duplicates = json.loads((output / "duplicates.json").read_text())
    assert len(duplicates["copy0000.png"]) == 1999 and duplicates["copy1999.png"] == ["copy0000.png"]
    assert sum(len(v) for v in duplicates.values()) == 2 * 1999  # a star, not 2000*1999 entries
    summary = json.loads((output / "summary.json").read_text())
    assert summary["identical copies"] == 1999 and summary["to remove"] == 1999
    assert elapsed < 60, f"{elapsed:.1f} s for 2,003 photos"  # all pairs of the copies: 2 M pairs, minutes
    assert checksums(folder) == before  # nothing deleted or changed


def test_copies_of_an_unreadable_file_are_skipped_with_its_reason(small_net, tmp_path):
    (tmp_path / "notes.jpg").write_text("this is text")
    (tmp_path / "notes copy.jpg").write_text("this is text")
    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "ok.png")
    result = find_duplicates(small_net, tmp_path, torch.device("cpu"))
    assert result.names == ["ok.png"]
    assert {s.path.name: s.reason for s in result.unreadable} == {
        "notes.jpg": "not an image in a format PIL reads",
        "notes copy.jpg": "not an image in a format PIL reads",
    }


def test_the_report_shows_resolution_size_and_date_of_grouped_photos(small_net, tmp_path):
    from samespace.groups import describe

    fact = PhotoFacts(640, 480, 123_456, time.mktime((2026, 1, 2, 3, 4, 0, 0, 0, -1)))
    assert describe({3: fact}) == {3: "640×480 · 123 KB · 2026-01-02 03:04"}
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(folder / "a.png")
    (folder / "b.png").write_bytes((folder / "a.png").read_bytes())
    result = find_duplicates(small_net, folder, torch.device("cpu"))
    write_outputs(result, folder, tmp_path / "out", with_scores=False)
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<small class='facts'>64×48 · ") == 2


def test_best_matches_and_the_pairs_closest_to_the_threshold():
    first, second = np.array([0, 0, 1, 2]), np.array([1, 2, 2, 3])
    scores = np.array([0.9, 0.3, 0.55, 0.49])
    assert best_matches(first, second, scores) == {0: (1, 0.9), 1: (0, 0.9), 2: (1, 0.55), 3: (2, 0.49)}
    # An identical copy's best match is its copy (score 1.0), though no model scored it.
    assert best_matches(first, second, scores, [(3, 4)])[3] == (4, 1.0)
    assert best_matches(np.array([], int), np.array([], int), np.array([])) == {}
    assert closest_to_threshold(first, second, scores, 0.5, 2) == [(0.49, 2, 3), (0.55, 1, 2)]
    everything = [(0.49, 2, 3), (0.55, 1, 2), (0.3, 0, 2), (0.9, 0, 1)]
    assert closest_to_threshold(first, second, scores, 0.5, 10) == everything


def test_the_report_offers_the_model_pairs_closest_to_the_threshold(small_net, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    (folder / "copy.png").write_bytes((folder / "p0.png").read_bytes())
    result = find_duplicates(small_net, folder, torch.device("cpu"), threshold=0.5)
    write_outputs(result, folder, tmp_path / "out", with_scores=False)
    page = (tmp_path / "out" / "report.html").read_text()
    cards = page.count("<p class='verdict'>")
    assert cards == min(10, 12)  # the 5 distinct photos' 10 pairs; the identical copy is no decision
    model = result.reasons == "model"
    nearest = np.sort(np.abs(result.scores[model] - 0.5))
    assert len(nearest) == 10 and "best match identical file: <a href='#p" in page
