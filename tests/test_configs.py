"""The experiment configs: what a Determined 0.38 master would reject, the published numbers,
the uploaded context, and Determined's own offline test run of the trial."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from determined.common import context as det_context

from conftest import run_command
from local_run import PROJECT_DIR, const_hparams, read_config
from samespace.errors import ConfigError
from samespace.settings import DataSettings, Hyperparameters

PROJECT = PROJECT_DIR
CONFIGS = ["const.yaml", "best.yaml", "adaptive.yaml", "distributed.yaml"]
HEAD = ("learning_rate", "alpha", "dropout1", "dropout2", "dropout3")
# The original's smoke run, its published best (best trial of its search), and its search space.
SMOKE_RUN = {"learning_rate": 1e-3, "alpha": 0.7, "dropout1": 0.3, "dropout2": 0.5, "dropout3": 0.4, "epochs": 3}
PUBLISHED_BEST = {
    "learning_rate": 0.002061,
    "alpha": 0.926,
    "dropout1": 0.306,
    "dropout2": 0.491,
    "dropout3": 0.562,
    "epochs": 30,
}
SEARCH_SPACE = {
    "learning_rate": (1e-4, 1e-2),
    "alpha": (0.6, 0.99),
    "dropout1": (0.2, 0.6),
    "dropout2": (0.2, 0.6),
    "dropout3": (0.2, 0.6),
}
HPARAM_TYPES = {"const", "int", "double", "log", "categorical"}


def load(name):
    return yaml.safe_load((PROJECT / name).read_text())


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_well_formed_for_a_master(name):
    config = load(name)
    assert config["entrypoint"].endswith("python3 model_def.py")  # a script, not the deprecated module:Class
    searcher = config["searcher"]
    assert searcher["metric"] == "validation_loss" and searcher["smaller_is_better"] is True
    assert "max_length" not in searcher  # deprecated in 0.38
    assert "max_restarts" not in config  # Determined's default: a trial restarts after a lost node
    hparams = config["hyperparameters"]
    assert {"global_batch_size", "epochs", *HEAD} <= set(hparams) and "lr" not in hparams
    assert hparams["global_batch_size"] == 64
    for key, spec in hparams.items():
        if isinstance(spec, dict):
            assert spec["type"] in HPARAM_TYPES, key
            if spec["type"] in {"int", "double", "log"}:
                assert isinstance(spec["minval"], (int, float)) and isinstance(spec["maxval"], (int, float))
                assert spec["minval"] < spec["maxval"], key
        else:
            assert isinstance(spec, (int, float, bool, str)), key
    DataSettings.from_config(config["data"])  # the trial accepts the data section
    if searcher["name"] == "single":
        Hyperparameters.from_hparams(const_hparams(hparams))  # and the hyperparameters


@pytest.mark.parametrize(
    "name, expected", [("const.yaml", SMOKE_RUN), ("best.yaml", PUBLISHED_BEST), ("distributed.yaml", PUBLISHED_BEST)]
)
def test_single_trial_configs_are_the_originals_runs(name, expected):
    config = load(name)
    hparams = const_hparams(config["hyperparameters"])
    assert {k: hparams[k] for k in expected} == expected
    assert config["searcher"]["name"] == "single"
    assert config["data"] == load("best.yaml")["data"]


def test_adaptive_config_is_the_published_search():
    config = load("adaptive.yaml")
    searcher = config["searcher"]
    assert searcher["name"] == "adaptive_asha" and searcher["max_trials"] == 16
    assert config["hyperparameters"]["epochs"] == 30
    assert searcher["time_metric"] == "epochs" and searcher["max_time"] == config["hyperparameters"]["epochs"]
    for key, (low, high) in SEARCH_SPACE.items():
        spec = config["hyperparameters"][key]
        assert (spec["type"], spec["minval"], spec["maxval"]) == ("double", low, high)


def test_distributed_config_uses_the_torch_launcher():
    config = load("distributed.yaml")
    assert config["entrypoint"].startswith("python3 -m determined.launch.torch_distributed ")
    assert config["resources"]["slots_per_trial"] >= 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        ("- a\n- list\n", "not a mapping"),
        ("just words", "not a mapping"),
        ("hyperparameters: [1, 2]\n", "hyperparameters must be a mapping"),
        ("data: 5\n", "data must be a mapping"),
        ("hyperparameters: {a: [unclosed\n", "cannot read config"),
        ("a: &a [*a]\n", "an anchor that contains itself"),
        ("a: " + "[" * 40 + "]" * 40 + "\n", "nested deeper than 32 levels"),
        ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested deeper than 32 levels"),
    ],
)
def test_unusable_config_files_give_one_line(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        read_config(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


# Files that must never reach the master (and every checkpoint's code/): data, photos in any folder
# and case, outputs, environments and the usual places people keep credentials.
NEVER_UPLOADED = [
    "data/Airbnb Data/Training Data/bedroom/x_1_0.jpg",
    "my-photos/x.JPG",
    "my-photos/y.jpeg",
    "my-photos/z.PNG",
    "my-photos/a.webp",
    "my-photos/b.HEIC",
    "my-photos/c.tiff",
    "my-photos/d.TIF",
    "my-photos/e.bmp",
    "my-photos/f.Gif",
    ".venv/lib/big.so",
    "kaggle.json",
    "kaggle (1).json",
    "Kaggle.json",
    "kaggle.json.bak",
    ".kaggle/kaggle.json",
    ".env",
    ".env.local",
    ".env.production",
    ".envrc",
    ".netrc",
    ".aws/credentials",
    ".git-credentials",
    "id_rsa",
    "id_rsa.pub",
    "credentials.json",
    "secrets.yaml",
    ".pypirc",
    "token.txt",
    "auth.json",
    ".det_token",
    "access_token",
    "sub/dir/secrets.yaml",
    "runs/events.out",
    "checkpoints/abc/state_dict.pth",
    "samespace-outputs/dedup/report.html",
    "__pycache__/m.pyc",
]


def test_detignore_keeps_data_outputs_and_credentials_out_of_the_context(tmp_path):
    """Through Determined's own context reader (pathspec gitwildmatch, case-sensitive)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=PROJECT, capture_output=True, text=True).stdout.splitlines()
    files = tracked or [p.name for p in PROJECT.iterdir() if p.is_file()]
    for relative in files + [".detignore"]:
        if (PROJECT / relative).is_file():
            (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(PROJECT / relative, tmp_path / relative)
    for junk in NEVER_UPLOADED:
        (tmp_path / junk).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / junk).write_bytes(b"x" * 1000)
    uploaded = {f.path for f in det_context.read_v1_context(tmp_path)}
    assert {"model_def.py", "data.py", "startup-hook.sh", "samespace/network.py", *CONFIGS} <= uploaded
    assert {f for f in files if f != ".detignore" and (PROJECT / f).is_file()} <= uploaded  # every project file
    assert sorted(set(NEVER_UPLOADED) & uploaded) == []
    inside = {p for p in uploaded if "/" in p and p.split("/")[0] in {"data", "my-photos", ".venv", ".aws", ".kaggle"}}
    assert sorted(inside) == []


