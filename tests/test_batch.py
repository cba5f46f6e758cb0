"""samespace/batch.py: the dedup batch job through Determined's own route without a master.

Determined 0.38.1's tests run torch_batch_process off-cluster with a fake ``det.ClusterInfo`` in
``det._info._info`` and ``core._dummy_init`` in place of
``_torch_batch_process._initialize_default_inference_context``; ``cluster`` below does the same
(private names, pinned to determined==0.38.1). The real loop, sharding, progress checkpoints,
``upload_path()`` and resume then run on the CPU. The network is the small input-dependent stand-in
of the other dedup tests (``conftest.small_trunk``), so scores differ from photo to photo."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

import synthetic
from conftest import PROJECT, float32_atol, small_trunk, summed_terms
from samespace import batch, catalogue, dedup
from samespace.errors import ConfigError, DataError
from samespace.network import SiameseNet

pytest.importorskip("determined")
import determined as det  # noqa: E402
from determined import core  # noqa: E402
from determined.pytorch.experimental import _torch_batch_process  # noqa: E402

LABEL = "small-net"


def small_network() -> SiameseNet:
    torch.manual_seed(0)
    net = SiameseNet(pretrained=False, dropouts=(0.3, 0.4, 0.5))
    net.trunk = small_trunk()
    return net.eval()


def fake_info(storage: Path, hparams: dict, slots: int, latest: str | None) -> det.ClusterInfo:
    """A ClusterInfo as Determined's tests make it (tests/launch/test_util.make_mock_cluster_info)."""
    config = {"checkpoint_storage": {"type": "shared_fs", "host_path": str(storage)}, "hyperparameters": hparams}
    trial = det.TrialInfo(
        trial_id=1, experiment_id=1, trial_seed=0, hparams=hparams, config=config, steps_completed=0,
        trial_run_id=0, debug=False, inter_node_network_interface=None,
    )  # fmt: skip
    rendezvous = det.RendezvousInfo(container_addrs=["127.0.0.1"], container_rank=0, container_slot_counts=[slots])
    return det.ClusterInfo(
        master_url="localhost", cluster_id="cluster", agent_id="agent", slot_ids=list(range(slots)), task_id="task",
        allocation_id="allocation", session_token="token", task_type="TRIAL", rendezvous_info=rendezvous,
        trial_info=trial, latest_checkpoint=latest,
    )  # fmt: skip


@contextlib.contextmanager
def cluster(storage: Path, hparams: dict, slots: int = 1, latest: str | None = None, distributed=None) -> Iterator:
    """Determined's off-cluster route: the fake ClusterInfo and core._dummy_init on ``storage``."""
    saved_info, saved_init = det._info._info, _torch_batch_process._initialize_default_inference_context
    saved_load = batch.load_network
    det._info._info = fake_info(storage, hparams, slots, latest)
    _torch_batch_process._initialize_default_inference_context = lambda _: core._dummy_init(
        distributed=distributed, checkpoint_storage=str(storage)
    )
    batch.load_network = lambda settings, context: (small_network(), LABEL)
    try:
        yield
    finally:
        det._info._info, batch.load_network = saved_info, saved_load
        _torch_batch_process._initialize_default_inference_context = saved_init


def newest_checkpoint(storage: Path) -> str | None:
    """What the master would pass a restarted trial: its newest progress checkpoint."""
    found = []
    for metadata in storage.glob("*/metadata.json"):
        steps = json.loads(metadata.read_text()).get("steps_completed")
        if steps is not None:
            found.append((steps, metadata.stat().st_mtime_ns, metadata.parent.name))
    return max(found)[2] if found else None


def output_shards(storage: Path) -> Path:
    (folder,) = [p for p in storage.iterdir() if (p / "rank_0").is_dir()]
    return folder


