"""model_def.py: the network's structure and freezing, the trial's metrics, local runs,
checkpoint reload and resume."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import data
import model_def

# Trainable: two towers (960*1280 + 1280 each) and the head (2560->2048->1024->512->64->1).
TOWER_PARAMETERS = 960 * 1280 + 1280
HEAD_PARAMETERS = (2560 * 2048 + 2048) + (2048 * 1024 + 1024) + (1024 * 512 + 512) + (512 * 64 + 64) + (64 + 1)
TRAINABLE = 2 * TOWER_PARAMETERS + HEAD_PARAMETERS


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return model_def.SiameseNet(pretrained=False, dropouts=(0.3, 0.4, 0.5))


def test_trainable_parameters_are_the_towers_and_head(net):
    assert TRAINABLE == 10_360_961
    assert sum(p.numel() for p in model_def.trainable_parameters(net)) == TRAINABLE
    assert not any(p.requires_grad for p in net.trunk.parameters())
    assert all(p.requires_grad for p in net.towers.parameters()) and all(p.requires_grad for p in net.head.parameters())


def test_network_shape_follows_the_original(net):
    linears = [m for m in net.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (2560, 2048),
        (2048, 1024),
        (1024, 512),
        (512, 64),
        (64, 1),
    ]
    assert [m.p for m in net.head if isinstance(m, nn.Dropout)] == [0.3, 0.4, 0.5]
    for tower in net.towers:
        assert isinstance(tower[0], nn.Linear) and (tower[0].in_features, tower[0].out_features) == (960, 1280)
        assert isinstance(tower[1], nn.Hardswish) and isinstance(tower[2], nn.Dropout)
    assert net.towers[0][0].weight is not net.towers[1][0].weight  # two towers, not weight-tied
    images = torch.rand(2, 3, 64, 64)
    assert net.trunk(images).shape == (2, 960)
    assert net.eval()(images, images).shape == (2,)


def test_trunk_stays_in_eval_mode_and_its_batchnorm_never_moves(net):
    torch.manual_seed(1)
    model = model_def.SiameseNet(pretrained=False, dropouts=(0.3, 0.4, 0.5)).train()
    assert not model.trunk.training and all(not m.training for m in model.trunk.modules())
    assert model.head.training and model.towers.training
    before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    optimizer = torch.optim.RMSprop(model_def.trainable_parameters(model), lr=1e-3, alpha=0.9)
    for _ in range(3):  # the end-to-end path: images through the trunk in train()
        first, second = torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64)
        loss = nn.functional.binary_cross_entropy_with_logits(model(first, second), torch.tensor([1.0, 0, 1, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.trunk.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    bn = [m for m in model.trunk.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn and all(int(m.num_batches_tracked) == 0 for m in bn)


def test_pair_metrics_reducer_covers_the_whole_set_across_slots():
    reducers = [model_def.PairMetrics(), model_def.PairMetrics()]
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=40), (rng.random(40) > 0.5).astype(np.float32)
    for part in range(4):  # two batches on each of two slots
        reducers[part % 2].update(
            torch.tensor(logits[part * 10 : (part + 1) * 10]), torch.tensor(labels[part * 10 : (part + 1) * 10])
        )
    result = reducers[0].cross_slot_reduce([r.per_slot_reduce() for r in reducers])
    torch_loss = nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(logits), torch.tensor(labels, dtype=torch.float64)
    )
    assert result["validation_loss"] == pytest.approx(float(torch_loss), abs=1e-6)  # logits kept as float32
    assert result["validation_accuracy"] == pytest.approx(np.mean((logits > 0) == (labels == 1)))
    ranks = [(a, b) for a in logits[labels == 1] for b in logits[labels == 0]]
    assert result["validation_auc"] == pytest.approx(np.mean([a > b for a, b in ranks]))


def test_data_settings_reject_unknown_keys():
    with pytest.raises(model_def.ConfigError, match="unknown data setting"):
        model_def.DataSettings.from_config({"dri": "x"})
    with pytest.raises(model_def.ConfigError, match="data.sampler"):
        model_def.DataSettings.from_config({"sampler": "fast"})


def test_torch_load_reads_determined_state_with_weights_only(tmp_path):
    state = {"rng_state": {"np_rng_state": np.random.get_state(), "cpu_rng_state": torch.random.get_rng_state()}}
    torch.save(state, tmp_path / "state_dict.pth")
    loaded = torch.load(tmp_path / "state_dict.pth", weights_only=True)
    assert np.array_equal(loaded["rng_state"]["np_rng_state"][1], state["rng_state"]["np_rng_state"][1])


# ---------------------------------------------------------------- local runs and checkpoints


def fixed_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(6, 960, generator=generator), torch.randn(6, 960, generator=generator)


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
    assert {"model_def.py", "data.py", "features.py"} <= code
    assert not code & {".venv", "data", ".git", "runs"}  # .detignore keeps the copy small


def test_checkpoint_reloads_in_a_fresh_process_elsewhere_with_the_same_logits(trained, tmp_path):
    first, second = fixed_inputs()
    torch.save({"first": first, "second": second}, tmp_path / "inputs.pt")
    expected = trained["trial"].net.eval()(first, second).detach()
    path = str(trained["checkpoint"])
    script = (
        "import json, sys, torch\n"
        "from determined import pytorch\n"
        f"trial = pytorch.load_trial_from_checkpoint_path({path!r}, trial_kwargs={{'pretrained': False}})\n"
        "x = torch.load('inputs.pt', weights_only=True)\n"
        f"sys.path.insert(0, {str(trained['checkpoint'] / 'code')!r})\n"
        "import model_def\n"  # the checkpoint's own copy of the code
        f"net, _ = model_def.load_checkpoint({str(trained['checkpoint'])!r})\n"
        "print(json.dumps([trial.net.eval()(x['first'], x['second']).tolist(), net(x['first'], x['second']).tolist(),"
        " model_def.__file__]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    via_trial, via_loader, module_file = json.loads(out.stdout.strip().splitlines()[-1])
    assert module_file.startswith(str(trained["checkpoint"]))
    assert np.allclose(via_trial, expected.numpy(), atol=1e-6) and np.allclose(via_loader, expected.numpy(), atol=1e-6)


def test_resumed_run_continues_at_the_checkpoint_batch(trained, airbnb, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(trained["xdg"]))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    args = model_def.parse_args(
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
    resumed = model_def.train_locally(args)
    assert resumed.report.first_batch == 3
    with open(Path(resumed.report.checkpoints[-1]) / "trial_state.pkl", "rb") as handle:
        assert pickle.load(handle)["batches_trained"] == 5
    # The resumed model started from the checkpoint's weights, not from scratch.
    original, _ = model_def.load_checkpoint(trained["checkpoint"])
    moved = [(a - b).abs().max() for a, b in zip(original.head.parameters(), resumed.net.head.parameters())]
    assert max(moved) < 1.0


def test_resume_rejects_unknown_checkpoints(clean_env):
    with pytest.raises(model_def.CheckpointError, match="no local checkpoint"):
        model_def.local_checkpoint("0000-missing")
    with pytest.raises(model_def.CheckpointError, match="takes a local checkpoint under"):
        model_def.local_checkpoint(str(clean_env / "elsewhere" / "abc"))


def test_load_checkpoint_refuses_what_is_not_a_samespace_checkpoint(trained, tmp_path):
    with pytest.raises(model_def.CheckpointError, match="checkpoint not found"):
        model_def.load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(model_def.CheckpointError, match="not a Determined checkpoint"):
        model_def.load_checkpoint(tmp_path / "empty")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "load_data.json").write_text(json.dumps({"trial_cls_spec": "mnist:MNistTrial", "hparams": {}}))
    (foreign / "state_dict.pth").write_bytes(b"x")
    with pytest.raises(model_def.CheckpointError, match="MNistTrial"):
        model_def.load_checkpoint(foreign)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "load_data.json").write_text((trained["checkpoint"] / "load_data.json").read_text())
    (broken / "state_dict.pth").write_bytes(b"not a torch file")
    with pytest.raises(model_def.CheckpointError, match="cannot load"):
        model_def.load_checkpoint(broken)


def test_cli_reports_data_problems_in_one_line(tmp_path):
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    env.pop(data.DATA_DIR_ENV, None)
    out = subprocess.run(
        [
            sys.executable,
            str(model_def.PROJECT_DIR / "model_def.py"),
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


# ---------------------------------------------------------------- optimizer


def tiny_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,)).float()
    return model, x, y


def run_steps(model, optimizer, x, y, steps):
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_compiled_optimizer_step_matches_the_eager_one():
    hparams = {"lr": 0.002061, "alpha": 0.926, "compile_optimizer": "true"}
    eager_model, x, y = tiny_problem()
    compiled_model, _, _ = tiny_problem()
    eager = torch.optim.RMSprop(eager_model.parameters(), lr=hparams["lr"], alpha=hparams["alpha"])
    compiled = model_def.make_optimizer(compiled_model, hparams, "cpu", compile_after=2)
    run_steps(eager_model, eager, x, y, 6)
    run_steps(compiled_model, compiled, x, y, 6)
    assert compiled.step.calls == 6 and compiled.step.compiled is not None and not compiled.step.failed
    for a, b in zip(eager_model.parameters(), compiled_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(
        eager.state_dict()["state"][0]["square_avg"], compiled.state_dict()["state"][0]["square_avg"], atol=1e-7
    )


def test_failed_compilation_falls_back_to_eager(monkeypatch, caplog):
    def broken(fn):
        def call(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    model, x, y = tiny_problem()
    reference, _, _ = tiny_problem()
    optimizer = model_def.make_optimizer(model, {"lr": 1e-3, "alpha": 0.9}, "cpu", compile_after=0)
    eager = torch.optim.RMSprop(reference.parameters(), lr=1e-3, alpha=0.9)
    run_steps(model, optimizer, x, y, 3)
    run_steps(reference, eager, x, y, 3)
    assert optimizer.step.failed and caplog.text.count("continuing eagerly") == 1
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))


def test_compile_setting():
    model, _, _ = tiny_problem()
    assert isinstance(model_def.make_optimizer(model, {"lr": 1e-3, "alpha": 0.9}, "cpu").step, model_def.CompiledAfter)
    plain = model_def.make_optimizer(model, {"lr": 1e-3, "alpha": 0.9, "compile_optimizer": False}, "cpu")
    assert not isinstance(plain.step, model_def.CompiledAfter)
    on_gpu = model_def.make_optimizer(model, {"lr": 1e-3, "alpha": 0.9}, "cuda")  # auto: eager on a GPU
    assert not isinstance(on_gpu.step, model_def.CompiledAfter)
    with pytest.raises(model_def.ConfigError, match="compile_optimizer"):
        model_def.make_optimizer(model, {"lr": 1e-3, "alpha": 0.9, "compile_optimizer": "sometimes"}, "cpu")


def test_two_local_processes_train_one_model(airbnb, tmp_path):
    """Multi-slot training: two CPU processes under torchrun (gloo), global batch 64 split 32/32,
    validation metrics reduced across both, one checkpoint written by the chief."""
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg"), "OMP_NUM_THREADS": "1"}
    env.pop(data.DATA_DIR_ENV, None)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            str(model_def.PROJECT_DIR / "model_def.py"),
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
    pairs = data.build_pairs(split.rooms, data.wavelet_hashes(split.images))
    assert f"validated: {len(pairs)} records" in combined  # the whole set, across both processes
