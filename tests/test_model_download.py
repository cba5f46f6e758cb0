"""model_download.py: choice of checkpoints, protection of existing folders, one-line errors, and
distrust of the master. Choice and protection run against a small fake client; the hostile-master
cases (bad UUIDs, unsafe tarballs) and the credential/connection cases run the real Determined
client against a fake master on loopback (127.0.0.1 only, stopped after each test)."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import shutil
import tarfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from determined.common.api import errors
from determined.experimental import client

import model_download
from samespace.errors import SameSpaceError

A, B, C, D = (f"{n}0000000-0000-4000-8000-00000000000{n}" for n in "abcd")


class FakeCheckpoint:
    def __init__(self, uuid, trial_id, loss):
        self.uuid = uuid
        self.training = SimpleNamespace(
            trial_id=trial_id,
            validation_metrics={"avgMetrics": {"validation_loss": loss}},
            experiment_config={"searcher": {"metric": "validation_loss"}},
        )
        self.metadata = {"steps_completed": trial_id}
        self.downloads = 0


def fake_fetch(checkpoint, content):
    """Stands in for the network part of ``model_download.fetch``."""
    checkpoint.downloads += 1
    content.mkdir()
    (content / "state_dict.pth").write_text(f"weights of {checkpoint.uuid}")


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
        self.connected = False

    def __call__(self, master=None, user=None, password=None):  # stands in for connect()
        self.connected = True
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


def run(args, session):
    return model_download.main(args, connect=session, fetch=fake_fetch)


@pytest.fixture()
def search():
    checkpoints = [FakeCheckpoint(A, 1, 0.52), FakeCheckpoint(B, 2, 0.36), FakeCheckpoint(C, 3, 0.41)]
    return FakeExperiment(checkpoints), {c.uuid: c for c in checkpoints}


def test_best_checkpoints_by_the_searcher_metric(search, tmp_path, capsys):
    experiment, _ = search
    code = run(["--experiment", "7", "--top-n", "2", "--output", str(tmp_path)], FakeSession({7: experiment}))
    assert code == 0
    assert experiment.asked == (client.CheckpointSortBy.SEARCHER_METRIC, client.OrderBy.ASCENDING, 2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [B, C]
    assert "trial 2  validation_loss 0.360000" in lines[0] and str(tmp_path / B) in lines[0]
    assert (tmp_path / B / "state_dict.pth").read_text() == f"weights of {B}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [B, C]  # no temporary folder left behind


def test_larger_is_better_experiments_rank_descending(search, tmp_path):
    experiment, _ = search
    experiment.config["searcher"]["smaller_is_better"] = False
    run(["--experiment", "7", "--output", str(tmp_path)], FakeSession({7: experiment}))
    assert experiment.asked[1] == client.OrderBy.DESCENDING
    assert (tmp_path / A).is_dir() and not (tmp_path / B).exists()


def test_one_checkpoint_by_uuid_upper_case_accepted(search, tmp_path, capsys):
    _, by_uuid = search
    assert run(["--checkpoint", C.upper(), "--output", str(tmp_path)], FakeSession(checkpoints=by_uuid)) == 0
    assert capsys.readouterr().out.startswith(f"{C}  trial 3  validation_loss 0.410000")


def test_non_empty_folders_are_protected_unless_forced(search, tmp_path, capsys):
    experiment, by_uuid = search
    mine = tmp_path / B / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("my notes")
    code = run(["--experiment", "7", "--top-n", "3", "--output", str(tmp_path)], FakeSession({7: experiment}))
    assert code == 2 and "exists and is not empty; pass --force" in capsys.readouterr().err
    assert mine.read_text() == "my notes"
    assert all(c.downloads == 0 for c in by_uuid.values())  # refused before downloading anything
    assert run(["--experiment", "7", "--output", str(tmp_path), "--force"], FakeSession({7: experiment})) == 0
    assert not mine.exists() and (tmp_path / B / "state_dict.pth").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [B]


def test_a_link_in_place_of_the_target_is_refused_even_with_force(search, tmp_path, capsys):
    experiment, _ = search
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / B).symlink_to(elsewhere)
    code = run(["--experiment", "7", "--output", str(tmp_path / "out"), "--force"], FakeSession({7: experiment}))
    assert code == 2 and "is a symbolic link" in capsys.readouterr().err
    assert (elsewhere / "keep.txt").read_text() == "keep" and (tmp_path / "out" / B).is_symlink()


def test_failed_download_leaves_nothing_behind(tmp_path, capsys):
    def broken(checkpoint, content):
        content.mkdir()
        (content / "half.pth").write_text("half")
        raise OSError("disk full")

    session = FakeSession(checkpoints={D: FakeCheckpoint(D, 4, 0.3)})
    code = model_download.main(["--checkpoint", D, "--output", str(tmp_path)], connect=session, fetch=broken)
    assert code == 1 and "disk full" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_a_download_is_one_line_and_leaves_nothing_behind(tmp_path, capsys):
    import os
    import signal

    def terminated(checkpoint, content):
        content.mkdir()
        (content / "half.pth").write_text("half")
        os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends
        time.sleep(5)

    session = FakeSession(checkpoints={D: FakeCheckpoint(D, 4, 0.3)})
    code = model_download.main(["--checkpoint", D, "--output", str(tmp_path)], connect=session, fetch=terminated)
    assert (
        code == 130 and capsys.readouterr().err == "error: interrupted; the checkpoint being downloaded was not saved\n"
    )
    assert list(tmp_path.iterdir()) == []  # the staging folder removed
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_ctrl_c_during_a_download_lists_what_was_saved_and_leaves_no_staging(search, tmp_path, capsys):
    """Ctrl-C while the second of two checkpoints arrives: the first is listed (it is in place),
    one error line follows, and no staging folder is left."""
    import os
    import signal

    experiment, _ = search

    def interrupted_on_the_second(checkpoint, content):
        fake_fetch(checkpoint, content)
        if len(list(tmp_path.iterdir())) == 2:  # the first in place, and this one's staging folder
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C
            time.sleep(5)

    session = FakeSession({7: experiment})
    argv = ["--experiment", "7", "--top-n", "2", "--output", str(tmp_path)]
    code = model_download.main(argv, connect=session, fetch=interrupted_on_the_second)
    printed = capsys.readouterr()
    assert code == 130 and printed.err == (
        "error: interrupted; the checkpoint being downloaded was not saved (those listed were)\n"
    )
    assert printed.out.startswith(f"{B}  trial 2  validation_loss 0.360000") and len(printed.out.splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == [B]  # C's staging folder removed


class LoginMaster(http.server.BaseHTTPRequestHandler):
    """Records each login and refuses it, as a master does to a wrong password."""

    def do_POST(self):
        self.server.logins.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        RejectingMaster.do_POST(self)

    do_GET = do_POST

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("password", ["s3cret", None], ids=["DET_PASSWORD", "no password"])
def test_user_flag_takes_det_password_without_prompting(tmp_path, capsys, monkeypatch, password):
    """--user with DET_PASSWORD set logs in with it (the client alone would prompt, then fail on
    EOFError with no terminal); without one, the prompt's EOFError is one line."""
    import getpass

    from determined.common.api import authentication

    def no_terminal(prompt=""):
        if password is not None:
            pytest.fail("prompted for a password although DET_PASSWORD is set")
        raise EOFError

    monkeypatch.setattr(getpass, "getpass", no_terminal)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DET_USER", raising=False)
    monkeypatch.delenv("DET_USER_TOKEN", raising=False)
    if password is None:
        monkeypatch.delenv("DET_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("DET_PASSWORD", password)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LoginMaster)
    server.logins = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        master = f"http://127.0.0.1:{server.server_address[1]}"
        argv = ["--experiment", "1", "--master", master, "--user", "alice", "--output", str(tmp_path / "o")]
        code = model_download.main(argv)
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    if password is None:
        assert code == 2 and not server.logins
        assert err == "error: no password for --user alice: set DET_PASSWORD, or run `det user login alice` once\n"
    else:
        assert code == 1 and err.startswith("error: the master rejected the credentials")
        assert [(x["username"], x["password"]) for x in server.logins] == [
            ("alice", authentication.salt_and_hash(password))
        ]
    assert not (tmp_path / "o").exists()


def test_deleted_checkpoint_output_file_and_repeated_listing(search, tmp_path, capsys):
    experiment, by_uuid = search
    by_uuid[C].state = SimpleNamespace(name="DELETED")
    assert run(["--checkpoint", C, "--output", str(tmp_path)], FakeSession(checkpoints=by_uuid)) == 2
    assert capsys.readouterr().err == f"error: checkpoint {C} is DELETED; only completed ones can be downloaded\n"
    (tmp_path / "a-file").write_text("mine")
    assert run(["--experiment", "7", "--output", str(tmp_path / "a-file")], FakeSession({7: experiment})) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    experiment.checkpoints.append(by_uuid[B])  # the master lists B twice: fetched once
    session = FakeSession({7: experiment})
    assert run(["--experiment", "7", "--top-n", "3", "--output", str(tmp_path / "o")], session) == 0
    assert by_uuid[B].downloads == 1 and sorted(p.name for p in (tmp_path / "o").iterdir()) == [B, C]


def test_download_error_is_a_samespace_error():
    assert issubclass(model_download.DownloadError, SameSpaceError)


LONG_REFUSAL = (
    "HTTPConnectionPool(host='localhost', port=8080): Max retries exceeded with url: /api/v1/me (Caused by "
    "NewConnectionError('<urllib3.connection.HTTPConnection object at 0x7f0c>: Failed to establish a new "
    "connection: [Errno 111] Connection refused'))"
)


@pytest.mark.parametrize(
    "args, session, message",
    [
        (["--experiment", "99"], FakeSession({}), "error: experiment 99 not found on the master"),
        (["--checkpoint", D], FakeSession(), f"error: checkpoint {D} not found on the master"),
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
            ["--experiment", "5", "--master", "10.1.2.3:8080"],
            FakeSession(fail=errors.MasterNotFoundException(LONG_REFUSAL)),
            "error: cannot reach the Determined master at http://10.1.2.3:8080 (from --master): "
            "[Errno 111] Connection refused; set DET_MASTER or pass --master\n",
        ),
        (
            ["--experiment", "5"],
            FakeSession(fail=errors.MasterNotFoundException(LONG_REFUSAL)),
            "error: cannot reach the Determined master at http://localhost:8080 (DET_MASTER is unset, so the "
            "client's default was tried): [Errno 111] Connection refused",
        ),
        (
            ["--experiment", "5"],
            FakeSession(fail=RuntimeError("connection reset " * 30 + "\nsecond line")),
            "error: RuntimeError: " + "connection reset " * 11 + "connection …\n",  # cut between words
        ),
    ],
)
def test_failures_give_one_line_and_a_non_zero_exit(args, session, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DET_MASTER", raising=False)
    monkeypatch.delenv("DET_MASTER_ADDR", raising=False)
    assert run(args + ["--output", str(tmp_path)], session) != 0
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experiment", "5", "--top-n", "0"], "error: --top-n must be at least 1, not 0\n"),
        (["--checkpoint", "../../victim"], "error: --checkpoint '../../victim' is not a checkpoint UUID"),
        (["--checkpoint", ""], "error: --checkpoint '' is not a checkpoint UUID"),
        (["--checkpoint", f"{A}/.."], f"error: --checkpoint '{A}/..' is not a checkpoint UUID"),
        (["--experiment", "x"], "error: argument --experiment: invalid int value: 'x' (see --help)\n"),
    ],
)
def test_bad_arguments_give_one_line_before_connecting(args, message, tmp_path, capsys):
    session = FakeSession()
    with contextlib.suppress(SystemExit):
        assert run(args + ["--output", str(tmp_path / "out")], session) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not session.connected and not (tmp_path / "out").exists()


