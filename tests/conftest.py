"""Shared fixtures: a generated Airbnb-layout dataset (real JPEG files) and odd inputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import data  # noqa: E402
import local_run  # noqa: E402
import model_def  # noqa: E402
import synthetic  # noqa: E402
from samespace import network  # noqa: E402
from samespace.settings import DATA_DIR_ENV  # noqa: E402


def save_exif_rotated(path: Path) -> None:
    """A photo stored sideways with EXIF orientation 6 (display rotated 90 degrees clockwise):
    stored left half red / right half blue, so upright it is top red / bottom blue."""
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :30] = (255, 0, 0)
    stored[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, exif=exif, quality=95)


def add_odd_files(split_dir: Path) -> dict[str, list[Path]]:
    """Files a real photo folder may hold. Returns the ones that must be kept (each a new room,
    except the EXIF photo's twin) and the ones that must be skipped."""
    folder = split_dir / "bedroom"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    noise = lambda: rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)  # noqa: E731
    kept = []
    for name, mode in [
        ("oslo_7001_0.jpg", "L"),
        ("oslo_7002_0.png", "RGBA"),
        ("oslo_7003_0.jpg", "CMYK"),
        ("oslo_7004_0.png", "P"),
        ("oslo_7005_0.png", "RGB"),
    ]:
        Image.fromarray(noise()).convert(mode).save(folder / name)
        kept.append(folder / name)
    save_exif_rotated(folder / "oslo_7006_0.jpg")
    Image.fromarray(noise()).save(folder / "oslo_7006_1.jpg")  # same room as the EXIF photo
    kept += [folder / "oslo_7006_0.jpg", folder / "oslo_7006_1.jpg"]

    skipped = []
    good = folder / "oslo_7007_0.jpg"
    Image.fromarray(noise()).save(good, quality=95)
    truncated = folder / "oslo_7008_0.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    good.unlink()
    (folder / "oslo_7009_0.jpg").write_text("not an image, just text named like a photo")
    Image.fromarray(noise()).save(folder / "holiday-snap.jpg")  # name does not parse
    (split_dir / "oslo_7010_0.jpg").write_bytes((folder / "oslo_7005_0.png").read_bytes())  # no room-type folder
    skipped += [truncated, folder / "oslo_7009_0.jpg", folder / "holiday-snap.jpg", split_dir / "oslo_7010_0.jpg"]
    return {"kept": kept, "skipped": skipped}


@pytest.fixture(scope="session")
def airbnb(tmp_path_factory):
    """A small dataset: generated rooms plus odd files in the training split."""
    data_dir = tmp_path_factory.mktemp("airbnb")
    made = synthetic.make_dataset(data_dir, train_rooms=5, test_rooms=3, photos_per_room=(2, 3), size=(96, 72))
    odd = add_odd_files(data.dataset_root(data_dir) / data.SPLITS["train"])
    return {"dir": data_dir, "root": data.dataset_root(data_dir), "made": made, "odd": odd}


