"""model_inference.py: evaluate, compare and dedup as a user runs them, on generated photos: the
figures, and that every bad input is one line before any work."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import model_inference
from conftest import checksums, run_script, strict_json
from samespace import candidates, dedup, engine, groups
from samespace.baselines import hashes


def random_photos(folder: Path, names, seed: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / name)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def checkpoint_with(trained, tmp_path: Path, **hparams) -> Path:
    """The trained checkpoint with some hyperparameters changed (its weights linked, not copied)."""
    folder = tmp_path / "checkpoint"
    folder.mkdir(parents=True)
    meta = json.loads((trained["checkpoint"] / "load_data.json").read_text())
    meta["hparams"].update(hparams)
    (folder / "load_data.json").write_text(json.dumps(meta))
    (folder / "state_dict.pth").symlink_to(trained["checkpoint"] / "state_dict.pth")
    return folder


def test_cli_on_a_training_checkpoint(trained, airbnb, photo_folder, tmp_path):
    checkpoint = trained["checkpoint"]
    assert json.loads((checkpoint / "load_data.json").read_text())["hparams"]["pretrained"] is False
    a, b = [p.path for p in airbnb["made"]["test"][:2]]
    out = run_script(model_inference, "compare", checkpoint, a, b, "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "P(same space)" in out.stdout
    assert out.stderr.count("scores are meaningless") == 1  # random trunk: said once

    evaluate = ["evaluate", checkpoint, "--data-dir", airbnb["dir"], "--output", tmp_path / "eval"]
    out = run_script(model_inference, *evaluate, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    report = strict_json((tmp_path / "eval" / "evaluation.json").read_text())
    assert {"balanced", "all_distinct_pairs"} <= set(report)
    assert "auc" not in report["balanced"] and "roc_auc" in report["balanced"]  # one name per figure
    assert report["engine"] == ("torch" if torch.cuda.is_available() else "onnx")  # --engine auto
    assert len(report["warnings"]) == 1 and "scores are meaningless" in report["warnings"][0]
    assert (tmp_path / "eval" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PR-AUC" in out.stdout and "ROC-AUC" in out.stdout

    before = checksums(photo_folder)
    out = run_script(model_inference, "dedup", checkpoint, photo_folder, "--recursive", "--scores", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    produced = tmp_path / "samespace-outputs" / f"dedup-{photo_folder.name}"
    written = {p.name for p in produced.iterdir()}
    assert written == {"duplicates.json", "pairs.csv", "report.html", "summary.json", "to_remove.json"}
    summary = json.loads((produced / "summary.json").read_text())
    assert len(summary["warnings"]) == 1 and "scores are meaningless" in summary["warnings"][0]
    assert summary["engine"] == report["engine"]  # what ran the trunk, recorded beside the results
    assert "Warning: checkpoint" in (produced / "report.html").read_text()
    assert "skipped notes.jpg: not an image in a format PIL reads" in out.stderr
    # A random trunk scores every pair alike, so how many pass 0.5 depends on the run; the two
    # byte-identical files (grey.png, sub/nested.png) are duplicates whatever the score.
    assert re.match(
        r"18 photos, \d+ duplicate groups?, \d+ duplicate pairs? at >= 0.5 \(1 of them byte-identical", out.stdout
    )
    assert "3 files skipped" in out.stdout
    assert checksums(photo_folder) == before
    again = run_script(model_inference, "dedup", checkpoint, photo_folder, cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.strip().endswith("pass --force to overwrite its reports")


def test_help_is_fast_and_parsing_imports_no_torch(tmp_path):
    started = time.perf_counter()
    out = run_script(model_inference, "--help", cwd=tmp_path)
    elapsed = time.perf_counter() - started
    assert out.returncode == 0 and "dedup" in out.stdout
    assert elapsed < 2.0, f"--help took {elapsed:.2f} s"
    code = (
        "import sys, model_inference\n"
        "model_inference.parse_args(['dedup', 'ck', 'folder', '--device', 'cpu'])\n"
        "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'data') if m in sys.modules))"
    )
    out = run_script("-c", code, cwd=model_inference.Path(model_inference.__file__).parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_help_texts_agree_with_the_code():
    assert model_inference.ALL_PAIRS_LIMIT == dedup.ALL_PAIRS_LIMIT
    assert model_inference.INDEX_METHODS == candidates.METHODS
    assert model_inference.EXACT_LIMIT == candidates.EXACT_LIMIT
    assert model_inference.ENGINES == engine.ENGINES
    assert model_inference.HASH_METHODS == hashes.METHODS
    assert model_inference.HASH_DISTANCE == hashes.DEFAULT_DISTANCE
    assert model_inference.KEEP_RULES == groups.KEEP_RULES


def test_engine_is_auto_unless_chosen_before_or_after_the_subcommand():
    assert model_inference.parse_args(["dedup", "ck", "folder"]).engine == "auto"
    assert model_inference.parse_args(["--engine", "torch", "compare", "ck", "a", "b"]).engine == "torch"
    assert model_inference.parse_args(["evaluate", "ck", "--engine", "onnx"]).engine == "onnx"


def test_every_argument_has_help_and_device_goes_anywhere():
    parser = model_inference.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == {"evaluate", "compare", "dedup"}
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.dest} has no help"
    parse = model_inference.parse_args
    assert parse(["dedup", "c", "f"]).device == "auto"
    assert parse(["--device", "cpu", "dedup", "c", "f"]).device == "cpu"
    assert parse(["dedup", "c", "f", "--device", "cpu"]).device == "cpu"
    assert parse(["evaluate", "c", "--device", "cuda:1"]).device == "cuda:1"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--neighbours", "-3"], "argument --neighbours: must be at least 1, not -3"),
        (["--neighbours", "0"], "argument --neighbours: must be at least 1, not 0"),
        (["--neighbours", "two"], "argument --neighbours: must be a whole number, not 'two'"),
        (["--threshold", "1.5"], "argument --threshold: must be between 0 and 1, not 1.5"),
        (["--threshold", "nan"], "argument --threshold: must be between 0 and 1, not nan"),
        (["--threshold", "two"], "argument --threshold: must be a number, not 'two'"),
        (
            ["--method", "phash", "--threshold", "10.5"],
            "argument --threshold: for --method phash, whole bits from 0 to 64, not 10.5",
        ),
        (
            ["--method", "ahash", "--threshold", "65"],
            "argument --threshold: for --method ahash, whole bits from 0 to 64, not 65",
        ),
        (
            ["--method", "md5"],
            "argument --method: invalid choice: 'md5' (choose from 'samespace', 'phash', 'dhash', 'whash', 'ahash')",
        ),
    ],
)
def test_bad_arguments_are_one_line(arguments, message, capsys):
    with pytest.raises(SystemExit) as stop:
        model_inference.parse_args(["dedup", "c", "f", *arguments])
    assert stop.value.code == 2
    assert one_line_error(capsys) == f"error: {message} (see model_inference.py dedup --help)"


def test_devices_are_checked_in_one_line(monkeypatch, capsys, tmp_path):
    random_photos(tmp_path, ["a.jpg", "b.jpg"])
    compare = ["compare", str(tmp_path / "missing"), str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert model_inference.main(["--device", "bogus", *compare]) == 2
    assert one_line_error(capsys) == "error: --device 'bogus' is not a device: use auto, cpu, cuda or cuda:N"
    assert model_inference.main([*compare, "--device", "meta"]) == 2
    assert "only auto, cpu, cuda and cuda:N" in one_line_error(capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    assert model_inference.main([*compare, "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA GPU is available" in one_line_error(capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert model_inference.main([*compare, "--device", "cuda:3"]) == 2
    assert one_line_error(capsys) == "error: --device cuda:3: this machine has 1 GPU(s), cuda:0 to cuda:0"


def test_output_location_is_checked_before_any_work(tmp_path, monkeypatch, capsys):
    """A missing checkpoint shows the order: the output is refused before the checkpoint is read."""
    photos = tmp_path / "photos"
    random_photos(photos, ["a.jpg"])
    (tmp_path / "afile").write_text("x")
    before = checksums(tmp_path)
    dedup_into = ["dedup", str(tmp_path / "missing"), str(photos), "--force", "--output"]
    for output in (photos, photos / "reports", tmp_path):
        assert model_inference.main([*dedup_into, str(output)]) == 2
        assert f"overlaps the input {photos}" in one_line_error(capsys)
    assert model_inference.main([*dedup_into, str(tmp_path / "afile" / "sub")]) == 2
    assert one_line_error(capsys) == (
        f"error: output {tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} is a file, not a folder; pass --output DIR"
    )
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.access(locked, os.W_OK):  # root writes anywhere: simulate the read-only folder
        monkeypatch.setattr(model_inference.os, "access", lambda path, mode: Path(path) != locked)
    assert model_inference.main([*dedup_into, str(locked / "out")]) == 2
    assert f"no permission to write in {locked}" in one_line_error(capsys)
    evaluate = ["evaluate", str(tmp_path / "ck"), "--data-dir", str(tmp_path), "--output"]
    assert model_inference.main([*evaluate, str(tmp_path / "ck" / "eval")]) == 2
    assert "overlaps the input" in one_line_error(capsys)
    assert checksums(tmp_path) == before and not (locked / "out").exists()


def test_dedup_into_a_folder_whose_parent_is_read_only_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """dedup builds its new set beside the output folder (reports.output_set): a parent it cannot
    write in is one line before the checkpoint is read, the old reports untouched."""
    photos, parent = tmp_path / "photos", tmp_path / "shared"
    random_photos(photos, ["a.jpg"])
    (parent / "out").mkdir(parents=True)
    (parent / "out" / "report.html").write_text("old")
    monkeypatch.setattr(model_inference.os, "access", lambda path, mode: Path(path) != parent)
    argv = ["dedup", str(tmp_path / "missing"), str(photos), "--method", "phash", "--force", "--output"]
    assert model_inference.main([*argv, str(parent / "out")]) == 2
    assert f"no permission to write in {parent}, where the new reports are built" in one_line_error(capsys)
    assert [p.name for p in (parent / "out").iterdir()] == ["report.html"]


def test_evaluate_without_data_names_the_command_that_fetches_it(tmp_path, capsys):
    assert model_inference.main(["evaluate", str(tmp_path / "ck"), "--data-dir", str(tmp_path / "none")]) == 2
    message = one_line_error(capsys)
    assert f"python data.py --data-dir {tmp_path / 'none'}" in message and "--data-dir DIR" in message
    assert "data.download" not in message
    assert not (tmp_path / "samespace-outputs").exists()


def test_evaluate_pointed_at_a_flat_folder_or_a_file_shows_the_layout(tmp_path, capsys):
    flat = tmp_path / "my photos"
    random_photos(flat, ["IMG_1.jpg", "IMG_2.jpg"])
    assert model_inference.main(["evaluate", str(tmp_path / "ck"), "--data-dir", str(flat)]) == 2
    message = one_line_error(capsys)
    assert "holds photos directly (2 photos)" in message and "Airbnb Data/Test Data/<room-type>/" in message
    assert f"dedup CHECKPOINT {flat}" in message and "python data.py" not in message  # no download into it
    assert model_inference.main(["evaluate", str(tmp_path / "ck"), "--data-dir", str(flat / "IMG_1.jpg")]) == 2
    message = one_line_error(capsys)
    assert "is a file, not a folder" in message and "Airbnb Data/Test Data/<room-type>/" in message
    (tmp_path / "other" / "Airbnb Data").mkdir(parents=True)  # no Test Data in it
    assert model_inference.main(["evaluate", str(tmp_path / "ck"), "--data-dir", str(tmp_path / "other")]) == 2
    assert "no Airbnb Data/Test Data/<room-type>/" in one_line_error(capsys)


def test_evaluate_with_one_room_writes_null_figures_with_reasons(trained, tmp_path, capsys, caplog):
    random_photos(tmp_path / "data" / "Airbnb Data" / "Test Data" / "bedroom", ["oslo_1_0.jpg", "oslo_1_1.jpg"])
    cache = tmp_path / "features"
    arguments = ["evaluate", str(trained["checkpoint"]), "--data-dir", str(tmp_path / "data")]
    with caplog.at_level("WARNING", logger="samespace.inference"):
        code = model_inference.main([*arguments, "--output", str(tmp_path / "out"), "--cache-dir", str(cache)])
    assert code == 0, capsys.readouterr().err
    report = strict_json((tmp_path / "out" / "evaluation.json").read_text())
    assert report["balanced"]["roc_auc"] is None and "two rooms" in report["balanced"]["why_null"]
    assert report["all_distinct_pairs"]["pairs"] == 1 and report["all_distinct_pairs"]["pr_auc"] is None
    printed = capsys.readouterr().out
    assert "ROC-AUC n/a" in printed and "PR-AUC n/a" in printed and "nan" not in printed
    notes = [r.getMessage() for r in caplog.records if "n/a figures" in r.getMessage()]
    assert len(notes) == 1 and "two rooms" in notes[0]
    assert any(cache.rglob("*")), "features cached under --cache-dir"


def test_random_trunk_warning_only_for_random_trunks(trained, tmp_path, capsys, caplog):
    random_photos(tmp_path, ["a.jpg", "b.jpg"])
    pair = [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    for pretrained, warnings in ((False, 1), (True, 0)):
        checkpoint = checkpoint_with(trained, tmp_path / str(pretrained), pretrained=pretrained)
        caplog.clear()
        with caplog.at_level("WARNING", logger="samespace.inference"):
            assert model_inference.main(["compare", str(checkpoint), *pair, "--device", "cpu"]) == 0
        said = [r.getMessage() for r in caplog.records if "meaningless" in r.getMessage()]
        assert len(said) == warnings
        printed = capsys.readouterr().out
        assert "P(same space) of a.jpg and b.jpg" in printed
        assert re.search(r"^\d\.\d{4}  (same space|different spaces) at threshold 0\.5  ", printed)


def test_cli_refuses_what_is_not_a_checkpoint(tmp_path, airbnb, capsys):
    a, b = [str(p.path) for p in airbnb["made"]["test"][:2]]
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "model.pt").write_bytes(b"weights")
    for target in (tmp_path / "stray", tmp_path / "missing"):
        assert model_inference.main(["compare", str(target), a, b]) == 2
        one_line_error(capsys)


def test_cli_reports_an_unreadable_photo_in_one_line(tmp_path, airbnb, capsys):
    (tmp_path / "x.jpg").write_text("text")
    other = str(airbnb["made"]["test"][0].path)
    assert model_inference.main(["compare", str(tmp_path / "ck"), str(tmp_path / "x.jpg"), other]) == 2
    assert one_line_error(capsys) == "error: cannot read x.jpg: not an image in a format PIL reads"


def test_compare_never_opens_a_fifo(tmp_path):
    """In a child process with a timeout, so that a regression fails instead of hanging the suite."""
    os.mkfifo(tmp_path / "pipe.jpg")
    random_photos(tmp_path, ["a.jpg"])
    compare = ["compare", tmp_path / "ck", tmp_path / "pipe.jpg", tmp_path / "a.jpg"]
    out = run_script(model_inference, *compare, cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: cannot read pipe.jpg: not a regular file but a FIFO"


def test_dedup_with_a_non_utf8_name_and_identical_bytes(trained, tmp_path):
    """Names are kept as os.listdir gives them and printed escaped; byte-identical files are
    duplicates even when a random trunk scores every pair near 0.5."""
    folder = tmp_path / "photos"
    random_photos(folder, ["a.jpg", "b.jpg"])
    shutil.copyfile(folder / "a.jpg", folder / os.fsdecode(b"caf\xe9.jpg"))
    (folder / os.fsdecode(b"broken\xff.jpg")).write_text("not a photo")
    output = tmp_path / "out"
    out = run_script(
        model_inference, "dedup", trained["checkpoint"], folder, "--threshold", "0.9", "--output", output, cwd=tmp_path
    )
    assert "skipped broken\\xff.jpg: not an image in a format PIL reads" in out.stderr
    assert out.returncode == 0, out.stderr[-2000:]
    assert "3 photos, 1 duplicate group, 1 duplicate pair at >= 0.9 (1 of them byte-identical" in out.stdout
    assert "1 file skipped" in out.stdout
    found = json.loads((output / "duplicates.json").read_text())
    assert len(found) == 3 and sum(bool(v) for v in found.values()) == 2  # a.jpg and the café copy, each other's


def test_hash_dedup_needs_no_checkpoint_and_the_default_method_does(capsys):
    args = model_inference.parse_args(["dedup", "--method", "whash", "folder"])
    assert (args.checkpoint, str(args.folder), args.threshold) == (None, "folder", 10)
    assert model_inference.parse_args(["dedup", "c", "f"]).threshold == 0.5
    with pytest.raises(SystemExit):
        model_inference.parse_args(["dedup", "folder"])
    assert one_line_error(capsys).startswith("error: the following arguments are required: checkpoint")


def test_dedup_by_phash_writes_the_same_outputs(tmp_path):
    """--method phash: a copy and a slightly resized copy are found at imagededup's default 10
    bits, the other photos are not; the same four outputs as samespace dedup."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(3):  # smooth photos: hashes see low frequencies only
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((160, 120), Image.BICUBIC).save(folder / f"p{i}.png")
    shutil.copyfile(folder / "p0.png", folder / "p0-copy.png")
    Image.open(folder / "p0.png").resize((150, 112), Image.BILINEAR).save(folder / "p0-smaller.png")
    before = checksums(folder)
    output = tmp_path / "out"
    out = run_script(
        model_inference, "dedup", "--method", "phash", folder, "--output", output, "--scores", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # The byte-identical pair is hashed once, as samespace dedup scores it once: its first file
    # (p0-copy.png) stands for both, so p0.png is listed with its copy only.
    assert "5 photos, 1 duplicate group, 2 duplicate pairs within 10 bits by phash" in out.stdout
    found = json.loads((output / "duplicates.json").read_text())
    assert sorted(name for name, _ in found["p0-copy.png"]) == ["p0-smaller.png", "p0.png"]
    assert found["p1.png"] == [] and found["p2.png"] == []
    assert found["p0.png"] == [["p0-copy.png", 1.0]]  # identical bytes
    summary = strict_json(json.loads((output / "summary.json").read_text()))
    assert summary["threshold"] == round(1 - 10 / 64, 4) and summary["search"] == "phash <= 10 bits"
    assert summary["checkpoint"].startswith("phash (imagededup 0.3.3") and "engine" not in summary  # no trunk ran
    assert (output / "pairs.csv").read_text().count("\n") == 1 + 2 and (output / "report.html").exists()
    assert checksums(folder) == before


def test_evaluate_with_hash_baselines_scores_the_same_pairs(trained, airbnb, tmp_path, capsys):
    """--baselines phash,ahash: their rows in evaluation.json score every distinct Test Data pair,
    as SameSpace's all_distinct_pairs, and the printed table lists SameSpace first."""
    arguments = ["evaluate", str(trained["checkpoint"]), "--data-dir", str(airbnb["dir"]), "--output"]
    assert model_inference.main([*arguments, str(tmp_path / "bad"), "--baselines", "phash,vgg99"]) == 2
    names = ", ".join(model_inference.BASELINE_METHODS)
    assert one_line_error(capsys) == f"error: unknown method vgg99: choose from {names} or all"
    assert not (tmp_path / "bad").exists()
    chosen = "trunk-cosine,phash,ahash,autoencoder"
    assert model_inference.main([*arguments, str(tmp_path / "out"), "--baselines", chosen]) == 0
    report = strict_json((tmp_path / "out" / "evaluation.json").read_text())
    assert list(report["methods"]) == ["samespace", *chosen.split(",")]  # samespace first, the reference
    natural = report["all_distinct_pairs"]
    assert report["methods"]["samespace"]["roc_auc"] == natural["roc_auc"]  # the same scores of the same pairs
    assert report["methods"]["samespace"]["pr_auc"] == natural["pr_auc"]
    balanced = report["balanced"]  # and on the evaluation's balanced pairs, each side in its variant
    assert report["methods"]["samespace"]["balanced"]["roc_auc"] == balanced["roc_auc"]
    assert report["methods"]["samespace"]["balanced"]["pr_auc"] == balanced["pr_auc"]
    assert any("256x256 variant pixels" in note for note in report["methods"]["phash"]["notes"])
    for row in report["methods"].values():
        assert row["pairs"] == natural["pairs"] and row["positives"] == natural["positives"]
        assert row["balanced"]["pairs"] == balanced["pairs"] and row["balanced"]["positives"] == balanced["positives"]
        assert 0.0 <= row["balanced"]["roc_auc"] <= 1.0 and 0.0 <= row["balanced"]["pr_auc"] <= 1.0, row
        assert 0.0 <= row["roc_auc"] <= 1.0 and 0.0 <= row["pr_auc"] <= 1.0, row
        assert row["threshold_chosen_on"].startswith("best-F1 threshold chosen on every distinct Training Data pair")
    assert report["methods"]["samespace"]["weights"] == "random weights"  # the test checkpoint's trunk
    with Image.open(tmp_path / "out" / "methods.png") as picture:
        assert picture.format == "PNG"
    printed = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(printed) if line.startswith("method"))
    assert [line.split()[0] for line in printed[start + 2 : start + 7]] == ["samespace", *chosen.split(",")]
    phash = printed[start + 4].split()
    assert phash[1:3] == [f"{report['methods']['phash']['roc_auc']:.4f}", f"{report['methods']['phash']['pr_auc']:.4f}"]


