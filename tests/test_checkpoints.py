"""samespace/checkpoints.py: loading checkpoints safely (ours and the original's), in a fresh
process too; checksums; one-line refusals; bare UUID lookup."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import data
import model_inference
import synthetic
from conftest import float32_atol, summed_terms
from samespace import features, original, scoring, transforms
from samespace.checkpoints import (
    CHECKSUM_FILE,
    find_checkpoint,
    load_checkpoint,
    local_checkpoint,
    local_checkpoint_root,
    open_checkpoint,
    sha256_of,
)
from samespace.errors import CheckpointError, ConfigError
from samespace.settings import DATA_DIR_ENV, DataSettings

CPU = torch.device("cpu")
ORIGINAL_UUID = "7f3c1e2a-9b4d-4c6e-8a1f-0d2e3b4c5a69"
ORIGINAL_HPARAMS = {
    "learning_rate": 0.002061,
    "alpha": 0.926,
    "dropout1": 0.306,
    "dropout2": 0.491,
    "dropout3": 0.562,
    "global_batch_size": 64,
}


def test_torch_load_reads_determined_state_with_weights_only(tmp_path):
    state = {"rng_state": {"np_rng_state": np.random.get_state(), "cpu_rng_state": torch.random.get_rng_state()}}
    torch.save(state, tmp_path / "state_dict.pth")
    loaded = torch.load(tmp_path / "state_dict.pth", weights_only=True)
    assert np.array_equal(loaded["rng_state"]["np_rng_state"][1], state["rng_state"]["np_rng_state"][1])


def fixed_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(6, 960, generator=generator), torch.randn(6, 960, generator=generator)


def test_checkpoint_reloads_in_a_fresh_process_elsewhere_with_the_same_logits(trained, tmp_path):
    first, second = fixed_inputs()
    torch.save({"first": first, "second": second}, tmp_path / "inputs.pt")
    # Compared on the CPU: training may have left the network on a GPU.
    net = copy.deepcopy(trained["trial"].net).cpu().eval()
    with torch.inference_mode():
        expected = net(first, second)
    path = str(trained["checkpoint"])
    script = (
        "import json, sys, torch\n"
        "from determined import pytorch\n"
        f"trial = pytorch.load_trial_from_checkpoint_path({path!r}, trial_kwargs={{'pretrained': False}})\n"
        "trial.net.cpu()\n"
        "x = torch.load('inputs.pt', weights_only=True)\n"
        f"sys.path.insert(0, {str(trained['checkpoint'] / 'code')!r})\n"
        "from samespace import checkpoints\n"  # the checkpoint's own copy of the code
        f"net, _ = checkpoints.load_checkpoint({str(trained['checkpoint'])!r})\n"
        "tnet = trial.net.cpu().eval()\n"  # compared on the CPU: the trial context may pick a GPU
        "print(json.dumps([tnet(x['first'], x['second']).tolist(), net(x['first'], x['second']).tolist(),"
        " checkpoints.__file__]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    via_trial, via_loader, module_file = json.loads(out.stdout.strip().splitlines()[-1])
    assert module_file.startswith(str(trained["checkpoint"]))
    # Reloaded on the CPU: float32 rounding only, also against logits from a GPU run.
    atol = float32_atol(summed_terms(net.towers[0], net.head), scale=expected.abs().max())
    assert np.allclose(via_trial, expected.numpy(), rtol=0, atol=atol)
    assert np.allclose(via_loader, expected.numpy(), rtol=0, atol=atol)


def test_resume_rejects_unknown_checkpoints(clean_env):
    with pytest.raises(CheckpointError, match="no local checkpoint"):
        local_checkpoint("0000-missing")
    with pytest.raises(CheckpointError, match="takes a local checkpoint under"):
        local_checkpoint(str(clean_env / "elsewhere" / "abc"))


def test_load_checkpoint_refuses_what_is_not_a_samespace_checkpoint(trained, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a Determined checkpoint"):
        load_checkpoint(tmp_path / "empty")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "load_data.json").write_text(json.dumps({"trial_cls_spec": "mnist:MNistTrial", "hparams": {}}))
    (foreign / "state_dict.pth").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="MNistTrial"):
        load_checkpoint(foreign)


# --- The original's published checkpoint, rebuilt with random weights in its exact layout ---


class SiameseNetwork(nn.Module):
    """The original's pair of towers, named as in its state dict (``0.net1.*``, ``0.net2.*``);
    as the first stage of an ``nn.Sequential`` it takes the photo pair as one argument."""

    def __init__(self, net1: nn.Module, net2: nn.Module):
        super().__init__()
        self.net1, self.net2 = net1, net2

    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        first, second = pair
        return torch.cat([self.net1(first), self.net2(second)], dim=1)


def original_model(seed: int = 0) -> nn.Sequential:
    """``nn.Sequential(SiameseNetwork(net1, net2), classifier)`` as the original built it, with
    random weights: convs re-initialised (kaiming, fan-in) so features depend on the input (the
    default fan-out init lets the signal vanish), each trunk with its own BatchNorm running
    statistics (as the original's drifted apart), each tower its own Linear."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = torchvision.models.mobilenet_v3_large(weights=None)
        for module in backbone.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        towers = []
        for _ in range(2):
            trunk = copy.deepcopy(backbone.features)
            for module in trunk.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.normal_(0.0, 0.1)
                    module.running_var.uniform_(0.8, 1.25)
            tower = copy.deepcopy(backbone.classifier[:-1])
            nn.init.normal_(tower[0].weight, 0.0, 960**-0.5)
            towers.append(nn.Sequential(nn.Sequential(trunk, backbone.avgpool), nn.Flatten(), tower))
        d1, d2, d3 = ORIGINAL_HPARAMS["dropout1"], ORIGINAL_HPARAMS["dropout2"], ORIGINAL_HPARAMS["dropout3"]
        classifier = nn.Sequential(
            nn.Linear(2560, 2048), nn.ReLU(), nn.Dropout(d1),
            nn.Linear(2048, 1024), nn.ReLU(), nn.Dropout(d2),
            nn.Linear(1024, 512), nn.ReLU(), nn.Dropout(d3),
            nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 1),
        )  # fmt: skip
    return nn.Sequential(SiameseNetwork(*towers), classifier).eval()


