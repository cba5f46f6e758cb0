"""samespace/catalogue.py: a kept catalogue built, extended, queried, interrupted and refused."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import synthetic
from conftest import PROJECT, float32_atol, run_script, small_trunk, summed_terms
from samespace import candidates, catalogue, dedup
from samespace.errors import DataError, OutputError
from samespace.network import SiameseNet

CPU = torch.device("cpu")


def small_network(seed: int = 0) -> SiameseNet:
    torch.manual_seed(seed)
    net = SiameseNet(pretrained=False, dropouts=(0.3, 0.4, 0.5))
    net.trunk = small_trunk()
    return net.eval()


@pytest.fixture()
def parts(tmp_path) -> Path:
    """Rooms spread over three folders A, B, C (so duplicates cross them) and one byte copy across."""
    made = synthetic.make_split(
        tmp_path / "made", rooms=12, photos_per_room=(3, 3), size=(80, 60), rng=np.random.default_rng(5), singles=6
    )
    union = tmp_path / "union"
    for k, photo in enumerate(sorted(made, key=lambda p: p.path)):
        part = union / "ABC"[k % 3]
        part.mkdir(parents=True, exist_ok=True)
        photo.path.rename(part / f"{photo.room[2]}-{photo.path.stem}.jpg")
    first = sorted((union / "A").iterdir())[0]
    (union / "B" / "copy-of-a.jpg").write_bytes(first.read_bytes())
    return union


def model_pairs(result: dedup.Dedup, folder: Path) -> dict[tuple[str, str], float]:
    """Duplicate pairs the model found, by absolute path (a catalogue names its photos that way)."""
    full = [str((folder / name).resolve()) for name in result.names]
    a, b, s = (c[result.duplicate_reasons == dedup.MODEL] for c in result.duplicate_pairs)
    return {tuple(sorted((full[i], full[j]))): float(p) for i, j, p in zip(a, b, s)}


def identical_sets(result: dedup.Dedup, folder: Path) -> list[set[str]]:
    return [{str((folder / result.names[m]).resolve()) for m in group} for group in result.identical]


def test_built_extended_and_queried_gives_the_pairs_of_one_dedup_over_the_union(parts, tmp_path):
    net = small_network()
    union = dedup.find_duplicates(net, parts, CPU, threshold=0.5, recursive=True, search="all")
    kept = tmp_path / "catalogue"
    embedded = dedup.embed_photos(net, parts / "A", CPU)
    found = model_pairs(dedup.dedup_embedded(embedded, net.head, threshold=0.5), parts / "A")
    catalogue.save(kept, net, embedded)
    identical = []
    for name, add in (("B", True), ("C", False)):
        loaded = catalogue.load(kept)
        new = dedup.embed_photos(net, parts / name, CPU)
        result, addition = catalogue.against(loaded, new, net.head, threshold=0.5)
        assert result.trunk_images == len(new.scored)  # only the new photos went through the trunk
        found.update(model_pairs(result, parts / name))
        identical += identical_sets(result, parts / name)
        if add:
            catalogue.append(kept, net, addition, loaded)
    expected = model_pairs(union, parts)
    assert expected and set(found) == set(expected)
    atol = float32_atol(summed_terms(net.head)) / 4  # other batches of the head: float32 rounding only
    assert all(abs(found[pair] - expected[pair]) <= atol for pair in expected)
    copies = {str((parts / "B" / "copy-of-a.jpg").resolve()), str(sorted((parts / "A").iterdir())[0].resolve())}
    assert identical == identical_sets(union, parts) == [copies]
    assert len(catalogue.load(kept)) == len(list((parts / "A").iterdir())) + len(list((parts / "B").iterdir()))


def test_the_catalogue_keeps_manifest_embeddings_and_identity(parts, tmp_path):
    net = small_network()
    embedded = dedup.embed_photos(net, parts / "B", CPU)
    catalogue.save(tmp_path / "kept", net, embedded)
    loaded = catalogue.load(tmp_path / "kept")
    copy = parts / "B" / "copy-of-a.jpg"
    row = next(r for r in loaded.rows if r.path == str(copy.resolve()))
    assert (row.size, row.mtime_ns) == (copy.stat().st_size, copy.stat().st_mtime_ns)
    assert row.sha256 == catalogue.sha256_of(copy)
    scored = [embedded.paths[p] for p in embedded.scored]
    at = [next(i for i, r in enumerate(loaded.rows) if r.path == str(p.resolve())) for p in scored]
    assert np.array_equal(loaded.first[at], embedded.first.numpy())  # float32, bit for bit
    assert np.array_equal(loaded.second[at], embedded.second.numpy())
    assert loaded.network == catalogue.identity(net)["network"] and loaded.preprocessing == "ours"


def saved(parts: Path, tmp_path: Path, net: SiameseNet) -> Path:
    kept = tmp_path / "kept"
    catalogue.save(kept, net, dedup.embed_photos(net, parts / "A", CPU))
    return kept


def test_another_checkpoint_or_preprocessing_is_refused_in_one_line(parts, tmp_path):
    net = small_network()
    loaded = catalogue.load(saved(parts, tmp_path, net))
    with pytest.raises(DataError, match=r"^catalogue .*: made with another checkpoint \(weights \w{12}, this one"):
        catalogue.check_identity(loaded, small_network(seed=1))
    net.preprocessing = "original"
    with pytest.raises(DataError, match=r"made with preprocessing 'ours', .* pass --preprocessing ours$"):
        catalogue.check_identity(loaded, net)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate npy", r"part-000000.npy is truncated or corrupt"),
        ("flip npy", r"part-000000.npy is truncated or corrupt"),
        ("truncate manifest", r"part-000000.json is truncated or corrupt"),
        ("remove npy", r"part-000000.npy is missing"),
        ("truncate index", r"catalogue.json is unreadable or cut short"),
        ("not a catalogue", r"no catalogue.json in it: not a catalogue"),
        ("truncate nearest", r"nearest-000000.npy is truncated or corrupt"),
        ("remove nearest", r"nearest-000000.npy is missing"),
    ],
)
def test_truncated_or_corrupt_files_are_refused_in_one_line(parts, tmp_path, damage, message):
    kept = saved(parts, tmp_path, small_network())
    what, name = damage.split(" ", 1)
    target = {"npy": kept / "part-000000.npy", "manifest": kept / "part-000000.json", "index": kept / "catalogue.json"}
    target["nearest"] = kept / "nearest-000000.npy"
    if damage == "not a catalogue":
        (kept / "catalogue.json").unlink()
    elif what == "truncate":
        data = target[name].read_bytes()
        target[name].write_bytes(data[: len(data) // 2])
    elif what == "flip":
        data = bytearray(target[name].read_bytes())
        data[-3] ^= 0x40
        target[name].write_bytes(bytes(data))
    else:
        target[name].unlink()
    with pytest.raises(DataError, match=message) as caught:
        catalogue.load(kept)
    assert "\n" not in str(caught.value)


def test_a_query_of_catalogued_photos_and_a_second_add_are_refused(parts, tmp_path):
    net = small_network()
    kept = saved(parts, tmp_path, net)
    loaded = catalogue.load(kept)
    with pytest.raises(DataError, match=r"is catalogued already: query a folder of new photos"):
        catalogue.against(loaded, dedup.embed_photos(net, parts / "A", CPU), net.head)
    with pytest.raises(DataError, match=r"are in it already: nothing added"):
        rows, both = catalogue.rows_of(dedup.embed_photos(net, parts / "A", CPU))
        catalogue.append(kept, net, catalogue.Addition(rows, both, np.zeros((len(rows), 20), np.float32)), loaded)
    with pytest.raises(OutputError, match=r"exists and is not empty: extend a catalogue with --against DIR --add"):
        catalogue.check_new_folder(kept)


NEIGHBOURS = 5


def injected_parts(tmp_path: Path) -> tuple[Path, dict[bytes, tuple[torch.Tensor, torch.Tensor]]]:
    """300 small files over folders A, B, C (one byte copy of an A file in B) and each file's
    injected embeddings, keyed by its bytes: look-alike groups of varied spread, so that some
    photos sit in crowds and others alone (a photo's nearest then differ by direction)."""
    rng = np.random.default_rng(11)
    union, vectors = tmp_path / "union", {}
    centres = rng.standard_normal((40, 2, 1280)).astype(np.float32)
    for k in range(300):
        part = union / "ABC"[0 if k < 150 else 1 if k < 230 else 2]
        part.mkdir(parents=True, exist_ok=True)
        data = f"photo {k}".encode()
        (part / f"p{k:03d}.jpg").write_bytes(data)
        spread = np.float32(rng.choice([0.3, 1.0, 3.0]))
        both = centres[rng.integers(40)] + spread * rng.standard_normal((2, 1280)).astype(np.float32)
        vectors[data] = torch.from_numpy(both[0]), torch.from_numpy(both[1])
    (union / "B" / "copy.jpg").write_bytes((union / "A" / "p000.jpg").read_bytes())
    return union, vectors


def embedded_of(root: Path, parts: list[str], vectors: dict) -> dedup.Embedded:
    """An ``Embedded`` of the files in ``root``'s ``parts`` (as stage 1 gives it: sorted, one
    photo per set of byte copies embedded), with the injected embeddings."""
    paths = sorted(path for part in parts for path in (root / part).iterdir())
    seen: dict[bytes, int] = {}
    copies: dict[int, list[int]] = {}
    for position, path in enumerate(paths):
        data = path.read_bytes()
        copies.setdefault(seen[data], []).append(position) if data in seen else seen.setdefault(data, position)
    scored = list(seen.values())
    first = torch.stack([vectors[paths[i].read_bytes()][0] for i in scored])
    second = torch.stack([vectors[paths[i].read_bytes()][1] for i in scored])
    names = [path.relative_to(root).as_posix() for path in paths]
    return dedup.Embedded(root, paths, names, scored, copies, first, second, [])


def scored_pairs(result: dedup.Dedup, root: Path, new: Path | None = None) -> dict[tuple[str, str], float]:
    """Every pair the head scored, by absolute path; with ``new``, only those involving a photo in it."""
    full = [str((root / name).resolve()) for name in result.names]
    model = result.reasons == dedup.MODEL
    pairs = {
        tuple(sorted((full[a], full[b]))): float(s)
        for a, b, s in zip(result.first[model], result.second[model], result.scores[model])
    }
    inside = str(new.resolve()) + "/" if new is not None else ""
    return {pair: s for pair, s in pairs.items() if any(name.startswith(inside) for name in pair)}


def forward_only(embedded: dedup.Embedded, root: Path, new: Path, k: int) -> set[tuple[str, str]]:
    """Pairs of each new photo with its own k nearest in the union (what a query finds without the
    reverse search), and a check that the union has no near-ties at anyone's k-th place."""
    vectors = candidates.search_vectors(embedded.first, embedded.second).double()
    similarity = vectors @ vectors.T
    similarity.fill_diagonal_(-torch.inf)
    ordered = similarity.sort(dim=1, descending=True).values
    assert (ordered[:, k - 1] - ordered[:, k]).min() > 1e-5  # no tie float32 rounding could flip
    full = [str(embedded.paths[i].resolve()) for i in embedded.scored]
    found = set()
    for row, neighbours in enumerate(similarity.topk(k, dim=1).indices.tolist()):
        if full[row].startswith(str(new.resolve()) + "/"):
            found |= {tuple(sorted((full[row], full[other]))) for other in neighbours}
    return found


def saved_from_a(tmp_path: Path):
    """The injected parts, and a catalogue saved from part A: (net, union, vectors, catalogue folder)."""
    net = small_network()
    union, vectors = injected_parts(tmp_path)
    kept = tmp_path / "kept"
    catalogue.save(kept, net, embedded_of(union, ["A"], vectors), neighbours=NEIGHBOURS)
    return net, union, vectors, kept


def test_in_neighbour_search_built_extended_and_queried_gives_the_new_pairs_of_one_dedup_over_the_union(tmp_path):
    net, union, vectors, kept = saved_from_a(tmp_path)
    atol = float32_atol(summed_terms(net.head)) / 4  # other batches of the head: float32 rounding only
    for parts, add in ((["A", "B"], True), (["A", "B", "C"], False)):
        new = union / parts[-1]
        loaded = catalogue.load(kept)
        result, addition = catalogue.against(
            loaded, embedded_of(new, ["."], vectors), net.head, search="knn", neighbours=NEIGHBOURS
        )
        whole = embedded_of(union, parts, vectors)
        expected = scored_pairs(dedup.dedup_embedded(whole, net.head, search="knn", neighbours=NEIGHBOURS), union, new)
        found = scored_pairs(result, new)
        assert expected and set(found) == set(expected)
        assert all(abs(found[pair] - expected[pair]) <= atol for pair in expected)
        assert set(expected) - forward_only(whole, union, new, NEIGHBOURS)  # the reverse search found some
        if add:
            catalogue.append(kept, net, addition, loaded)
    # the update by --add: the kept similarities are those of a catalogue saved from A and B at once
    union_ab = embedded_of(union, ["A", "B"], vectors)
    fresh = catalogue.nearest_similarities(union_ab.first, union_ab.second, NEIGHBOURS)
    assert np.allclose(catalogue.load(kept).nearest, fresh[catalogue.representatives_of(union_ab)], atol=1e-6)
    files = ["catalogue.json", "nearest-000001.npy", "part-000000.json", "part-000000.npy", "part-000001.json"]
    assert sorted(p.name for p in kept.iterdir()) == [*files, "part-000001.npy"]  # the replaced similarities gone


def test_kept_similarities_are_each_photos_nearest_and_a_wider_search_is_refused(tmp_path):
    net = small_network()
    union, vectors = injected_parts(tmp_path)
    embedded = embedded_of(union, ["A", "B"], vectors)
    catalogue.save(tmp_path / "kept", net, embedded, neighbours=NEIGHBOURS)
    loaded = catalogue.load(tmp_path / "kept")
    unit = candidates.search_vectors(embedded.first, embedded.second)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-torch.inf)
    best = similarity.topk(NEIGHBOURS, dim=1).values.numpy()[catalogue.representatives_of(embedded)]
    assert loaded.neighbours == NEIGHBOURS and np.allclose(loaded.nearest, best, atol=1e-6)
    copy = [row.path for row in loaded.rows].index(str((union / "B" / "copy.jpg").resolve()))
    assert np.array_equal(loaded.nearest[copy], loaded.nearest[0])  # a copy keeps its representative's
    with pytest.raises(DataError, match=r"keeps 5 nearest similarities a photo, --neighbours 6 needs more") as caught:
        catalogue.against(loaded, embedded_of(union / "C", ["."], vectors), net.head, search="knn", neighbours=6)
    assert "\n" not in str(caught.value)


