"""local_run.py: local runs, resume, torchrun and the command line."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from tqdm import tqdm

import data
import local_run
import model_def
import synthetic
from local_run import PROJECT_DIR, parse_args, train_locally
from samespace.checkpoints import load_checkpoint
from samespace.errors import ConfigError
from samespace.pairs import build_pairs, wavelet_hashes
from samespace.settings import DATA_DIR_ENV


def test_local_run_writes_a_checkpoint_with_its_metrics(trained):
    report = trained["trial"].report
    assert set(report.validation) >= {"validation_loss", "validation_accuracy", "validation_auc"}
    folder = trained["checkpoint"]
    assert folder.parent == trained["xdg"] / "determined"
    load_data = json.loads((folder / "load_data.json").read_text())
    assert load_data["trial_cls_spec"] == "model_def:SiameseTrial"
    with open(folder / "trial_state.pkl", "rb") as handle:
        assert pickle.load(handle)["batches_trained"] == 3
    code = {p.name for p in (folder / "code").iterdir()}
    assert {"model_def.py", "data.py", "local_run.py", "samespace"} <= code
    assert (folder / "code" / "samespace" / "network.py").is_file()
    assert not code & {".venv", "data", ".git", "runs"}  # .detignore keeps the copy small


def test_checkpoint_records_what_the_run_used(trained):
    """A random trunk is recorded as pretrained: false, and the length trained, not const.yaml's."""
    load_data = json.loads((trained["checkpoint"] / "load_data.json").read_text())
    for hparams in (load_data["hparams"], load_data["experiment_config"]["hyperparameters"]):
        assert hparams["pretrained"] is False and hparams["batches"] == 3 and "epochs" not in hparams
    assert Path(load_data["experiment_config"]["data"]["dir"]).is_dir()
    # the engine that built the feature cache (data.engine auto: onnxruntime on the CPU)
    record = json.loads((trained["checkpoint"] / "samespace.json").read_text())
    assert record["trained with"] == {"trunk engine": "torch" if torch.cuda.is_available() else "onnx"}


def test_resumed_run_continues_at_the_checkpoint_batch(trained, airbnb, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(trained["xdg"]))
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    args = parse_args(
        [
            "--data-dir",
            str(airbnb["dir"]),
            "--batches",
            "5",
            "--no-pretrained",
            "--no-download",
            "--resume",
            trained["checkpoint"].name,
        ]
    )
    resumed = train_locally(model_def.SiameseTrial, args)
    assert resumed.report.first_batch == 3
    with open(Path(resumed.report.checkpoints[-1]) / "trial_state.pkl", "rb") as handle:
        assert pickle.load(handle)["batches_trained"] == 5
    # The resumed model started from the checkpoint's weights, not from scratch.
    original, _ = load_checkpoint(trained["checkpoint"])
    pairs = zip(original.head.parameters(), resumed.net.head.parameters())
    moved = [(a - b.cpu()).abs().max() for a, b in pairs]  # compared on the CPU, wherever it trained
    assert max(moved) < 1.0