def original_preprocess(images: torch.Tensor) -> torch.Tensor:
    """The original's transforms, written independently of samespace.original."""
    x = images.float()
    x = torchvision.transforms.Resize((256, 256), antialias=True)(x)
    x = torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(x)
    return x / 255


def write_original_checkpoint(folder, model: nn.Sequential, form: str = "zip"):
    """A Determined 0.19-style checkpoint folder of the original (``form``: zip, legacy = torch's
    pre-1.6 format, legacy-numpy1 = legacy with numpy 1.x's module names in the pickle)."""
    folder.mkdir(parents=True)
    load_data = {
        "trial_type": "PyTorchTrial",
        "experiment_config": {"data": {"url": "https://example.invalid/airbnb.zip"}, "hyperparameters": {}},
        "hparams": ORIGINAL_HPARAMS,
        "trial_cls_spec": original.TRIAL_SPEC,
    }
    (folder / "load_data.json").write_text(json.dumps(load_data))
    optimizer = torch.optim.RMSprop(model.parameters(), lr=ORIGINAL_HPARAMS["learning_rate"], alpha=0.926)
    state = {
        "models_state_dict": [model.state_dict()],
        "optimizers_state_dict": [optimizer.state_dict()],
        "lr_schedulers_state_dict": [],
        "callbacks": {},
        "rng_state": {
            "cpu_rng_state": torch.random.get_rng_state(),
            "np_rng_state": np.random.get_state(),
            "random_rng_state": random.getstate(),
        },
    }
    path = folder / "state_dict.pth"
    torch.save(state, path, _use_new_zipfile_serialization=form == "zip")
    if form == "legacy-numpy1":  # pickle protocol 2 names globals as text; the legacy format is sequential
        raw = path.read_bytes()
        assert b"numpy._core.multiarray" in raw
        path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    return folder