@pytest.mark.parametrize("feature_cache", ["true", "false"])
def test_determined_local_test_mode_runs_the_trial(airbnb, tmp_path, feature_cache):
    """``det experiment create --local --test`` (offline in 0.38.1): one training and one
    validation batch, on the cached and on the end-to-end path. It only accepts the legacy
    ``module:Class`` entrypoint, so the run overrides const.yaml's script entrypoint."""
    det = shutil.which("det") or str(Path(sys.executable).parent / "det")
    out = run_command(
        [
            det,
            "experiment",
            "create",
            "--local",
            "--test",
            "const.yaml",
            ".",
            "--config",
            "entrypoint=model_def:SiameseTrial",
            "--config",
            "hyperparameters.pretrained=false",
            "--config",
            f"data.dir={airbnb['dir']}",
            "--config",
            "data.download=false",
            "--config",
            f"data.feature_cache={feature_cache}",
        ],
        cwd=PROJECT,
        env={"XDG_DATA_HOME": tmp_path / "xdg"},
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "The test experiment passed." in out.stdout  # Determined logs to stdout
    assert "report_validation_metrics" in out.stdout and "validation_loss" in out.stdout
    # One validation batch, of the first (same-room) pairs: its null AUC says so, not "two rooms".
    assert "validation_why_null" in out.stdout and "a test run validates one batch" in out.stdout
    assert "needs at least two rooms" not in out.stdout


def alias_bomb(levels: int = 9) -> str:
    """About 1 KB of YAML that expands to 10**levels values when written out (billion laughs)."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_under_an_unknown_key_is_refused_before_any_work(tmp_path, clean_env):
    import local_run

    config = (
        (PROJECT / "const.yaml").read_text()
        + "unknown_extra:\n"
        + "".join("  " + line + "\n" for line in alias_bomb().splitlines())
    )
    assert len(config) < 4000
    (tmp_path / "bomb.yaml").write_text(config)
    before = sorted(clean_env.rglob("*"))
    args = local_run.parse_args(["--config", str(tmp_path / "bomb.yaml"), "--no-download"])
    with pytest.raises(ConfigError, match=r"expands to more than 10,000 values") as error:
        local_run.local_config(args)
    assert "\n" not in str(error.value)
    assert sorted(clean_env.rglob("*")) == before  # nothing written
    assert read_config(PROJECT / "const.yaml") == yaml.safe_load((PROJECT / "const.yaml").read_text())