def test_cli_reports_data_problems_in_one_line(tmp_path):
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    env.pop(DATA_DIR_ENV, None)
    out = subprocess.run(
        [
            sys.executable,
            str(PROJECT_DIR / "model_def.py"),
            "--data-dir",
            str(tmp_path / "nothing"),
            "--no-download",
            "--no-pretrained",
            "--batches",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: no dataset under")
    assert "Traceback" not in out.stderr


def test_two_local_processes_train_one_model(airbnb, tmp_path):
    """Multi-slot training: two CPU processes under torchrun (gloo), global batch 64 split 32/32,
    validation metrics reduced across both, one checkpoint written by the chief."""
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg"), "OMP_NUM_THREADS": "1"}
    env.update({local_run.DISTRIBUTED_DEVICE_ENV: "cpu"})  # CPU processes on a GPU machine too
    env.pop(DATA_DIR_ENV, None)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            str(PROJECT_DIR / "model_def.py"),
            "--data-dir",
            str(airbnb["dir"]),
            "--batches",
            "4",
            "--no-pretrained",
            "--no-download",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    checkpoints = [p for p in (tmp_path / "xdg" / "determined").iterdir() if p.name != "tensorboard"]
    assert len(checkpoints) == 1
    with open(checkpoints[0] / "trial_state.pkl", "rb") as handle:
        assert pickle.load(handle)["batches_trained"] == 4
    combined = out.stdout + out.stderr
    assert "report_validation_metrics" in combined and "validation_auc" in combined
    split = data.load_split(airbnb["root"] / data.SPLITS["test"])
    pairs = build_pairs(split.rooms, wavelet_hashes(split.images))
    assert f"validated: {len(pairs)} records" in combined  # the whole set, across both processes


# --------------------------------------------------------------------------------------------
# Run lengths, TensorBoard folders, checkpoints kept, divergence, Ctrl-C


@pytest.mark.parametrize(
    "flags, complaint",
    [
        (["--epochs", "0"], "must be at least 1, not 0"),
        (["--batches", "0"], "must be at least 1, not 0"),
        (["--epochs", "-1"], "must be at least 1, not -1"),
        (["--epochs", "two"], "must be a whole number, not 'two'"),
        (["--checkpoint-epochs", "-1"], "must be at least 0, not -1"),
    ],
)
def test_non_positive_lengths_are_refused(flags, complaint, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(flags)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(complaint)
    assert parse_args(["--epochs", "1"]).epochs == 1 and parse_args(["--checkpoint-epochs", "0"]).checkpoint_epochs == 0


def test_config_epochs_zero_is_refused(tmp_path, clean_env):
    config = yaml.safe_load((PROJECT_DIR / "const.yaml").read_text())
    config["hyperparameters"]["epochs"] = 0
    (tmp_path / "zero.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="hyperparameters.epochs = 0: must be an integer >= 1"):
        train_locally(model_def.SiameseTrial, parse_args(["--config", str(tmp_path / "zero.yaml"), "--no-download"]))


def test_runs_started_in_the_same_second_get_their_own_tensorboard_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(local_run.time, "strftime", lambda fmt: "20260101-000000")
    folders = {local_run.tensorboard_folder(tmp_path) for _ in range(3)}
    assert len(folders) == 3 and all(f.is_dir() and f.parent == tmp_path for f in folders)
    assert all(f.name.startswith(f"20260101-000000-{os.getpid()}") for f in folders)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two rooms of two photos per split: 9 batches an epoch."""
    data_dir = tmp_path_factory.mktemp("tiny")
    synthetic.make_dataset(data_dir, train_rooms=2, test_rooms=2, photos_per_room=(2, 2), size=(64, 48))
    return data_dir


def test_a_local_run_keeps_only_its_best_and_latest_checkpoints(tiny, clean_env):
    args = parse_args(["--data-dir", str(tiny), "--epochs", "3", "--no-pretrained", "--no-download"])
    report = train_locally(model_def.SiameseTrial, args).report
    root = clean_env / "xdg" / "determined"
    on_disk = {p for p in root.iterdir() if p.name != "tensorboard"}
    losses = report.losses  # every checkpoint this run wrote, in order, with its validation_loss
    written = list(losses)
    assert len(written) == 3 and set(written) == set(report.checkpoints) | set(report.removed)
    assert all(loss is not None for loss in losses.values())  # one after each epoch's validation
    best, latest = min(written, key=losses.get), written[-1]
    assert on_disk == {Path(best), Path(latest)} and len(on_disk) <= 2
    assert set(report.checkpoints) == {best, latest}
    assert len(list((root / "tensorboard").iterdir())) == 1


def config_with(tmp_path, **hyperparameters) -> str:
    config = yaml.safe_load((PROJECT_DIR / "const.yaml").read_text())
    config["hyperparameters"].update(hyperparameters)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_diverging_run_stops_with_one_line(tiny, clean_env, monkeypatch, capsys):
    """alpha 1.5 (the reported case) is refused by the config check before any work; forced into
    RMSprop anyway, it makes the running average negative: NaN weights after the first step, NaN
    loss from the second, and no checkpoint of NaN weights is written."""
    argv = ["--data-dir", str(tiny), "--batches", "3", "--no-pretrained", "--no-download"]
    assert local_run.main(model_def.SiameseTrial, ["--config", config_with(clean_env, alpha=1.5), *argv]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: hyperparameters.alpha = 1.5: must be")
    train_batch = model_def.SiameseTrial.train_batch

    def alpha_past_one(self, batch, epoch_idx, batch_idx):
        for group in self.optimizer.param_groups:
            group["alpha"] = 1.5
        return train_batch(self, batch, epoch_idx, batch_idx)

    monkeypatch.setattr(model_def.SiameseTrial, "train_batch", alpha_past_one)
    config = config_with(clean_env, compile_optimizer="false")
    assert local_run.main(model_def.SiameseTrial, ["--config", config, *argv]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("stopped: training stopped: the loss is nan at batch 2;") and "the run diverged" in line
    assert line.endswith("no checkpoint was written")
    assert not [p for p in (clean_env / "xdg" / "determined").iterdir() if p.name != "tensorboard"]


def test_a_run_diverging_later_names_its_last_good_checkpoint(tiny, clean_env, monkeypatch, capsys):
    """A huge learning rate from the second epoch on: the epoch-1 checkpoint is the last good one."""
    train_batch = model_def.SiameseTrial.train_batch

    def huge_rate_later(self, batch, epoch_idx, batch_idx):
        if epoch_idx >= 1:
            for group in self.optimizer.param_groups:
                group["lr"] = 1e30
        return train_batch(self, batch, epoch_idx, batch_idx)

    monkeypatch.setattr(model_def.SiameseTrial, "train_batch", huge_rate_later)
    argv = ["--config", config_with(clean_env, compile_optimizer="false"), "--data-dir", str(tiny), "--epochs", "3"]
    assert local_run.main(model_def.SiameseTrial, argv + ["--no-pretrained", "--no-download"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("stopped: training stopped: ") and (" is nan " in line or " is inf " in line)
    kept = [p.name for p in (clean_env / "xdg" / "determined").iterdir() if p.name != "tensorboard"]
    assert len(kept) == 1 and line.endswith(f"last good checkpoint: {kept[0]} (in {clean_env / 'xdg' / 'determined'})")
    net, _ = load_checkpoint(clean_env / "xdg" / "determined" / kept[0])
    assert all(torch.isfinite(p).all() for p in net.parameters())  # the kept checkpoint is good


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_training_with_one_line_saying_how_to_resume(tiny, tmp_path, stop):
    """Ctrl-C, or the SIGTERM a scheduler sends: one line naming the checkpoint and the batch it
    was saved at (where a resumed run starts), not only the batch reached."""
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg"), "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop(DATA_DIR_ENV, None)
    flags = ["--data-dir", str(tiny), "--epochs", "500", "--no-pretrained", "--no-download"]
    run = subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / "model_def.py"), *flags],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, deadline = [], time.monotonic() + 500
    try:
        for line in run.stdout:  # wait for the first checkpoint, then interrupt during training
            lines.append(line)
            if "checkpoint written:" in line or time.monotonic() > deadline:
                break
        assert any("checkpoint written:" in line for line in lines), "".join(lines)[-3000:]
        time.sleep(1)  # into the next epoch's batches
        run.send_signal(stop)
        rest, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    output = "".join(lines) + rest
    assert run.returncode == 128 + stop, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    last = output.strip().splitlines()[-1]
    root = tmp_path / "xdg" / "determined"
    kept = [p.name for p in root.iterdir() if p.name != "tensorboard"]
    latest = next(line for line in reversed(lines + rest.splitlines()) if "checkpoint written:" in line)
    uuid = Path(latest.split("checkpoint written: ")[1].split(" ")[0]).name
    assert uuid in kept
    saved_at = json.loads((root / uuid / "metadata.json").read_text())["steps_completed"]
    how = "" if stop == signal.SIGINT else " by SIGTERM"
    assert last.startswith(f"stopped: interrupted{how} after batch ")
    assert f"continue from checkpoint {uuid} (saved at batch {saved_at}, where training resumes) with: " in last
    assert last.endswith(f"with: python model_def.py {' '.join(flags)} --resume {uuid}")


@pytest.mark.parametrize("failure", ["torch", "errno"])
def test_a_checkpoint_on_a_full_disk_is_one_line_naming_the_last_complete_one(
    tiny, clean_env, monkeypatch, capsys, failure
):
    """The second checkpoint's write runs out of space: as torch reports it (RuntimeError from its
    zip writer, the disk then showing little free space), or as an OSError with ENOSPC. One
    line names the disk and the space needed; the partial folder is gone; the first (complete)
    checkpoint is named, with the command that resumes from it."""
    import errno
    import shutil

    real_save, saves = torch.save, []

    def save_then_fill_the_disk(obj, target, *args, **kwargs):
        saves.append(target)
        if len(saves) == 1:
            return real_save(obj, target, *args, **kwargs)
        Path(target).write_bytes(b"PK\x03\x04 half a zip")  # what a write cut short leaves
        if failure == "errno":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 4030")

    real_usage = shutil.disk_usage
    if failure == "torch":
        monkeypatch.setattr(local_run.shutil, "disk_usage", lambda path: real_usage(path)._replace(free=3 << 20))
    monkeypatch.setattr(torch, "save", save_then_fill_the_disk)
    argv = ["--config", config_with(clean_env, compile_optimizer="false"), "--data-dir", str(tiny), "--epochs", "3"]
    argv += ["--no-pretrained", "--no-download"]
    assert local_run.main(model_def.SiameseTrial, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    root = clean_env / "xdg" / "determined"
    kept = [p.name for p in root.iterdir() if p.name != "tensorboard"]
    assert len(kept) == 1 and len(saves) == 2  # the partial second checkpoint removed
    partial = Path(saves[1]).parent.name
    assert not (root / partial).exists() and partial != kept[0]
    line = err[0]
    assert line.startswith("stopped: cannot write the checkpoint after batch 18: the disk holding ")
    assert f"{root} (mounted at " in line and "a checkpoint needs about " in line
    needed = sum(p.stat().st_size for p in (root / kept[0]).rglob("*") if p.is_file())
    assert f"needs about {needed / 2**20:,.0f} MiB" in line
    assert f"removed the partial checkpoint {partial}; continue from checkpoint {kept[0]} (saved at batch 9, " in line
    assert line.endswith(f"--resume {kept[0]}")


def test_ctrl_c_during_a_checkpoint_write_removes_the_partial_folder(tiny, clean_env, monkeypatch, capsys):
    """Ctrl-C while the second checkpoint is being written: its half-written folder is removed
    and the hint names the first, complete one."""
    real_save, saves = torch.save, []

    def interrupted_write(obj, target, *args, **kwargs):
        saves.append(target)
        if len(saves) == 1:
            return real_save(obj, target, *args, **kwargs)
        Path(target).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_write)
    argv = ["--config", config_with(clean_env, compile_optimizer="false"), "--data-dir", str(tiny), "--epochs", "3"]
    assert local_run.main(model_def.SiameseTrial, [*argv, "--no-pretrained", "--no-download"]) == 130
    (line,) = capsys.readouterr().err.strip().splitlines()
    kept = [p.name for p in (clean_env / "xdg" / "determined").iterdir() if p.name != "tensorboard"]
    assert len(kept) == 1 and not Path(saves[1]).parent.exists()
    assert line.startswith("stopped: interrupted after batch 18; continue from checkpoint ")
    assert f"{kept[0]} (saved at batch 9, where training resumes)" in line and line.endswith(f"--resume {kept[0]}")


def test_more_processes_than_gpus_stop_with_one_line(monkeypatch):
    """torchrun --nproc_per_node=2 on a one-GPU machine: process 1 would die in CUDA with
    "invalid device ordinal"; it stops before touching CUDA or the process group instead."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: pytest.fail("process group started"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv(local_run.DISTRIBUTED_DEVICE_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"only 1 GPU\(s\) are visible: use --nproc_per_node=1") as caught:
        with local_run.local_distributed():
            pass
    assert "\n" not in str(caught.value) and local_run.DISTRIBUTED_DEVICE_ENV in str(caught.value)


def test_cpu_processes_can_be_asked_for_on_a_gpu_machine(monkeypatch):
    """With SAMESPACE_DISTRIBUTED_DEVICE=cpu: gloo, and Determined sees no GPU (so it keeps the
    model on the CPU instead of cuda:LOCAL_RANK)."""
    import determined as det

    started = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda *a: pytest.fail("CUDA device selected"))
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: started.append(backend))
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: started.append("destroyed"))
    monkeypatch.setattr(det.core.DistributedContext, "from_torch_distributed", staticmethod(lambda: "context"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv(local_run.DISTRIBUTED_DEVICE_ENV, "cpu")
    with local_run.local_distributed() as context:
        assert context == "context" and det.gpu.get_gpu_uuids() == []
    assert started == ["gloo", "destroyed"]


def test_every_missing_prerequisite_is_reported_at_once_before_any_work(tmp_path, monkeypatch, capsys):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    monkeypatch.setattr(local_run, "weights_problem", lambda: "URLError: Name or service not known")
    assert local_run.main(model_def.SiameseTrial, ["--data-dir", str(tmp_path / "data"), "--batches", "1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "ImageNet weights: not in the torch hub cache and not downloadable" in lines[0]
    assert "--no-pretrained" in lines[0] and "hyperparameters.pretrained" not in lines[0]
    assert lines[1].startswith("error: Kaggle credentials not found") and "--data-dir" in lines[1]
    assert "SystemExit" not in lines[1]
    assert not (tmp_path / "data").exists()  # nothing written: no folder, no lock file


def test_weights_check_is_quiet_and_one_line(tmp_path, monkeypatch, capfd):
    import torchvision.models._api as api

    def offline(url, *args, **kwargs):
        print(f'Downloading: "{url}" to somewhere')  # what torch.hub prints first, on stdout
        raise OSError("[Errno -2] Name or service not known\nmore detail")

    monkeypatch.setattr(local_run, "weights_path", lambda: tmp_path / "absent.pth")
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    assert local_run.weights_problem() == "OSError: [Errno -2] Name or service not known"
    printed = capfd.readouterr()
    assert "Downloading" not in printed.out + printed.err
    (tmp_path / "absent.pth").write_bytes(b"cached")
    assert local_run.weights_problem() is None  # cached: nothing fetched


def test_demo_photos_are_generated_once_in_the_cache_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(
        local_run, "DEMO_DATASET", dict(train_rooms=2, test_rooms=1, photos_per_room=(2, 2), size=(32, 24))
    )
    first = local_run.demo_dataset()
    assert first == tmp_path / "cache" / "samespace" / "demo" / "data" and "generated" in capsys.readouterr().out
    stamp = {p: p.stat().st_mtime_ns for p in first.rglob("*.jpg")}
    assert local_run.demo_dataset() == first and "reusing" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*.jpg")} == stamp
    (first / local_run.DEMO_MARKER).unlink()  # an interrupted generation: made again, not trusted
    assert local_run.demo_dataset() == first and "generated" in capsys.readouterr().out
    assert sorted(p.name for p in first.parent.iterdir()) == [local_run.DEMO_LOCK, "data"]  # no staging folder left


DEMO_RACER = """
import sys, time
from pathlib import Path
import local_run, synthetic
local_run.DEMO_DATASET = dict(train_rooms=2, test_rooms=1, photos_per_room=(2, 2), size=(32, 24))
make = synthetic.make_dataset
def slow_make(*args, **kwargs):  # generation outlasts the others' start, as the real one does
    time.sleep(2)
    return make(*args, **kwargs)
synthetic.make_dataset = slow_make
ready = Path(sys.argv[1])
(ready / sys.argv[2]).touch()
while len(list(ready.iterdir())) < 3:  # all three imported: start together
    time.sleep(0.01)
print(local_run.demo_dataset())
"""


def test_demos_started_together_generate_the_photos_once(tmp_path):
    """Three demos on a fresh cache: one generates, two wait on the lock beside the folder and
    reuse its photos; nobody deletes another's folder, and no staging folder is left."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(PROJECT_DIR)}
    (tmp_path / "ready").mkdir()
    (tmp_path / "racer.py").write_text(DEMO_RACER)  # a file: the demo hashes its generator's source
    runs = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "racer.py"), str(tmp_path / "ready"), str(n)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n in range(3)
    ]
    outputs = []
    for run in runs:
        try:
            outputs.append(run.communicate(timeout=120)[0])
        finally:
            if run.poll() is None:
                run.kill()
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    said = "".join(outputs)
    data_dir = tmp_path / "cache" / "samespace" / "demo" / "data"
    assert said.count("demo: generated ") == 1 and said.count("demo: reusing ") == 2, said
    assert said.count("demo: waiting for another demo run") == 2, said
    assert all(output.strip().endswith(str(data_dir)) for output in outputs)
    assert (data_dir / local_run.DEMO_MARKER).is_file()
    assert sorted(p.name for p in data_dir.parent.iterdir()) == [local_run.DEMO_LOCK, "data"]
    photos = sorted(p.relative_to(data_dir) for p in data_dir.rglob("*.jpg"))
    assert len(photos) == 6  # 2 train rooms and 1 test room of 2 photos: one generation's worth


def test_epoch_progress_counts_the_trial_batches(monkeypatch):
    monkeypatch.setattr(local_run, "progress_enabled", lambda: True)
    monkeypatch.setattr(local_run, "progress", lambda **options: tqdm(**options, file=io.StringIO(), disable=False))
    context = SimpleNamespace(distributed=SimpleNamespace(rank=0), _epoch_len=5, get_hparams=lambda: {"epochs": 3})
    trial = SimpleNamespace(context=context, train_batch=lambda batch, epoch_idx, batch_idx: {"loss": 0.5})
    callback = local_run.EpochProgress(trial, every=2)
    clock = iter([100.0, 101.0, 102.0])  # one second a batch
    monkeypatch.setattr(local_run.time, "monotonic", lambda: next(clock))
    for batch_idx in range(7, 10):  # resumed in the middle of epoch 2 (of 3: 15 batches)
        assert trial.train_batch(batch=None, epoch_idx=1, batch_idx=batch_idx) == {"loss": 0.5}
    assert (callback.bar.n, callback.bar.total, callback.bar.desc) == (5, 5, "epoch 2/3")
    # Over epochs too: shown at batch 8 (every 2nd on the bar), when batches 9-14 are left, 1 s each.
    assert callback.bar.postfix == "loss=0.5000, run ETA=00:06"
    callback.on_training_epoch_end(1)
    assert callback.bar is None
    assert local_run.run_batches({"batches": 7}, 5) == 7 and local_run.run_batches({"epochs": 2}, None) is None


def test_demo_with_data_dir_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert local_run.main(model_def.SiameseTrial, ["--demo", "--data-dir", str(tmp_path / "mine")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --demo trains on generated photos kept in ")
    assert str(tmp_path / "cache" / "samespace" / "demo" / "data") in err and "leave out --data-dir" in err
    assert "--resume" not in err and not (tmp_path / "cache").exists()  # refused before any work
    with pytest.raises(SystemExit):
        local_run.parse_args(["--help"])
    demo_help = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert "$XDG_CACHE_HOME/samespace/demo (default ~/.cache) and reused" in demo_help


def test_a_run_ends_with_the_next_command_to_try(capsys):
    report = SimpleNamespace(
        validation={"validation_loss": 0.5},
        checkpoints=["/ck/best-uuid", "/ck/latest-uuid"],
        losses={"/ck/best-uuid": 0.4, "/ck/latest-uuid": 0.5},
    )
    context = SimpleNamespace(get_data_config=lambda: {"dir": "/data dir"})
    local_run.summarise(SimpleNamespace(report=report, context=context))
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("next: python model_inference.py evaluate best-uuid --data-dir '/data dir'  (then")