def test_baselines_without_training_data_is_one_line(tmp_path, capsys):
    test_split = tmp_path / "data" / "Airbnb Data" / "Test Data" / "kitchen"
    random_photos(test_split, ["oslo_1_1.jpg", "oslo_1_2.jpg"])
    arguments = ["evaluate", "no-such-checkpoint", "--data-dir", str(tmp_path / "data"), "--baselines", "phash"]
    assert model_inference.main([*arguments, "--output", str(tmp_path / "out")]) == 2
    said = one_line_error(capsys)
    assert "Training Data" in said and "is missing" in said and "leave out --baselines" in said


def test_baseline_names_match_the_package():
    from samespace.baselines import table

    assert model_inference.BASELINE_METHODS == table.NAMES


def test_compare_verdict_follows_the_dedup_rule():
    assert model_inference.verdict(0.5, 0.5) == "same space"  # at the threshold is a duplicate, as in dedup
    assert model_inference.verdict(0.4999, 0.5) == "different spaces"
    assert model_inference.parse_args(["compare", "ck", "a", "b", "--threshold", "0.8"]).threshold == 0.8


def test_threshold_from_is_checked_first_and_excludes_threshold(tmp_path, capsys):
    (tmp_path / "evaluation.json").write_text("{}")
    args = ["compare", "no-such-checkpoint", "a.jpg", "b.jpg", "--threshold-from", str(tmp_path / "evaluation.json")]
    assert model_inference.main(args) == 2
    said = capsys.readouterr().err.strip()
    assert said.startswith("error: --threshold-from ") and "no best-F1 threshold" in said and "\n" not in said
    with pytest.raises(SystemExit) as stopped:
        model_inference.parse_args(["dedup", "ck", "f", "--threshold", "0.4", "--threshold-from", "e.json"])
    assert stopped.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