def test_a_format_1_catalogue_is_queried_after_one_line_and_its_add_keeps_format_2(tmp_path, caplog):
    net, union, vectors, kept = saved_from_a(tmp_path)
    query = dict(search="knn", neighbours=NEIGHBOURS)
    new = embedded_of(union / "B", ["."], vectors)
    now, _ = catalogue.against(catalogue.load(kept), new, net.head, **query)
    index = json.loads((kept / "catalogue.json").read_text())
    (kept / index.pop("nearest")["name"]).unlink()
    index.pop("neighbours")
    (kept / "catalogue.json").write_text(json.dumps({**index, "format": 1}))
    old = catalogue.load(kept)
    assert old.nearest is None
    with caplog.at_level("WARNING", logger="samespace.catalogue"):
        before, addition = catalogue.against(old, new, net.head, **query)
    assert [r.message for r in caplog.records if "format 1" in r.message] == [caplog.records[-1].message]
    assert scored_pairs(before, union / "B") == pytest.approx(scored_pairs(now, union / "B"))
    catalogue.append(kept, net, addition, old)
    assert json.loads((kept / "catalogue.json").read_text())["format"] == catalogue.FORMAT == 2
    (kept / "catalogue.json").write_text(json.dumps({**index, "format": 3}))
    with pytest.raises(DataError, match=r"catalogue.json is not a format-2 catalogue index: rebuild it"):
        catalogue.load(kept)