def test_real_client_unreachable_master(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    closed = "http://127.0.0.1:9"  # nothing listens on the discard port here
    assert model_download.main(["--experiment", "1", "--master", closed, "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the Determined master at http://127.0.0.1:9 (from --master): ")
    assert "Connection refused" in err and err.count("\n") == 1


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
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        master = f"http://127.0.0.1:{server.server_address[1]}"
        code = model_download.main(["--experiment", "1", "--master", master, "--output", str(tmp_path / "o")])
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    assert capsys.readouterr().err.startswith("error: the master rejected the credentials")


# --- A hostile master, through the real client --------------------------------------------------


def checkpoint_json(uuid, loss=0.3, storage=None):
    return {
        "uuid": uuid,
        "metadata": {"framework": "torch"},
        "resources": {"state_dict.pth": 11},
        "state": "STATE_COMPLETED",
        "training": {
            "trialId": 3,
            "experimentId": 7,
            "experimentConfig": {
                "searcher": {"metric": "validation_loss", "smaller_is_better": True},
                "checkpoint_storage": storage or {"type": "s3", "bucket": "b"},
            },
            "hparams": {},
            "validationMetrics": {"avgMetrics": {"validation_loss": loss}},
        },
    }


def experiment_json(experiment_id=7):
    config = {"searcher": {"metric": "validation_loss", "smaller_is_better": True}}
    return {
        "experiment": {
            "archived": False,
            "config": config,
            "id": experiment_id,
            "jobId": "j",
            "name": "samespace",
            "numTrials": 1,
            "originalConfig": "",
            "projectId": 1,
            "projectOwnerId": 1,
            "searcherType": "single",
            "startTime": "2026-01-01T00:00:00Z",
            "state": "STATE_COMPLETED",
            "username": "alice",
        },
        "config": config,
    }


def listing(checkpoints):
    n = len(checkpoints)
    return {"checkpoints": checkpoints, "pagination": {"offset": 0, "startIndex": 0, "endIndex": n, "total": n}}


def tarball(*entries):
    """A gzipped tar of (TarInfo fields, bytes) entries, as the master sends checkpoints."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for fields, data in entries:
            info = tarfile.TarInfo()
            for key, value in fields.items():
                setattr(info, key, value)
            info.size = len(data) if info.isfile() else 0
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


GOOD = (
    ({"name": "state_dict.pth"}, b"the weights"),
    ({"name": "code", "type": tarfile.DIRTYPE, "mode": 0o755}, b""),
    ({"name": "code/model_def.py"}, b"# trial"),
    ({"name": "weights", "type": tarfile.SYMTYPE, "linkname": "state_dict.pth"}, b""),  # a link inside is fine
)


class FakeMaster(http.server.BaseHTTPRequestHandler):
    """Serves ``self.server.routes`` (path -> (status, content type, body, cut)); 404 otherwise.
    With ``cut`` it announces the whole body, sends only ``cut`` bytes of it, then stalls until the
    test ends (at most 5 s) and drops the connection."""

    def do_GET(self):
        path = self.path.split("?")[0]
        self.server.asked.append(path)
        missing = (404, "application/json", b'{"error": {"error": "no"}}', None)
        status, kind, body, cut = self.server.routes.get(path, missing)
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut == "trickle":  # a byte at a time, each within the read timeout: never stalled
            with contextlib.suppress(OSError):  # the client hangs up at its deadline
                for offset in range(len(body)):
                    if self.server.done.wait(0.05):
                        break
                    self.wfile.write(body[offset : offset + 1])
                    self.wfile.flush()
            return
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.wfile.flush()
            self.server.done.wait(5)
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture()
def master(tmp_path, monkeypatch):
    """A fake master on 127.0.0.1 with a container-style token (no login round trip)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DET_USER", "alice")
    monkeypatch.setenv("DET_USER_TOKEN", "token")
    monkeypatch.delenv("DET_PASSWORD", raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeMaster)
    server.routes, server.asked, server.done = {}, [], threading.Event()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def serve(path, body, status=200, kind="application/json", cut=None):
        data = json.dumps(body).encode() if kind == "application/json" else body
        server.routes[path] = (status, kind, data, cut)

    server.serve = serve
    yield server
    server.done.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture()
def world(tmp_path):
    """An output folder with the user's things in it, and a victim folder beside it."""
    root = tmp_path / "world"
    for path, text in [("out/mine/notes.txt", "mine"), ("out/" + A + "/old.pth", "old"), ("victim/keep.txt", "v")]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def snapshot(root):
    return {
        str(p.relative_to(root)): (p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_symlink() else None)
        for p in sorted(root.rglob("*"))
    }


def download(master, root, *args):
    return model_download.main([*args, "--master", master.url, "--output", str(root / "out"), "--force"])


def test_real_client_downloads_and_replaces_exactly_the_target(master, world, capsys):
    master.serve("/api/v1/experiments/7", experiment_json())
    master.serve("/api/v1/experiments/7/checkpoints", listing([checkpoint_json(A)]))
    master.serve(f"/checkpoints/{A}", tarball(*GOOD), kind="application/gzip")
    before = snapshot(world)
    assert download(master, world, "--experiment", "7") == 0
    assert capsys.readouterr().out.startswith(f"{A}  trial 3  validation_loss 0.300000")
    folder = world / "out" / A
    assert (folder / "state_dict.pth").read_bytes() == b"the weights"
    assert (folder / "code" / "model_def.py").read_bytes() == b"# trial"
    assert (folder / "weights").is_symlink() and (folder / "weights").read_bytes() == b"the weights"
    assert json.loads((folder / "metadata.json").read_text()) == {"framework": "torch"}
    assert not (folder / "old.pth").exists()
    after = snapshot(world)
    outside = {k: v for k, v in before.items() if not k.startswith(f"out/{A}")}
    assert {k: v for k, v in after.items() if not k.startswith(f"out/{A}")} == outside
    assert sorted(p.name for p in (world / "out").iterdir()) == [A, "mine"]


@pytest.mark.parametrize("bad", ["../../victim", "", ".", "..", "/tmp/x", f"{A}/..", "mine", A.upper()])
def test_real_client_uuids_from_the_master_that_are_not_uuids(master, world, capsys, bad):
    master.serve("/api/v1/experiments/7", experiment_json())
    found = [checkpoint_json(B), checkpoint_json(bad)]
    master.serve("/api/v1/experiments/7/checkpoints", listing(found))
    master.serve(f"/checkpoints/{B}", tarball(*GOOD), kind="application/gzip")
    before = snapshot(world)
    assert download(master, world, "--experiment", "7", "--top-n", "2") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the master's list for experiment 7 gave ") and "not a checkpoint UUID" in err
    assert err.count("\n") == 1
    assert snapshot(world) == before
    assert not any(p.startswith("/checkpoints/") for p in master.asked)  # refused before downloading anything


def test_real_client_checkpoint_answered_with_another_uuid(master, world, capsys):
    master.serve(f"/api/v1/checkpoints/{A}", {"checkpoint": checkpoint_json("../../victim")})
    before = snapshot(world)
    assert download(master, world, "--checkpoint", A) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: asked for checkpoint {A}, the master answered with '../../victim'")
    assert snapshot(world) == before


@pytest.mark.parametrize(
    "entry, reason",
    [
        ({"name": "../../victim/x"}, "outside the destination"),
        ({"name": "/tmp/samespace-x"}, "absolute"),
        ({"name": "link", "type": tarfile.SYMTYPE, "linkname": "../../victim"}, "outside the destination"),
        ({"name": "abs-link", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "absolute"),
        ({"name": "hard", "type": tarfile.LNKTYPE, "linkname": "../../victim/keep.txt"}, "outside the destination"),
        ({"name": "pipe", "type": tarfile.FIFOTYPE}, "special"),
    ],
)
def test_real_client_unsafe_tarball_changes_nothing(master, world, capsys, entry, reason):
    master.serve(f"/api/v1/checkpoints/{A}", {"checkpoint": checkpoint_json(A)})
    master.serve(f"/checkpoints/{A}", tarball(*GOOD, (entry, b"pwned")), kind="application/gzip")
    before = snapshot(world)
    assert download(master, world, "--checkpoint", A) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {A} from the master holds an unsafe entry") and reason in err
    assert err.count("\n") == 1 and err.rstrip().endswith("nothing was saved")
    assert snapshot(world) == before  # the old <uuid> folder too: replaced only by a complete, safe copy
    assert not Path("/tmp/samespace-x").exists()


@pytest.mark.parametrize(
    "status, body, message",
    [
        (200, tarball(*GOOD)[:40], "is not a complete tar archive"),
        (200, b"<html>not a tarball</html>", "is not a complete tar archive"),
        (200, tarball(), "arrived empty"),
        (500, b'{"error": {"error": "azure storage cannot be proxied"}}', "the master could not send checkpoint"),
        (404, b'{"error": {"error": "not found"}}', "the master could not send checkpoint"),
    ],
    ids=["truncated", "html", "empty", "500", "404"],
)
def test_real_client_broken_downloads_change_nothing(master, world, capsys, status, body, message):
    master.serve(f"/api/v1/checkpoints/{A}", {"checkpoint": checkpoint_json(A)})
    master.serve(f"/checkpoints/{A}", body, status=status, kind="application/gzip")
    before = snapshot(world)
    assert download(master, world, "--checkpoint", A) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert snapshot(world) == before


def test_shared_fs_checkpoint_is_copied_locally(master, world, tmp_path, capsys):
    storage = tmp_path / "shared"
    (storage / "ckpts" / A / "code").mkdir(parents=True)
    (storage / "ckpts" / A / "state_dict.pth").write_bytes(b"shared weights")
    (storage / "ckpts" / A / "code" / "model_def.py").write_bytes(b"# trial")
    config = {"type": "shared_fs", "host_path": str(storage), "storage_path": "ckpts"}
    master.serve(f"/api/v1/checkpoints/{A}", {"checkpoint": checkpoint_json(A, storage=config)})
    assert download(master, world, "--checkpoint", A) == 0
    assert (world / "out" / A / "state_dict.pth").read_bytes() == b"shared weights"
    assert (world / "out" / A / "code" / "model_def.py").read_bytes() == b"# trial"
    assert f"/checkpoints/{A}" not in master.asked

    (storage / "ckpts" / A / "escape").symlink_to(world / "victim")
    before = snapshot(world)
    assert download(master, world, "--checkpoint", A) == 2
    assert "holds a link 'escape' that points outside it" in capsys.readouterr().err
    assert snapshot(world) == before


def test_real_client_a_stalled_master_ends_in_one_line_not_a_hang(master, world, capsys, monkeypatch):
    monkeypatch.setattr(model_download, "READ_TIMEOUT_S", 0.5)
    master.serve(f"/api/v1/checkpoints/{A}", {"checkpoint": checkpoint_json(A)})
    body = tarball(*GOOD, ({"name": "big.pth"}, bytes(range(256)) * 400))
    master.serve(f"/checkpoints/{A}", body, kind="application/gzip", cut=len(body) // 2)
    before = snapshot(world)
    assert download(master, world, "--checkpoint", A) == 2
    err = capsys.readouterr().err
    assert err == f"error: checkpoint {A} from the master stopped arriving (Read timed out); nothing was saved\n"
    assert snapshot(world) == before


def test_real_client_a_checkpoint_that_unpacks_too_large_is_refused(master, world, capsys):
    master.serve(f"/api/v1/checkpoints/{A}", {"checkpoint": checkpoint_json(A)})
    zeros = tarball(*GOOD, ({"name": "zeros.pth"}, bytes(4 << 20)))  # 4 MiB of zeros, about 4 KB gzipped
    assert len(zeros) < 10_000
    master.serve(f"/checkpoints/{A}", zeros, kind="application/gzip")
    before = snapshot(world)
    assert download(master, world, "--checkpoint", A, "--max-unpacked-gb", "0.001") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {A} from the master unpacks to more than 0.001 GiB")
    assert err.count("\n") == 1 and "--max-unpacked-gb raises the cap" in err
    assert snapshot(world) == before  # no staging folder left either
    assert download(master, world, "--checkpoint", A, "--max-unpacked-gb", "0.01") == 0
    assert (world / "out" / A / "zeros.pth").stat().st_size == 4 << 20
    assert model_download.main(["--checkpoint", A, "--max-unpacked-gb", "0"]) == 2
    assert "--max-unpacked-gb must be a number above 0" in capsys.readouterr().err


def test_real_client_a_trickling_master_ends_at_the_deadline(master, world, capsys, monkeypatch):
    monkeypatch.setattr(model_download, "DEADLINE_S", 0.5)
    master.serve(f"/api/v1/checkpoints/{A}", {"checkpoint": checkpoint_json(A)})
    master.serve(f"/checkpoints/{A}", tarball(*GOOD), kind="application/gzip", cut="trickle")
    before = snapshot(world)
    started = time.monotonic()
    assert download(master, world, "--checkpoint", A) == 2
    assert time.monotonic() - started < 5  # a byte each 0.05 s: the per-read timeout never fires
    err = capsys.readouterr().err
    assert err == f"error: checkpoint {A} from the master took longer than 0.5 s; nothing was saved\n"
    assert snapshot(world) == before


def test_real_client_checks_free_space_before_and_while_unpacking(master, world, capsys, monkeypatch):
    master.serve(f"/api/v1/checkpoints/{A}", {"checkpoint": checkpoint_json(A)})
    master.serve(f"/checkpoints/{A}", tarball(*GOOD, ({"name": "zeros.pth"}, bytes(4 << 20))), kind="application/gzip")
    before = snapshot(world)
    free = [model_download.FREE_SPACE_RESERVE + (1 << 20)]  # 1 MiB beyond the reserve
    monkeypatch.setattr(model_download.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(0, 0, free[0]))
    assert download(master, world, "--checkpoint", A) == 2
    err = capsys.readouterr().err
    assert f"{A} from the master needs more than the 0.00 GiB free on" in err and err.count("\n") == 1
    assert snapshot(world) == before
    free[0] = model_download.FREE_SPACE_RESERVE + 100  # less than the packed size the master announces
    assert download(master, world, "--checkpoint", A) == 2
    assert "GiB packed, more than the 0.00 GiB free" in capsys.readouterr().err
    assert snapshot(world) == before