@pytest.fixture()
def clean_env(monkeypatch, tmp_path):
    """No data-dir override, checkpoints under a temporary $XDG_DATA_HOME."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path


def pytest_configure(config):
    os.environ.setdefault("TQDM_DISABLE", "1")
    # The user's ~/.cache is theirs: the tests' engine exports and demo data go to a folder of
    # this session (shared by its tests, so one trunk is exported once), removed at the end.
    config.samespace_cache = tempfile.mkdtemp(prefix="samespace-tests-cache-")
    os.environ["XDG_CACHE_HOME"] = config.samespace_cache


def pytest_unconfigure(config):
    folder = getattr(config, "samespace_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def trained(airbnb, tmp_path_factory):
    """A short local run (3 batches, random trunk weights) on the generated dataset.

    Returns the trial (its network as trained), the checkpoint folder and the $XDG_DATA_HOME used.
    """
    xdg = tmp_path_factory.mktemp("xdg")
    args = local_run.parse_args(
        ["--data-dir", str(airbnb["dir"]), "--batches", "3", "--no-pretrained", "--no-download"]
    )
    with local_run.environment(XDG_DATA_HOME=str(xdg)):
        trial = local_run.train_locally(model_def.SiameseTrial, args)
    return {"trial": trial, "checkpoint": Path(trial.report.checkpoints[-1]), "xdg": xdg}


def small_trunk(seed: int = 0):
    """A deliberately input-dependent stand-in for the trunk: random-weight MobileNetV3 gives
    nearly the same features for every photo (std ~1e-10), which makes scores tie. This one maps
    a 256x256 image to 960 features through 16x16 average pooling and a fixed random projection."""
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    projection = nn.Linear(3 * 16 * 16, 960)
    with torch.no_grad():
        projection.weight.copy_(torch.randn(960, 768, generator=generator) / 768**0.5)
        projection.bias.zero_()
    trunk = nn.Sequential(nn.AvgPool2d(16), nn.Flatten(1), projection, nn.Tanh())
    return trunk.requires_grad_(False).eval()


@pytest.fixture()
def small_net():
    """SiameseNet with random towers and head and the small trunk above."""
    import torch

    torch.manual_seed(0)
    net = network.SiameseNet(pretrained=False, dropouts=(0.3, 0.4, 0.5))
    net.trunk = small_trunk()
    return net.eval()


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


def run_command(command, *, cwd, env=None, timeout=600):
    """Run ``command`` as a user would: without $SAMESPACE_DATA_DIR and PYTHONPATH, plus ``env`` (a
    None value removes a variable). Returns the CompletedProcess with text stdout and stderr."""
    environment = {k: v for k, v in os.environ.items() if k not in (DATA_DIR_ENV, "PYTHONPATH")}
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = str(value)
    return subprocess.run(
        [*map(str, command)], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )


def run_script(script_or_module, *args, cwd, env=None, timeout=600):
    """Run a project script (``"model_inference.py"``, a module object or a path), a module
    (``"torch.distributed.run"``, run with -m) or ``"-c", code`` in a fresh interpreter, through
    ``run_command``."""
    target = getattr(script_or_module, "__file__", None) or str(script_or_module)
    if target in ("-c", "-m"):
        command = [target]
    elif target.endswith(".py"):
        command = [str(PROJECT / target)]  # an absolute path stays as it is
    else:
        command = ["-m", target]
    return run_command([sys.executable, *command, *args], cwd=cwd, env=env, timeout=timeout)


def strict_json(payload) -> dict:
    """``payload`` through JSON as a strict reader parses it: NaN and Infinity are refused."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    text = payload if isinstance(payload, str) else json.dumps(payload)
    return json.loads(text, parse_constant=refuse)


# Lines libraries print to stderr on some machines, not ours: Determined on GPU machines without apex.
LIBRARY_LINES = ("Failed to import apex.",)


def our_lines(stderr: str) -> list[str]:
    """The non-empty stderr lines our code wrote, without known library noise."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(LIBRARY_LINES)]


# Float comparisons. Two float32 computations of the same values that differ only in the order of
# their sums (another batch size, BLAS/oneDNN kernel, CPU model, or a GPU) differ by rounding: the
# error of a sum of n products grows like sqrt(n) * 2**-24 of the magnitude of its terms
# (Higham & Mary, "A new approach to probabilistic rounding error analysis", 2019), layer by layer.
FLOAT32_ROUNDOFF = 2.0**-24


def summed_terms(*modules) -> int:
    """The products each output sums over, added over the layers of ``modules``: the n above.
    Adaptive pools count 32x32 inputs, the largest in MobileNetV3-Large on 256x256 photos."""
    import math

    from torch import nn

    n = 0
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Linear):
                n += m.in_features
            elif isinstance(m, nn.Conv2d):
                n += m.in_channels // m.groups * math.prod(m.kernel_size)
            elif isinstance(m, nn.AvgPool2d):
                n += math.prod(m.kernel_size) if isinstance(m.kernel_size, tuple) else m.kernel_size**2
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                n += 32 * 32
    return n


def float32_atol(terms: int, scale: float = 1.0) -> float:
    """Absolute tolerance for float32 values computed through ``terms`` summed products in another
    order. ``scale`` is the magnitude of the values along the way (activations here are O(1), so
    at least 1); the factor 16 leaves room for the bound's constant and for correlated errors.
    A real bug (wrong pair, variant, layer or weights) moves values by orders of magnitude more."""
    return 16 * terms**0.5 * FLOAT32_ROUNDOFF * max(float(scale), 1.0)