def rewritten_nearest(kept: Path, nearest: np.ndarray, **index) -> None:
    """Replace a catalogue's nearest similarities, with catalogue.json naming the new file's size
    and SHA-256 (so only the content itself can be wrong), and ``index`` changed in it."""
    payload = json.loads((kept / "catalogue.json").read_text())
    path = kept / payload["nearest"]["name"]
    np.save(path, nearest, allow_pickle=False)
    payload["nearest"] = {"name": path.name, "bytes": path.stat().st_size, "sha256": catalogue.sha256_of(path)}
    (kept / "catalogue.json").write_text(json.dumps({**payload, **index}))


@pytest.mark.parametrize(
    "damage, message",
    [
        ("not descending", r"nearest-000000.npy holds similarities that are NaN, above 1 or out of descending order"),
        ("a NaN", r"nearest-000000.npy holds similarities that are NaN, above 1 or out of descending order"),
        ("none kept", r"catalogue.json keeps 0 nearest similarities a photo, not a whole number >= 1"),
        ("not a count", r"catalogue.json keeps 5.0 nearest similarities a photo, not a whole number >= 1"),
    ],
)
def test_nearest_similarities_that_would_lose_pairs_are_refused_in_one_line(tmp_path, damage, message):
    union, vectors = injected_parts(tmp_path)
    kept = tmp_path / "kept"
    catalogue.save(kept, small_network(), embedded_of(union, ["A"], vectors), neighbours=NEIGHBOURS)
    nearest = catalogue.load(kept).nearest
    if damage == "not descending":  # the reverse search counts with a binary search in each list
        rewritten_nearest(kept, nearest[:, ::-1].copy())
    elif damage == "a NaN":
        nearest[3, 1] = np.nan
        rewritten_nearest(kept, nearest)
    elif damage == "none kept":  # no list: no catalogue photo would ever be searched from
        rewritten_nearest(kept, nearest[:, :0].copy(), neighbours=0)
    else:
        rewritten_nearest(kept, nearest, neighbours=5.0)
    with pytest.raises(DataError, match=message) as caught:
        catalogue.load(kept)
    assert "\n" not in str(caught.value)


