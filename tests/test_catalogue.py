"""samespace/catalogue.py: a kept catalogue built, extended, queried, interrupted and refused."""

from __future__ import annotations

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
from samespace import catalogue, dedup
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
    catalogue.append(kept, net, *catalogue.rows_of(embedded), None)
    identical = []
    for name, add in (("B", True), ("C", False)):
        loaded = catalogue.load(kept)
        new = dedup.embed_photos(net, parts / name, CPU)
        result, rows, both = catalogue.against(loaded, new, net.head, threshold=0.5)
        assert result.trunk_images == len(new.scored)  # only the new photos went through the trunk
        found.update(model_pairs(result, parts / name))
        identical += identical_sets(result, parts / name)
        if add:
            catalogue.append(kept, net, rows, both, loaded)
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
    catalogue.append(tmp_path / "kept", net, *catalogue.rows_of(embedded), None)
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
    catalogue.append(kept, net, *catalogue.rows_of(dedup.embed_photos(net, parts / "A", CPU)), None)
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
    ],
)
def test_truncated_or_corrupt_files_are_refused_in_one_line(parts, tmp_path, damage, message):
    kept = saved(parts, tmp_path, small_network())
    what, name = damage.split(" ", 1)
    target = {"npy": kept / "part-000000.npy", "manifest": kept / "part-000000.json", "index": kept / "catalogue.json"}
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
        catalogue.append(kept, net, *catalogue.rows_of(dedup.embed_photos(net, parts / "A", CPU)), loaded)
    with pytest.raises(OutputError, match=r"exists and is not empty: extend a catalogue with --against DIR --add"):
        catalogue.check_new_folder(kept)


ADD_THEN_HANG = """
import sys, time
sys.path[:0] = [{tests!r}, {project!r}]
import torch
from samespace import catalogue, dedup
from test_catalogue import small_network
net = small_network()
loaded = catalogue.load({kept!r})
new = dedup.embed_photos(net, __import__("pathlib").Path({new!r}), torch.device("cpu"))
_, rows, both = catalogue.against(loaded, new, net.head)
def hang(folder, payload):  # every new file written: the moment a kill costs the most
    print("switching", flush=True)
    time.sleep(600)
catalogue.switch = hang
catalogue.append({kept!r}, net, rows, both, loaded)
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
    assert set(after) - set(before) == {"part-000001.json", "part-000001.npy"}  # written, never named
    again = catalogue.load(kept)
    assert again.rows == loaded.rows and np.array_equal(again.first, loaded.first)
    new = dedup.embed_photos(net, parts / "B", CPU)  # the next add clears the leftovers and succeeds
    _, rows, both = catalogue.against(again, new, net.head)
    catalogue.append(kept, net, rows, both, again)
    assert len(catalogue.load(kept)) == len(loaded) + len(rows) and not (kept / catalogue.STAGING).exists()


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