@pytest.fixture(scope="module")
def original_checkpoint(tmp_path_factory):
    """The original's model, its checkpoint folder (named by a UUID inside ``checkpoints/``) and
    what load_checkpoint makes of it."""
    model = original_model()
    root = tmp_path_factory.mktemp("original")
    folder = write_original_checkpoint(root / "checkpoints" / ORIGINAL_UUID, model)
    net, meta = load_checkpoint(folder, device=CPU)
    return {"model": model, "folder": folder, "cwd": root, "net": net, "meta": meta}


def photo_batch(n: int, seed: int) -> torch.Tensor:
    """Smooth random uint8 photos (256x256): blocky colour fields plus noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=generator) * 255
    fine = nn.functional.interpolate(coarse, size=(256, 256), mode="bilinear", align_corners=False)
    noisy = fine + 20 * torch.randn(n, 3, 256, 256, generator=generator)
    return noisy.clamp(0, 255).round().to(torch.uint8)


# The same values computed in other summation orders, as a share of their scale. Logits: another
# batch shape or the head's first layer split into per-photo shares (PairScorer) reorder float32
# sums of up to 2560 terms (~6e-8 relative each), well inside 1e-5. Trunk features from the
# channels_last copies the inference path runs: oneDNN sums in another order, ~1e-5 of the
# largest feature on a trunk with normalised activations (tests/test_features.py); this random
# trunk's BatchNorm statistics do not match its activations (up to ~400), so rounding compounds
# further over its 15 blocks: measured up to 1.7e-4, hence 1e-3.
NCHW_TOLERANCE, CHANNELS_LAST_TOLERANCE = 1e-5, 1e-3


def close_logits(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = NCHW_TOLERANCE) -> bool:
    scale = expected.abs().max().item()
    return torch.allclose(actual, expected, rtol=tolerance, atol=tolerance * scale)


def test_original_preprocessing_matches_its_transforms():
    images = photo_batch(2, seed=5)
    assert torch.allclose(original.normalise(images), original_preprocess(images), rtol=0, atol=1e-6)
    ours = features.PREPROCESSINGS["ours"](images)
    # The original subtracts mean / std / 255 instead of mean / std: inputs ~2 higher per channel.
    shift = (original.normalise(images) - ours).mean((0, 2, 3))
    assert torch.allclose(shift, torch.tensor([2.11, 2.03, 1.80]), atol=0.01)
    other_size = images[:, :, :200, :180]  # resized as the original did
    assert torch.allclose(original.normalise(other_size), original_preprocess(other_size), rtol=0, atol=1e-5)


def test_the_originals_checkpoint_gives_its_logits(original_checkpoint):
    model, net = original_checkpoint["model"], original_checkpoint["net"]
    assert net.preprocessing == "original" and net.second_trunk is not None
    assert original_checkpoint["meta"]["experiment_config"]["data"] is None  # its loader's section, not ours

    first, second = photo_batch(3, seed=1), photo_batch(3, seed=2)
    siamese, classifier = model
    with torch.inference_mode():
        expected = model((original_preprocess(first), original_preprocess(second))).squeeze(1)
        direct = net(original.normalise(first), original.normalise(second))  # our modules, NCHW
        # The inference path, in two parts: trunk features (channels_last copies of each side's
        # trunk), then towers and head (PairScorer), each against the original's own modules.
        embedder = scoring.Embedder(net, CPU)
        trunk_features = embedder.backbone(torch.cat([first, second]))
        assert trunk_features.shape == (6, 2, 960)  # a trunk per side
        both = original_preprocess(torch.cat([first, second]))
        theirs = torch.stack([siamese.net1[1](siamese.net1[0](both)), siamese.net2[1](siamese.net2[0](both))], 1)
        via_scorer = scoring.PairScorer(net.head, *embedder.embed(trunk_features)).logits(np.arange(3), np.arange(3, 6))
        towers_and_head = classifier(
            torch.cat([siamese.net1[2](trunk_features[:3, 0]), siamese.net2[2](trunk_features[3:, 1])], 1)
        ).squeeze(1)
        # Both trunks matter: side 0's trunk features on both sides give other logits.
        one_trunk = scoring.PairScorer(net.head, *embedder.embed(trunk_features[:, 0])).logits(
            np.arange(3), np.arange(3, 6)
        )
    assert expected.abs().max() > 0.1 and expected.std() > 0.01  # informative logits, not all alike
    assert close_logits(direct, expected)
    assert (trunk_features - theirs).abs().max() <= CHANNELS_LAST_TOLERANCE * theirs.abs().max()
    assert close_logits(via_scorer, towers_and_head)
    assert (one_trunk - expected).abs().max() > 100 * NCHW_TOLERANCE * expected.abs().max()


@pytest.mark.parametrize("form", ["legacy", "legacy-numpy1"])
def test_the_originals_checkpoint_loads_from_torch_1_formats(original_checkpoint, form, tmp_path):
    folder = write_original_checkpoint(tmp_path / form, original_checkpoint["model"], form)
    loaded, reference = load_checkpoint(folder)[0].state_dict(), original_checkpoint["net"].state_dict()
    assert loaded.keys() == reference.keys() and all(torch.equal(loaded[key], reference[key]) for key in reference)


def test_the_feature_cache_key_includes_the_preprocessing(original_checkpoint, tmp_path):
    trunk = original_checkpoint["net"].trunk
    ours = features.FeatureCache(tmp_path, trunk, CPU)
    theirs = features.FeatureCache(tmp_path, trunk, CPU, preprocessing="original")
    assert ours.folder != theirs.folder
    historical = hashlib.sha256(f"{features.trunk_fingerprint(trunk)}|{features.PREPROCESSING}".encode())
    assert ours.folder.name == historical.hexdigest()[:24]  # existing caches of ours stay valid
    with pytest.raises(ConfigError, match="unknown preprocessing"):
        features.FeatureCache(tmp_path, trunk, CPU, preprocessing="imagenet")


def run_cli(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != DATA_DIR_ENV}
    return subprocess.run(
        [sys.executable, model_inference.__file__, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_compare_takes_the_originals_checkpoint_by_uuid(original_checkpoint, airbnb):
    a, b = [p.path for p in airbnb["made"]["test"][:2]]
    out = run_cli("--device", "cpu", "compare", ORIGINAL_UUID, a, b, cwd=original_checkpoint["cwd"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "the original's" in out.stderr and "preprocessing: original" in out.stderr
    printed = [float(x) for x in re.findall(r"\d\.\d{4}", out.stdout)]

    # The in-process inference path (checked against the original's modules above) on the same
    # photos, read the original's way (tests/test_original.py).
    images = original.read_images([a, b])[0]
    embedder = scoring.Embedder(original_checkpoint["net"], CPU)
    scorer = scoring.PairScorer(original_checkpoint["net"].head, *embedder.embed(embedder.backbone(images)))
    a_then_b, b_then_a = torch.sigmoid(scorer.logits(np.array([0, 1]), np.array([1, 0]))).tolist()
    expected = [(a_then_b + b_then_a) / 2, a_then_b, b_then_a]
    assert np.allclose(printed, expected, rtol=0, atol=5e-5 + 1e-6)  # printed with 4 decimals


def test_evaluate_reproduces_the_originals_validation_loss(original_checkpoint, tmp_path, monkeypatch):
    """The README's reproduction command, against the original's own modules on the same pairs."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    data_dir = tmp_path / "data"
    synthetic.make_dataset(data_dir, train_rooms=1, test_rooms=2, photos_per_room=(2, 2), size=(64, 48))
    argv = ["--device", "cpu", "evaluate", str(original_checkpoint["folder"]), "--data-dir", str(data_dir)]
    assert model_inference.main([*argv, "--output", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["preprocessing"] == "original"

    split, pairs = data.load_pairs(DataSettings(download=False), "test", data_dir=data_dir)
    siamese, classifier = original_checkpoint["model"]
    with torch.inference_mode():
        # Its trunks run as the inference path runs trunks: channels_last copies (test_features).
        trunks = [features.inference_trunk(tower[0]) for tower in (siamese.net1, siamese.net2)]
        # The original's read: torchvision at the file's size, float, antialiased resize to 256x256.
        resize = torchvision.transforms.Resize((256, 256), antialias=True)
        read = torch.stack([resize(torchvision.io.read_image(str(photo.path)).float()) for photo in split.photos])
        variants = [original_preprocess(transforms.apply_variant(read, v)) for v in range(8)]
        variants = [x.contiguous(memory_format=torch.channels_last) for x in variants]
        net1 = torch.stack([siamese.net1[2](trunks[0](x).flatten(1)) for x in variants], dim=1)  # (photos, 8, 1280)
        net2 = torch.stack([siamese.net2[2](trunks[1](x).flatten(1)) for x in variants], dim=1)
        index = {name: torch.as_tensor(getattr(pairs, name), dtype=torch.long) for name in ("first", "second")}
        variant = {name: torch.as_tensor(getattr(pairs, f"{name}_variant"), dtype=torch.long) for name in index}
        first, second = net1[index["first"], variant["first"]], net2[index["second"], variant["second"]]
        logits = classifier(torch.cat([first, second], dim=1)).squeeze(1)
    labels = torch.as_tensor(pairs.label, dtype=torch.float32)
    loss = nn.functional.binary_cross_entropy_with_logits(logits.double(), labels.double()).item()
    # Logits within NCHW_TOLERANCE of their scale move the mean loss by at most that much.
    scale = logits.abs().max().item()
    assert report["balanced"]["loss"] == pytest.approx(loss, abs=NCHW_TOLERANCE * scale)
    near_zero = int((logits.abs() < 10 * NCHW_TOLERANCE * scale).sum())  # only these could flip
    accuracy = ((logits > 0).float() == labels).float().mean().item()
    assert report["balanced"]["accuracy"] == pytest.approx(accuracy, abs=(near_zero + 1e-6) / len(labels))


def test_preprocessing_can_be_chosen(original_checkpoint, caplog):
    caplog.set_level("INFO", logger="samespace.checkpoints")
    net, _ = open_checkpoint(original_checkpoint["folder"], CPU, "ours")
    assert net.preprocessing == "ours" and "preprocessing: ours (chosen)" in caplog.text
    net, _ = open_checkpoint(original_checkpoint["folder"], CPU)
    assert net.preprocessing == "original" and "preprocessing: original (the checkpoint's own)" in caplog.text


# --- Checksums (issue 9.3) ---


def copy_checkpoint(source, target):
    """The files load_checkpoint reads (not the code copy)."""
    target.mkdir(parents=True)
    for name in ("load_data.json", "state_dict.pth", CHECKSUM_FILE, "trial_state.pkl"):
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    return target


def flip_4k(path):
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4096] = bytes(byte ^ 0xFF for byte in raw[middle : middle + 4096])
    path.write_bytes(bytes(raw))


def test_checkpoints_carry_a_checksum_and_a_damaged_one_is_refused(trained, airbnb, tmp_path):
    record = json.loads((trained["checkpoint"] / CHECKSUM_FILE).read_text())["state_dict.pth"]
    state_file = trained["checkpoint"] / "state_dict.pth"
    assert record == {"sha256": sha256_of(state_file), "bytes": state_file.stat().st_size}

    damaged = copy_checkpoint(trained["checkpoint"], tmp_path / "damaged")
    flip_4k(damaged / "state_dict.pth")
    with pytest.raises(CheckpointError, match="does not match the checksum") as caught:
        load_checkpoint(damaged)
    assert "\n" not in str(caught.value) and "download the checkpoint again" in str(caught.value)

    a, b = [p.path for p in airbnb["made"]["test"][:2]]
    out = run_cli("--device", "cpu", "compare", damaged, a, b, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "does not match the checksum" in out.stderr


def test_resume_refuses_a_truncated_local_checkpoint_without_a_checksum_record(trained, clean_env):
    folder = copy_checkpoint(trained["checkpoint"], local_checkpoint_root() / trained["checkpoint"].name)
    (folder / CHECKSUM_FILE).unlink()  # written before the record existed
    state = folder / "state_dict.pth"
    state.write_bytes(state.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="not a checkpoint torch reads safely") as caught:
        local_checkpoint(folder.name)
    assert "\n" not in str(caught.value)
    (folder / "trial_state.pkl").write_bytes(b"\x80\x04K")  # cut short too: one line, not an UnpicklingError
    shutil.copy2(trained["checkpoint"] / "state_dict.pth", state)
    with pytest.raises(CheckpointError, match="cannot read .*trial_state.pkl"):
        local_checkpoint(folder.name)


def test_resume_refuses_a_damaged_local_checkpoint(trained, clean_env):
    folder = copy_checkpoint(trained["checkpoint"], local_checkpoint_root() / trained["checkpoint"].name)
    assert local_checkpoint(folder.name)[0] == folder.name
    flip_4k(folder / "state_dict.pth")
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        local_checkpoint(folder.name)


# --- Broken checkpoints: one line each (issue 9.11) ---


@pytest.fixture(scope="module")
def trained_weights(trained):
    state = torch.load(trained["checkpoint"] / "state_dict.pth", weights_only=True)
    return state["models_state_dict"][0]


def with_weights(change):
    def apply(folder, weights):
        changed = dict(weights)
        change(changed)
        torch.save({"models_state_dict": [changed]}, folder / "state_dict.pth")

    return apply


def set_key(key, value):
    return with_weights(lambda weights: weights.__setitem__(key, value))


def edit_load_data(change):
    def apply(folder, weights):
        meta = json.loads((folder / "load_data.json").read_text())
        (folder / "load_data.json").write_text(json.dumps(change(meta)))

    return apply


def write(name, content):
    return lambda folder, weights: (folder / name).write_bytes(content)


def original_meta(meta):
    return {**meta, "trial_cls_spec": original.TRIAL_SPEC, "hparams": {"learning_rate": 1e-3}}


BROKEN = {
    "zero-byte state_dict.pth": (write("state_dict.pth", b""), r"state_dict\.pth is empty \(0 bytes\)"),
    "text as state_dict.pth": (write("state_dict.pth", b"not a torch file"), "not a checkpoint torch reads safely"),
    "truncated state_dict.pth": (
        lambda folder, weights: (folder / "state_dict.pth").write_bytes(
            (folder / "state_dict.pth").read_bytes()[:100_000]
        ),
        "not a checkpoint torch reads safely",
    ),
    "pickled code": (
        lambda folder, weights: torch.save({"models_state_dict": [{"x": random.Random()}]}, folder / "state_dict.pth"),
        "not a checkpoint torch reads safely",
    ),
    "no models_state_dict": (
        lambda folder, weights: torch.save({"weights": {}}, folder / "state_dict.pth"),
        "holds no models_state_dict",
    ),
    "missing keys": (with_weights(lambda w: w.pop("head.0.weight")), r"1 missing \(head\.0\.weight\)"),
    "unexpected keys": (set_key("head.99.weight", torch.zeros(2)), r"1 unexpected \(head\.99\.weight\)"),
    "wrong shapes": (
        set_key("head.0.weight", torch.zeros(3, 4)),
        r"head\.0\.weight \(3, 4\) instead of \(2048, 2560\)",
    ),
    "not a tensor": (set_key("head.0.bias", "zeros"), r"1 not tensors \(head\.0\.bias\)"),
    "non-finite weights": (set_key("head.0.bias", torch.full((2048,), float("nan"))), "non-finite weights"),
    "load_data.json a JSON list": (write("load_data.json", b"[1, 2]"), "holds a JSON list, not an object"),
    "load_data.json not JSON": (write("load_data.json", b"\xff{"), "is not valid JSON"),
    "hparams not a mapping": (edit_load_data(lambda meta: {**meta, "hparams": [1]}), "hparams is not a mapping"),
    "config not a mapping": (
        edit_load_data(lambda meta: {**meta, "experiment_config": "x"}),
        "experiment_config is not a mapping",
    ),
    "hparams missing keys": (edit_load_data(lambda meta: {**meta, "hparams": {"alpha": 0.9}}), r"dropout1.*missing"),
    "original's hparams missing": (edit_load_data(original_meta), "not a checkpoint of the original"),
    "checksum record damaged": (write(CHECKSUM_FILE, b"{"), "is damaged"),
    "checksum record bytes 1e999": (
        write(CHECKSUM_FILE, b'{"state_dict.pth": {"sha256": "0", "bytes": 1e999}}'),
        "is damaged",
    ),
    "checksum record nested deeply": (write(CHECKSUM_FILE, b"[" * 100_000 + b"]" * 100_000), "is damaged"),
    "load_data.json nested deeply": (write("load_data.json", b'{"a":' * 100_000 + b"1" + b"}" * 100_000), "nested"),
    "original's dropout inf": (
        edit_load_data(lambda meta: original_meta(meta) | {"hparams": {**ORIGINAL_HPARAMS, "dropout1": math.inf}}),
        r"dropout1 is inf; each dropout must be a number in \[0, 1\)",
    ),
    "original's dropout negative": (
        edit_load_data(lambda meta: original_meta(meta) | {"hparams": {**ORIGINAL_HPARAMS, "dropout3": -0.5}}),
        r"dropout3 is -0.5; each dropout",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_checkpoints_are_refused_in_one_line(case, trained, trained_weights, tmp_path):
    folder = copy_checkpoint(trained["checkpoint"], tmp_path / "checkpoint")
    if not case.startswith("checksum record"):
        (folder / CHECKSUM_FILE).unlink()  # the record would refuse every changed file first
    damage, message = BROKEN[case]
    damage(folder, trained_weights)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(folder)
    text = str(caught.value)
    assert re.search(message, text), text
    assert "\n" not in text and len(text) < 400


# --- Bare UUIDs (issue 11.6) ---

UUID = "0b9e4f4e-2a5d-4c1b-9f7e-3c2d1a0b9e8f"


def test_find_checkpoint_looks_up_bare_uuids(clean_env, monkeypatch):
    monkeypatch.chdir(clean_env)
    downloaded = clean_env / "checkpoints" / UUID
    downloaded.mkdir(parents=True)
    assert find_checkpoint(UUID) == downloaded.relative_to(clean_env)
    local = local_checkpoint_root() / UUID
    local.mkdir(parents=True)
    assert find_checkpoint(UUID) == local  # the local Determined storage first
    assert find_checkpoint(downloaded) == downloaded  # a path is a path

    other = "1c9e4f4e-2a5d-4c1b-9f7e-3c2d1a0b9e8f"
    with pytest.raises(CheckpointError) as caught:
        find_checkpoint(other)
    text = str(caught.value)
    assert "\n" not in text
    for place in (local_checkpoint_root() / other, clean_env / "checkpoints" / other, clean_env / other):
        assert str(place) in text
    assert f"model_download.py --checkpoint {other}" in text


@pytest.mark.parametrize("reference", ["../../etc", "not-a-uuid", f"{UUID}/..", f"x{UUID}"])
def test_find_checkpoint_takes_only_uuid_shaped_names_to_look_up(reference, clean_env, monkeypatch):
    monkeypatch.chdir(clean_env)
    (local_checkpoint_root() / UUID).mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"not a path, nor a checkpoint UUID"):
        find_checkpoint(reference)