def test_a_query_loading_while_an_add_switches_reads_the_new_catalogue(tmp_path, monkeypatch):
    net, union, vectors, kept = saved_from_a(tmp_path)
    before = catalogue.load(kept)
    _, addition = catalogue.against(before, embedded_of(union / "B", ["."], vectors), net.head)
    read_segment, calls = catalogue.read_segment, []

    def add_meanwhile(folder, segment):  # another process's --add switches (and drops the old
        calls.append(segment["name"])  # similarities) after this load read catalogue.json
        if len(calls) == 1:
            catalogue.append(kept, net, addition, before)
        return read_segment(folder, segment)

    monkeypatch.setattr(catalogue, "read_segment", add_meanwhile)
    loaded = catalogue.load(kept)
    assert len(loaded) == len(before) + len(addition.rows) and loaded.nearest_file == "nearest-000001.npy"
    assert calls == ["part-000000", "part-000000", "part-000001"]  # read again, once


def test_an_add_from_a_catalogue_that_changed_since_it_was_loaded_is_refused(tmp_path):
    net, union, vectors, kept = saved_from_a(tmp_path)
    loaded = catalogue.load(kept)  # two queries of one state, as two --add processes would load it
    _, with_b = catalogue.against(loaded, embedded_of(union / "B", ["."], vectors), net.head)
    _, with_c = catalogue.against(loaded, embedded_of(union / "C", ["."], vectors), net.head)
    catalogue.append(kept, net, with_b, loaded)
    before = snapshot(kept)
    with pytest.raises(DataError, match=r"changed since it was loaded \(another --add\?\): nothing added") as caught:
        catalogue.append(kept, net, with_c, loaded)  # it would drop B's segment and B's similarities
    assert "\n" not in str(caught.value) and snapshot(kept) == before
    assert len(catalogue.load(kept)) == len(loaded) + len(with_b.rows)


