"""model_download.py: choice of checkpoints, protection of existing folders, and one-line errors.
No master runs here: the client is replaced at the boundary by a small fake, except for the
unreachable-master and bad-credential cases, which use the real client against loopback."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from determined.common.api import errors
from determined.experimental import client

import model_download


class FakeCheckpoint:
    def __init__(self, uuid, trial_id, loss):
        self.uuid = uuid
        self.training = SimpleNamespace(
            trial_id=trial_id,
            validation_metrics={"avgMetrics": {"validation_loss": loss}},
            experiment_config={"searcher": {"metric": "validation_loss"}},
        )
        self.downloads = 0

    def download(self, path):
        self.downloads += 1
        Path(path).mkdir(parents=True)
        (Path(path) / "state_dict.pth").write_text(f"weights of {self.uuid}")


class FakeExperiment:
    """Ranks like the master: by the searcher metric in the order asked for."""

    def __init__(self, checkpoints, smaller_is_better=True):
        self.checkpoints = checkpoints
        self.config = {"searcher": {"metric": "validation_loss", "smaller_is_better": smaller_is_better}}
        self.asked = None

    def list_checkpoints(self, sort_by, order_by, max_results):
        self.asked = (sort_by, order_by, max_results)
        ranked = sorted(
            self.checkpoints,
            key=lambda c: c.training.validation_metrics["avgMetrics"]["validation_loss"],
            reverse=order_by == client.OrderBy.DESCENDING,
        )
        return ranked[:max_results]


class FakeSession:
    def __init__(self, experiments=None, checkpoints=None, fail=None):
        self.experiments, self.checkpoints, self.fail = experiments or {}, checkpoints or {}, fail

    def __call__(self, master=None, user=None):  # stands in for connect()
        if self.fail:
            raise self.fail
        return self

    def get_experiment(self, experiment_id):
        if experiment_id not in self.experiments:
            raise errors.NotFoundException(f"experiment {experiment_id} not found")
        return self.experiments[experiment_id]

    def get_checkpoint(self, uuid):
        if uuid not in self.checkpoints:
            raise errors.NotFoundException(f"checkpoint {uuid} not found")
        return self.checkpoints[uuid]


@pytest.fixture()
def search():
    checkpoints = [FakeCheckpoint("aaa", 1, 0.52), FakeCheckpoint("bbb", 2, 0.36), FakeCheckpoint("ccc", 3, 0.41)]
    return FakeExperiment(checkpoints), {c.uuid: c for c in checkpoints}


def test_best_checkpoints_by_the_searcher_metric(search, tmp_path, capsys):
    experiment, _ = search
    code = model_download.main(
        ["--experiment", "7", "--top-n", "2", "--output", str(tmp_path)], connect=FakeSession({7: experiment})
    )
    assert code == 0
    assert experiment.asked == (client.CheckpointSortBy.SEARCHER_METRIC, client.OrderBy.ASCENDING, 2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["bbb", "ccc"]
    assert "trial 2  validation_loss 0.360000" in lines[0] and str(tmp_path / "bbb") in lines[0]
    assert (tmp_path / "bbb" / "state_dict.pth").read_text() == "weights of bbb"
    assert not (tmp_path / "aaa").exists()


def test_larger_is_better_experiments_rank_descending(search, tmp_path):
    experiment, _ = search
    experiment.config["searcher"]["smaller_is_better"] = False
    model_download.main(["--experiment", "7", "--output", str(tmp_path)], connect=FakeSession({7: experiment}))
    assert experiment.asked[1] == client.OrderBy.DESCENDING
    assert (tmp_path / "aaa").is_dir() and not (tmp_path / "bbb").exists()


def test_one_checkpoint_by_uuid(search, tmp_path, capsys):
    _, by_uuid = search
    assert (
        model_download.main(
            ["--checkpoint", "ccc", "--output", str(tmp_path)], connect=FakeSession(checkpoints=by_uuid)
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("ccc  trial 3  validation_loss 0.410000")


def test_non_empty_folders_are_protected_unless_forced(search, tmp_path, capsys):
    experiment, by_uuid = search
    mine = tmp_path / "bbb" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("my notes")
    code = model_download.main(
        ["--experiment", "7", "--top-n", "3", "--output", str(tmp_path)], connect=FakeSession({7: experiment})
    )
    assert code == 2 and "exists and is not empty; pass --force" in capsys.readouterr().err
    assert mine.read_text() == "my notes"
    assert all(c.downloads == 0 for c in by_uuid.values())  # refused before downloading anything
    assert (
        model_download.main(
            ["--experiment", "7", "--output", str(tmp_path), "--force"], connect=FakeSession({7: experiment})
        )
        == 0
    )
    assert not mine.exists() and (tmp_path / "bbb" / "state_dict.pth").is_file()


def test_failed_download_leaves_nothing_behind(tmp_path, capsys):
    broken = FakeCheckpoint("ddd", 4, 0.3)
    broken.download = lambda path: (Path(path).mkdir(), (_ for _ in ()).throw(OSError("disk full")))
    code = model_download.main(
        ["--checkpoint", "ddd", "--output", str(tmp_path)], connect=FakeSession(checkpoints={"ddd": broken})
    )
    assert code == 1 and "disk full" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, session, message",
    [
        (["--experiment", "99"], FakeSession({}), "error: experiment 99 not found on the master"),
        (["--checkpoint", "zzz"], FakeSession(), "error: checkpoint zzz not found on the master"),
        (
            ["--experiment", "5"],
            FakeSession({5: FakeExperiment([])}),
            "error: experiment 5 has no completed checkpoints",
        ),
        (
            ["--experiment", "5"],
            FakeSession(fail=errors.UnauthenticatedException()),
            "error: the master rejected the credentials",
        ),
        (
            ["--experiment", "5"],
            FakeSession(fail=errors.ForbiddenException("invalid credentials")),
            "error: the master rejected the credentials",
        ),
        (
            ["--experiment", "5"],
            FakeSession(fail=errors.MasterNotFoundException("Connection refused")),
            "error: cannot reach the Determined master",
        ),
    ],
)
def test_failures_give_one_line_and_a_non_zero_exit(args, session, message, tmp_path, capsys):
    assert model_download.main(args + ["--output", str(tmp_path)], connect=session) != 0
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_real_client_unreachable_master(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    closed = "http://127.0.0.1:9"  # nothing listens on the discard port here
    assert model_download.main(["--experiment", "1", "--master", closed, "--output", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.startswith("error: cannot reach the Determined master (http://127.0.0.1:9)")


class RejectingMaster(http.server.BaseHTTPRequestHandler):
    """Answers every request as a master does to a wrong password."""

    def do_POST(self):
        body = b'{"error": {"error": "invalid credentials"}}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args):
        pass


def test_real_client_bad_credentials(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DET_USER", "alice")
    monkeypatch.setenv("DET_PASSWORD", "wrong")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RejectingMaster)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        master = f"http://127.0.0.1:{server.server_address[1]}"
        code = model_download.main(["--experiment", "1", "--master", master, "--output", str(tmp_path / "o")])
    finally:
        server.shutdown()
    assert code == 1
    assert capsys.readouterr().err.startswith("error: the master rejected the credentials")