@pytest.fixture()
def folder(tmp_path) -> Path:
    made = synthetic.make_split(
        tmp_path / "made", rooms=8, photos_per_room=(2, 3), size=(80, 60), rng=np.random.default_rng(9), singles=10
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in made:
        photo.path.rename(photos / f"{photo.room[2]}-{photo.path.stem}.jpg")
    source = sorted(photos.iterdir())[1]
    (photos / "copy.jpg").write_bytes(source.read_bytes())
    (photos / "notes.jpg").write_text("not a photo")
    return photos


def settings_for(folder: Path, output: Path, **more) -> dict:
    return {"checkpoint": "unused", "photos": str(folder), "output": str(output), "batch_size": 4,
            "checkpoint_interval": 2, "workers": 0, **more}  # fmt: skip


def local_outputs(folder: Path, output: Path) -> Path:
    result = dedup.find_duplicates(small_network(), folder, torch.device("cpu"), recursive=True)
    dedup.write_outputs(result, folder, output, False, checkpoint=LABEL)
    return output


def assert_same_outputs(job: Path, local: Path, net: SiameseNet) -> None:
    for name in ("duplicates.json", "to_remove.json", "summary.json"):
        assert (job / name).read_bytes() == (local / name).read_bytes(), name
    atol = float32_atol(summed_terms(net.trunk, net.towers[0], net.head))  # other batches: rounding only
    job_rows, local_rows = (p.read_text().splitlines() for p in (job / "pairs.csv", local / "pairs.csv"))
    assert len(job_rows) == len(local_rows)
    for mine, theirs in zip(sorted(job_rows), sorted(local_rows)):
        a, b = mine.split(","), theirs.split(",")
        assert a[:2] == b[:2] and a[3:] == b[3:]
        assert a[2] == b[2] or abs(float(a[2]) - float(b[2])) <= atol
    page = (job / "report.html").read_text()
    assert page.count("<img") == (local / "report.html").read_text().count("<img")


def test_the_job_writes_the_outputs_local_dedup_writes(folder, tmp_path):
    hparams = settings_for(folder, tmp_path / "job")
    with cluster(tmp_path / "storage", hparams):
        batch.run(batch.JobSettings.from_hparams(hparams))
    assert_same_outputs(tmp_path / "job", local_outputs(folder, tmp_path / "local"), small_network())
    shards = sorted(p.name for p in (output_shards(tmp_path / "storage") / "rank_0").iterdir())
    batches = -(-len(batch.manifest_of(batch.JobSettings.from_hparams(hparams)).paths) // 4)
    assert shards[0] == "shard-r000-b00000000-00000001.npz" and len(shards) == 2 * -(-batches // 2)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["skipped files"] == 1 and summary["identical copies"] == 1
    kept = catalogue.load(tmp_path / "job" / "catalogue")  # with each photo's nearest similarities
    assert len(kept) == summary["photos"] and kept.neighbours == batch.JobSettings.from_hparams(hparams).neighbours


class Stop(Exception):
    """Stands for the worker's death."""


def test_a_run_stopped_after_a_shard_whose_checkpoint_never_landed_resumes_and_replays_it(folder, tmp_path):
    hparams = settings_for(folder, tmp_path / "whole")
    with cluster(tmp_path / "whole-storage", hparams):
        batch.run(batch.JobSettings.from_hparams(hparams))
    hparams = settings_for(folder, tmp_path / "resumed")
    storage = tmp_path / "storage"
    real = _torch_batch_process._synchronize_and_checkpoint
    calls = []

    def dies_at_the_second(*args, **kwargs):  # the second interval's shard is written, its checkpoint is not
        calls.append(1)
        if len(calls) == 2:
            raise Stop
        return real(*args, **kwargs)

    _torch_batch_process._synchronize_and_checkpoint = dies_at_the_second
    try:
        with cluster(storage, hparams), pytest.raises(Stop):
            batch.run(batch.JobSettings.from_hparams(hparams))
    finally:
        _torch_batch_process._synchronize_and_checkpoint = real
    latest = newest_checkpoint(storage)
    assert json.loads((storage / latest / "metadata.json").read_text())["steps_completed"] == 2
    assert not (tmp_path / "resumed").exists()  # nothing written before the end
    with cluster(storage, hparams, latest=latest):
        batch.run(batch.JobSettings.from_hparams(hparams))
    manifest = batch.manifest_of(batch.JobSettings.from_hparams(hparams))
    resumed = batch.read_shards(output_shards(storage), manifest)
    whole = batch.read_shards(output_shards(tmp_path / "whole-storage"), manifest)
    assert sorted(resumed["ids"].tolist() + resumed["skipped_ids"].tolist()) == list(range(len(manifest.paths)))
    for key in ("ids", "sha256", "first", "second"):
        assert np.array_equal(resumed[key], whole[key]), key  # bit for bit: the same batches, the same code
    for name in ("duplicates.json", "to_remove.json", "summary.json", "pairs.csv"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def finished_shards(folder: Path, tmp_path: Path) -> tuple[Path, batch.Manifest]:
    hparams = settings_for(folder, tmp_path / "job", catalogue=False)
    with cluster(tmp_path / "storage", hparams):
        batch.run(batch.JobSettings.from_hparams(hparams))
    return output_shards(tmp_path / "storage"), batch.manifest_of(batch.JobSettings.from_hparams(hparams))


@pytest.mark.parametrize(
    "damage", ["cut short", "flipped byte", "no sidecar", "another photo list", "removed", "twice"]
)
def test_a_corrupt_or_cut_short_shard_is_refused_in_one_line(folder, tmp_path, damage):
    shards, manifest = finished_shards(folder, tmp_path)
    shard = shards / "rank_0" / "shard-r000-b00000000-00000001.npz"
    payload = shard.read_bytes()
    if damage == "cut short":
        shard.write_bytes(payload[: len(payload) // 2])
    elif damage == "flipped byte":
        shard.write_bytes(payload[:100] + bytes([payload[100] ^ 1]) + payload[101:])
    elif damage == "no sidecar":
        shard.with_name(shard.name + ".sha256").unlink()
    elif damage == "removed":
        shard.unlink()
    elif damage == "twice":  # as if slots or batch size had changed: other names for the same photos
        twin = shards / "rank_1" / "shard-r001-b00000000-00000001.npz"
        twin.parent.mkdir()
        twin.write_bytes(payload)
        twin.with_name(twin.name + ".sha256").write_bytes(shard.with_name(shard.name + ".sha256").read_bytes())
    else:
        manifest = batch.Manifest(manifest.root, manifest.paths[:-1] + [manifest.root / "other.jpg"], [])
    messages = {
        "cut short": r"is corrupt or cut short", "flipped byte": r"is corrupt or cut short",
        "no sidecar": r"or its .sha256 is unreadable", "another photo list": r"written for another photo list",
        "removed": r"^no shard holds photo 0 ", "twice": r"a photo id is in two shards",
    }  # fmt: skip
    with pytest.raises(DataError, match=messages[damage]) as caught:
        batch.read_shards(shards, manifest)
    assert "\n" not in str(caught.value)


def test_a_file_list_naming_a_missing_file_lists_it_and_skips_it(folder, tmp_path):
    names = sorted(p.name for p in folder.iterdir()) + ["gone.jpg"]
    (tmp_path / "photos.txt").write_text("".join(f"{folder / n}\n" for n in names))
    hparams = settings_for(tmp_path / "photos.txt", tmp_path / "job")
    with cluster(tmp_path / "storage", hparams):
        batch.run(batch.JobSettings.from_hparams(hparams))
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    gone = [line for line in summary["skipped"] if line.startswith(str(folder / "gone.jpg"))]
    assert len(gone) == 1 and summary["skipped files"] == 2 and summary["photos"] == len(names) - 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"threshold": 2}, r"^hyperparameters.threshold = 2: must be a number from 0 to 1$"),
        ({"batch_size": 0}, r"^hyperparameters.batch_size = 0: must be a whole number >= 1$"),
        ({"epochs": 3}, r"^hyperparameters.epochs: not a dedup job setting"),
        ({"search": "fast"}, r"^hyperparameters.search = 'fast': must be one of"),
    ],
)
def test_bad_job_settings_are_one_line(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        batch.JobSettings.from_hparams({**settings_for(tmp_path, tmp_path / "out"), **change})
    with pytest.raises(ConfigError, match=r"^hyperparameters.output is required"):
        batch.JobSettings.from_hparams({"checkpoint": "x", "photos": "y"})


TWO_SLOTS = """
import sys, time
sys.path[:0] = [{tests!r}, {project!r}]
from pathlib import Path
from determined import core
import test_batch
from samespace import batch
rank, latest, stop_at = int(sys.argv[1]), sys.argv[2] or None, int(sys.argv[3])
hparams = test_batch.settings_for(Path({folder!r}), Path({output!r}), catalogue=False)
distributed = core.DistributedContext(
    rank=rank, size=2, local_rank=rank, local_size=2, cross_rank=0, cross_size=1, chief_ip="127.0.0.1",
    pub_port={pub}, pull_port={pull},
)
if stop_at:  # this worker hangs at a batch, as a stuck or dying node does, until it is killed
    real = batch.scoring.Embedder.backbone
    seen = []
    def backbone(self, images, desc="backbone"):
        seen.append(1)
        if len(seen) == stop_at:
            print("stuck", flush=True)
            time.sleep(600)
        return real(self, images, desc)
    batch.scoring.Embedder.backbone = backbone
with test_batch.cluster(Path({storage!r}), hparams, slots=2, latest=latest, distributed=distributed):
    batch.run(batch.JobSettings.from_hparams(hparams))
print("done", flush=True)
"""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def two_workers(code: str, latest: str, stop_at: tuple[int, int]) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": ""}
    return [
        subprocess.Popen(
            [sys.executable, "-c", code, str(rank), latest or "", str(stop_at[rank])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for rank in (0, 1)
    ]


def test_two_workers_on_loopback_killed_and_restarted_give_every_photo_once(folder, tmp_path):
    """2 processes with Determined's ZMQ DistributedContext on 127.0.0.1; worker 1 is killed in
    its 4th batch, the other with it (as Determined restarts the whole trial); the restart from the
    newest progress checkpoint gives every photo exactly once, bit-identical to an uninterrupted
    run (one slot: the same batches), and the outputs of local dedup."""
    storage, whole_storage = tmp_path / "storage", tmp_path / "whole-storage"
    places = dict(tests=str(PROJECT / "tests"), project=str(PROJECT), folder=str(folder))

    def script(where: Path, output: Path) -> str:
        pub, pull = free_ports(2)
        return TWO_SLOTS.format(**places, storage=str(where), output=str(output), pub=pub, pull=pull)

    first = two_workers(script(storage, tmp_path / "job"), "", (0, 4))
    try:
        lines = iter(first[1].stdout.readline, "")  # Determined logs to stdout too
        assert any(line.strip() == "stuck" for line in lines)
    finally:
        for process in first:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
    latest = newest_checkpoint(storage)
    assert latest is not None and json.loads((storage / latest / "metadata.json").read_text())["steps_completed"] == 2
    for process in two_workers(script(storage, tmp_path / "job"), latest, (0, 0)):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0 and out.strip().endswith("done"), err[-2000:]
    hparams = settings_for(folder, tmp_path / "whole", catalogue=False)
    with cluster(whole_storage, hparams):  # one slot, uninterrupted: the same batches of 4
        batch.run(batch.JobSettings.from_hparams(hparams))
    manifest = batch.manifest_of(batch.JobSettings.from_hparams(settings_for(folder, tmp_path / "job")))
    resumed = batch.read_shards(output_shards(storage), manifest)
    whole = batch.read_shards(output_shards(whole_storage), manifest)
    assert sorted(resumed["ids"].tolist() + resumed["skipped_ids"].tolist()) == list(range(len(manifest.paths)))
    for key in ("ids", "sha256", "first", "second"):
        assert np.array_equal(resumed[key], whole[key]), key
    assert {p.name for p in output_shards(storage).iterdir()} == {"rank_0", "rank_1"}
    assert_same_outputs(tmp_path / "job", local_outputs(folder, tmp_path / "local"), small_network())


def test_dedup_yaml_is_a_valid_job_and_the_entry_point_refuses_to_run_off_cluster(tmp_path):
    import yaml

    from conftest import run_script

    config = yaml.safe_load((PROJECT / "dedup.yaml").read_text())
    settings = batch.JobSettings.from_hparams(config["hyperparameters"])
    assert settings.catalogue and settings.search == "auto" and config["resources"]["slots_per_trial"] >= 2
    assert config["entrypoint"] == "python3 -m determined.launch.torch_distributed python3 dedup_job.py"
    assert config["checkpoint_storage"]["type"] != "directory"  # upload_path() fails on it in 0.38.1
    done = run_script("dedup_job.py", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: dedup_job.py runs as a Determined trial")
    assert len(done.stderr.strip().splitlines()) == 1