ADD_THEN_HANG = """
import sys, time
sys.path[:0] = [{tests!r}, {project!r}]
import torch
from samespace import candidates, catalogue, dedup
from test_catalogue import small_network
net = small_network()
loaded = catalogue.load({kept!r})
new = dedup.embed_photos(net, __import__("pathlib").Path({new!r}), torch.device("cpu"))
_, addition = catalogue.against(loaded, new, net.head)
def hang(folder, payload):  # every new file written: the moment a kill costs the most
    print("switching", flush=True)
    time.sleep(600)
catalogue.switch = hang
catalogue.append({kept!r}, net, addition, loaded)
"""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_kill_in_the_middle_of_an_add_leaves_the_catalogue_as_it_was(parts, tmp_path):
    net = small_network()
    kept = saved(parts, tmp_path, net)
    before, loaded = snapshot(kept), catalogue.load(kept)
    places = dict(tests=str(PROJECT / "tests"), project=str(PROJECT), kept=str(kept), new=str(parts / "B"))
    code = ADD_THEN_HANG.format(**places)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "switching"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    after = snapshot(kept)
    assert {name: after[name] for name in before} == before  # every file it had, byte for byte
    assert set(after) - set(before) == {"part-000001.json", "part-000001.npy", "nearest-000001.npy"}  # never named
    again = catalogue.load(kept)
    assert again.rows == loaded.rows and np.array_equal(again.first, loaded.first)
    new = dedup.embed_photos(net, parts / "B", CPU)  # the next add clears the leftovers and succeeds
    _, addition = catalogue.against(again, new, net.head)
    catalogue.append(kept, net, addition, again)
    assert len(catalogue.load(kept)) == len(loaded) + len(addition.rows) and not (kept / catalogue.STAGING).exists()


def test_dedup_command_saves_and_queries_a_catalogue(trained, parts, tmp_path):
    checkpoint = trained["checkpoint"]
    common = ["--engine", "torch", "--device", "cpu", "--threshold", "0.9"]
    kept = tmp_path / "kept"
    first = run_script(
        "model_inference.py", "dedup", checkpoint, parts / "A", "--save-catalogue", kept, "--output", tmp_path / "o1",
        *common, cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    added = run_script(
        "model_inference.py", "dedup", checkpoint, parts / "B", "--against", kept, "--add", "--output", tmp_path / "o2",
        *common, cwd=tmp_path,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary["search"].startswith("all against a catalogue of ") and summary["identical copies"] == 1
    duplicates = json.loads((tmp_path / "o2" / "duplicates.json").read_text())
    original = str(sorted((parts / "A").iterdir())[0].resolve())
    assert duplicates["copy-of-a.jpg"] == [original]  # the copy found in the catalogue, never re-embedded
    assert len(catalogue.load(kept)) == len(list(parts.glob("[AB]/*")))
    other = tmp_path / "other"
    shutil.copytree(kept, other)
    (other / "part-000001.npy").write_bytes(b"cut")
    refused = run_script(
        "model_inference.py", "dedup", checkpoint, parts / "C", "--against", other, "--output", tmp_path / "o3",
        *common, cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith("error: catalogue ")
    assert "truncated or corrupt" in refused.stderr and not (tmp_path / "o3").exists()
    wrong = run_script("model_inference.py", "dedup", "--method", "phash", parts / "C", "--against", kept, cwd=tmp_path)
    assert wrong.returncode == 2 and "not with a hash --method" in wrong.stderr


def strided_union(rng: np.random.Generator, n_old: int, n_new: int, width: int) -> catalogue.Union:
    """A union whose catalogue towers are views of one (photos, 2, D) array, as a loaded segment
    holds them, with rows of unequal norms and one all-zero row (``normalize``'s eps case)."""
    both = (rng.standard_normal((n_old + n_new, 2, width)) * rng.uniform(0.1, 10, (n_old + n_new, 2, 1))).astype(
        np.float32
    )
    both[3, 1] = 0
    old, new = torch.from_numpy(both[:n_old]), torch.from_numpy(both[n_old:].copy())
    return catalogue.Union(old[:, 0], old[:, 1], new[:, 0], new[:, 1])


def test_the_union_gathers_across_catalogue_and_new_photos_and_views_runs_in_place():
    union = strided_union(np.random.default_rng(3), 12, 5, 8)
    whole = [torch.cat([union.old_first, union.new_first]), torch.cat([union.old_second, union.new_second])]
    for items in ([2, 14, 0, 16], [13, 15], [4, 1], [], [3, 4, 5], [12, 13, 14]):
        rows = union.rows(torch.tensor(items, dtype=torch.int64))
        for side in (0, 1):
            assert torch.equal(rows[side], whole[side][items])
    run = union.rows(torch.arange(3, 6))
    assert run[0].data_ptr() == union.old_first[3].data_ptr()  # a view: the catalogue is not copied
    assert union.rows(torch.arange(13, 15))[1].data_ptr() == union.new_second[1].data_ptr()
    assert union.rows(torch.tensor([], dtype=torch.int64))[0].shape == (0, 8)


def test_scaled_tower_products_are_the_products_of_the_unit_vectors():
    union = strided_union(np.random.default_rng(4), 40, 6, 64)
    queries = union.unit(torch.arange(40, 46))
    first, second = union.rows(torch.arange(40))
    scale_1, scale_2 = catalogue.tower_scales(first, second)
    scaled = (queries[:, :64] @ first.T) * scale_1 + (queries[:, 64:] @ second.T) * scale_2
    direct = queries.double() @ candidates.search_vectors(first.double(), second.double()).T
    # a product of unit vectors: O(1) values through 128 products, then the scale's few roundings
    assert torch.allclose(scaled.double(), direct, rtol=0, atol=float32_atol(2 * 64 + 4))


def reference_search(union: catalogue.Union, fresh: np.ndarray, pool: np.ndarray, kept: np.ndarray, k: int):
    """search_union's pairs, in float64 from the whole unit vectors: each fresh item with its k
    nearest in the pool, and each catalogue item with the fresh items among its k nearest (its kept
    similarities and the fresh ones ranked together). Returns them and the smallest gap at a k-th
    place (ties there could fall either way): (forward pairs, reverse pairs, gap)."""
    everything = torch.arange(union.n_old + len(union.new_first))
    unit = union.unit(everything).double()
    similarity = unit[fresh] @ unit[pool].T
    similarity[torch.as_tensor(fresh)[:, None] == torch.as_tensor(pool)[None, :]] = -torch.inf
    ordered = similarity.sort(dim=1, descending=True)
    forward = {tuple(sorted((int(f), int(pool[j])))) for f, row in zip(fresh, ordered.indices[:, :k]) for j in row}
    reverse: set[tuple[int, int]] = set()
    gaps = [float((ordered.values[:, k - 1] - ordered.values[:, k]).min())]
    for column, item in enumerate(pool):
        if item >= union.n_old:
            continue
        ranked = torch.cat([torch.from_numpy(kept[item]).double(), similarity[:, column]]).sort(descending=True).values
        gaps.append(float(ranked[k - 1] - ranked[k]))
        reverse |= {(int(item), int(f)) for f, s in zip(fresh, similarity[:, column]) if s >= ranked[k - 1]}
    return forward, reverse, min(gaps)


def test_search_union_finds_the_exact_pairs_whatever_its_blocks_and_byte_copies():
    rng = np.random.default_rng(6)
    union = strided_union(rng, 60, 9, 16)
    pool = np.setdiff1d(np.arange(69), [5, 6, 30, 64])  # byte copies: no run of consecutive items
    fresh = pool[pool >= 60]
    catalogued = pool[pool < 60]
    unit = union.unit(torch.as_tensor(catalogued)).double()
    among = unit @ unit.T
    among.fill_diagonal_(-torch.inf)
    kept = np.full((60, 6), -np.inf, np.float32)
    kept[catalogued] = among.topk(6, dim=1).values.float().numpy()
    forward, reverse, gap = reference_search(union, fresh, pool, kept, 4)
    assert gap > 1e-5 and reverse - forward  # no tie float32 rounding could flip; the reverse test counts
    expected = forward | reverse
    for block in (1, 7, 4096):
        found = catalogue.search_union(fresh, pool, union, kept, 4, block=block)
        assert {tuple(pair) for pair in found.pairs.tolist()} == expected
        assert found.kept.shape == kept.shape and found.fresh.shape == (len(fresh), 6)
        assert (np.diff(found.kept[catalogued], axis=1) <= 0).all()
        assert np.all(found.kept >= kept)  # the kept lists only gain new photos


def resigned_segment(kept: Path, data: bytes) -> None:
    """Replace part-000000.npy with ``data``, catalogue.json naming its new size and SHA-256 (so
    only the content itself can be wrong)."""
    payload = json.loads((kept / "catalogue.json").read_text())
    (kept / "part-000000.npy").write_bytes(data)
    payload["segments"][0]["npy"] = catalogue.described(kept / "part-000000.npy")
    (kept / "catalogue.json").write_text(json.dumps(payload))


@pytest.mark.parametrize(
    "damage, message",
    [
        ("cut data", r"segment 'part-000000' is unreadable \(.* bytes of data for a \(150, 2, 1280\) float32 array\)"),
        ("pickled", r"segment 'part-000000' is unreadable \(it holds object items, not numbers\)"),
        ("big-endian", r"segment part-000000 holds \(150, 2, 1280\) >f4 for 150 photos: rebuild it"),
        ("not npy", r"segment 'part-000000' is unreadable \(.*magic string"),
    ],
)
def test_an_embeddings_file_whose_checksum_matches_but_not_its_header_is_refused(tmp_path, damage, message):
    _, _, _, kept = saved_from_a(tmp_path)
    data = (kept / "part-000000.npy").read_bytes()
    if damage == "cut data":  # its header still promises all photos
        resigned_segment(kept, data[:-1000])
    elif damage == "pickled":
        buffer = io.BytesIO()
        np.save(buffer, np.array([{"x": 1}] * 3, dtype=object), allow_pickle=True)
        resigned_segment(kept, buffer.getvalue())
    elif damage == "big-endian":
        buffer = io.BytesIO()
        np.save(buffer, np.load(kept / "part-000000.npy").astype(">f4"))
        resigned_segment(kept, buffer.getvalue())
    else:
        resigned_segment(kept, b"not an array at all" * 10)
    with pytest.raises(DataError, match=message) as caught:
        catalogue.load(kept)
    assert "\n" not in str(caught.value)


def test_segments_of_different_widths_are_refused_in_one_line(tmp_path):
    _, _, _, kept = saved_from_a(tmp_path)
    payload = json.loads((kept / "catalogue.json").read_text())
    shutil.copy(kept / "part-000000.json", kept / "part-000001.json")
    np.save(kept / "part-000001.npy", np.load(kept / "part-000000.npy")[:, :, :640])
    second = {**payload["segments"][0], "name": "part-000001"}
    second.update({kind: catalogue.described(kept / f"part-000001.{kind}") for kind in ("json", "npy")})
    (kept / "catalogue.json").write_text(json.dumps({**payload, "segments": [payload["segments"][0], second]}))
    with pytest.raises(DataError, match=r"its segments have embeddings of different widths \[640, 1280\]: rebuild it"):
        catalogue.load(kept)


def test_a_loaded_catalogue_equals_what_was_saved_and_is_writable(tmp_path):
    net, union, vectors, kept = saved_from_a(tmp_path)
    loaded = catalogue.load(kept)
    embedded = embedded_of(union, ["A"], vectors)
    rows = catalogue.representatives_of(embedded)
    assert np.array_equal(loaded.first, embedded.first.numpy()[rows])
    assert np.array_equal(loaded.second, embedded.second.numpy()[rows])
    assert loaded.first.flags.writeable and loaded.nearest.flags.writeable  # torch.from_numpy takes them as they are


def test_a_catalogue_saved_after_dedup_reuses_its_neighbour_search(tmp_path, monkeypatch):
    net = small_network()
    union, vectors = injected_parts(tmp_path)
    embedded = embedded_of(union, ["A", "B"], vectors)
    catalogue.save(tmp_path / "searched", net, embedded, neighbours=NEIGHBOURS)
    result = dedup.dedup_embedded(embedded, net.head, search="knn", neighbours=NEIGHBOURS, keep_table=True)
    assert result.neighbour_table.shape == (len(embedded.first), NEIGHBOURS)
    other = dedup.dedup_embedded(embedded, net.head, search="knn", neighbours=NEIGHBOURS - 1, keep_table=True)
    calls = []
    search = candidates.tower_neighbours
    monkeypatch.setattr(candidates, "tower_neighbours", lambda *a, **k: calls.append(1) or search(*a, **k))
    catalogue.save(tmp_path / "reused", net, embedded, neighbours=NEIGHBOURS, result=result)
    assert calls == []  # dedup's table, not a second search
    assert np.array_equal(catalogue.load(tmp_path / "reused").nearest, catalogue.load(tmp_path / "searched").nearest)
    catalogue.save(tmp_path / "wider", net, embedded, neighbours=NEIGHBOURS, result=other)
    assert calls == [1]  # a table of other k is not the one wanted: searched again
    assert np.array_equal(catalogue.load(tmp_path / "wider").nearest, catalogue.load(tmp_path / "searched").nearest)
    assert dedup.dedup_embedded(embedded, net.head, search="knn", neighbours=NEIGHBOURS).neighbour_table is None
