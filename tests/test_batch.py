"""samespace/batch.py: the dedup batch job through Determined's own route without a master.

Determined 0.38.1's tests run torch_batch_process off-cluster with a fake ``det.ClusterInfo`` in
``det._info._info`` and ``core._dummy_init`` in place of
``_torch_batch_process._initialize_default_inference_context``; ``cluster`` below does the same
(private names, pinned to determined==0.38.1). The real loop, sharding, progress checkpoints,
``upload_path()`` and resume then run on the CPU. The network is the small input-dependent stand-in
of the other dedup tests (``conftest.small_trunk``), so scores differ from photo to photo.
Checkpoint storage is a shared_fs folder, or S3 through determined's own S3StorageManager (boto3)
on moto's in-process mock of AWS (``bucket``): no network and no real bucket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

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


def storage_config(storage: Path | dict) -> dict:
    """``checkpoint_storage`` as the experiment config gives it: a shared_fs folder, or a dict (s3)."""
    return storage if isinstance(storage, dict) else {"type": "shared_fs", "host_path": str(storage)}


def storage_argument(storage: Path | dict) -> str | dict:
    """What ``core._dummy_init`` takes: shared_fs only as a folder string, cloud storage as a dict."""
    return storage if isinstance(storage, dict) else str(storage)


def fake_info(storage: Path | dict, hparams: dict, slots: int, latest: str | None) -> det.ClusterInfo:
    """A ClusterInfo as Determined's tests make it (tests/launch/test_util.make_mock_cluster_info)."""
    config = {"checkpoint_storage": storage_config(storage), "hyperparameters": hparams}
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
def cluster(
    storage: Path | dict, hparams: dict, slots: int = 1, latest: str | None = None, distributed=None
) -> Iterator:
    """Determined's off-cluster route: the fake ClusterInfo and core._dummy_init on ``storage`` (a
    shared_fs folder, or an s3/gcs config dict)."""
    saved_info, saved_init = det._info._info, _torch_batch_process._initialize_default_inference_context
    saved_load = batch.load_network
    det._info._info = fake_info(storage, hparams, slots, latest)
    _torch_batch_process._initialize_default_inference_context = lambda _: core._dummy_init(
        distributed=distributed, checkpoint_storage=storage_argument(storage)
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


def run_until_the_second_checkpoint(storage: Path | dict, hparams: dict) -> None:
    """The job dies at its second progress checkpoint: that interval's shard is written, its
    checkpoint is not."""
    real = _torch_batch_process._synchronize_and_checkpoint
    calls = []

    def dies_at_the_second(*args, **kwargs):
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


def assert_resumed_as_whole(resumed: dict, whole: dict, manifest: batch.Manifest, outputs: Path, whole_outputs: Path):
    assert sorted(resumed["ids"].tolist() + resumed["skipped_ids"].tolist()) == list(range(len(manifest.paths)))
    for key in ("ids", "sha256", "first", "second"):
        assert np.array_equal(resumed[key], whole[key]), key  # bit for bit: the same batches, the same code
    for name in ("duplicates.json", "to_remove.json", "summary.json", "pairs.csv"):
        assert (outputs / name).read_bytes() == (whole_outputs / name).read_bytes()


def test_a_run_stopped_after_a_shard_whose_checkpoint_never_landed_resumes_and_replays_it(folder, tmp_path):
    hparams = settings_for(folder, tmp_path / "whole")
    with cluster(tmp_path / "whole-storage", hparams):
        batch.run(batch.JobSettings.from_hparams(hparams))
    hparams = settings_for(folder, tmp_path / "resumed")
    storage = tmp_path / "storage"
    run_until_the_second_checkpoint(storage, hparams)
    latest = newest_checkpoint(storage)
    assert json.loads((storage / latest / "metadata.json").read_text())["steps_completed"] == 2
    assert not (tmp_path / "resumed").exists()  # nothing written before the end
    with cluster(storage, hparams, latest=latest):
        batch.run(batch.JobSettings.from_hparams(hparams))
    manifest = batch.manifest_of(batch.JobSettings.from_hparams(hparams))
    resumed = batch.read_shards(output_shards(storage), manifest)
    whole = batch.read_shards(output_shards(tmp_path / "whole-storage"), manifest)
    assert_resumed_as_whole(resumed, whole, manifest, tmp_path / "resumed", tmp_path / "whole")


@contextlib.contextmanager
def s3_bucket(tmp_path: Path, monkeypatch) -> Iterator[dict]:
    """S3 in moto's in-process mock of AWS (no network, no real bucket), as boto3 sees it."""
    moto = pytest.importorskip("moto")
    import boto3

    fake = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
            "AWS_CONFIG_FILE": str(tmp_path / "no-config")}  # fmt: skip
    for name, value in fake.items():  # never the user's own credentials or endpoints
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with moto.mock_aws():
        boto3.client("s3").create_bucket(Bucket="samespace-test")
        yield {"type": "s3", "bucket": "samespace-test"}


@contextlib.contextmanager
def gcs_bucket(tmp_path: Path, monkeypatch) -> Iterator[dict]:
    """GCS in gcp-storage-emulator's in-memory server on 127.0.0.1 (STORAGE_EMULATOR_HOST: the
    google-cloud-storage client then goes there with anonymous credentials)."""
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    (port,) = free_ports(1)
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="samespace-test")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "samespace-test")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    server.start()
    try:
        yield {"type": "gcs", "bucket": "samespace-test"}
    finally:
        server.stop()


@contextlib.contextmanager
def checkpoint_storage(kind: str, tmp_path: Path, monkeypatch) -> Iterator[Path | dict]:
    """A shared_fs folder, or cloud storage without a network: determined's own S3/GCS storage
    managers on an in-process mock or a loopback emulator, their local copies in ``temp_dir``."""
    if kind == "shared_fs":
        yield tmp_path / "storage"
        return
    made = s3_bucket if kind == "s3" else gcs_bucket
    with made(tmp_path, monkeypatch) as config:
        yield {**config, "prefix": "determined", "temp_dir": str(tmp_path / "cloud-temp")}


@pytest.fixture(params=["s3", "gcs"])
def bucket(request, tmp_path, monkeypatch) -> Iterator[dict]:
    with checkpoint_storage(request.param, tmp_path, monkeypatch) as config:
        yield config


def stored(config: dict) -> dict[str, Any]:
    """The bucket's objects: key -> a function reading its bytes."""
    if config["type"] == "s3":
        import boto3

        items = boto3.resource("s3").Bucket(config["bucket"]).objects.all()
        return {item.key: (lambda item=item: item.get()["Body"].read()) for item in items}
    from google.cloud import storage as gcs

    return {blob.name: blob.download_as_bytes for blob in gcs.Client().bucket(config["bucket"]).list_blobs()}


def newest_checkpoint_in(config: dict) -> tuple[str, dict]:
    """``newest_checkpoint`` for a bucket: the progress checkpoint with the most steps, and its metadata."""
    found = []
    for key, read in stored(config).items():
        if key.startswith(config["prefix"] + "/") and key.endswith("/metadata.json"):
            metadata = json.loads(read())
            if "steps_completed" in metadata:
                found.append((metadata["steps_completed"], key.split("/")[-2], metadata))
    steps, storage_id, metadata = max(found, key=lambda entry: entry[0])
    return storage_id, metadata


def newest(storage: Path | dict) -> tuple[str, dict]:
    """The newest progress checkpoint and its metadata, in a shared_fs folder or a bucket."""
    if isinstance(storage, dict):
        return newest_checkpoint_in(storage)
    latest = newest_checkpoint(storage)
    return latest, json.loads((storage / latest / "metadata.json").read_text())


@contextlib.contextmanager
def shards_in(storage: Path | dict, output_uuid: str) -> Iterator[Path]:
    """The job's shards folder (``rank_*/``): in place on shared_fs, downloaded from a bucket."""
    if not isinstance(storage, dict):
        yield storage / output_uuid
        return
    from determined.common import storage as stores

    with stores.build(storage, None).restore_path(output_uuid) as folder:
        yield Path(folder)


def test_on_s3_or_gcs_storage_the_job_resumes_from_its_checkpoint_in_the_bucket_and_writes_local_dedups_outputs(
    folder, tmp_path, bucket
):
    """The stop-and-resume run above with ``checkpoint_storage`` of type s3 or gcs (determined's own
    storage managers on moto's mock or the GCS emulator): shards uploaded to the bucket, the resume
    reads its progress checkpoint from it, the chief downloads every shard through the storage
    manager and refuses a shard cut short there in one line, writing nothing; after the shard is
    whole again, the outputs equal an uninterrupted shared_fs run's bit for bit and local dedup's."""
    from determined.common import storage

    hparams = settings_for(folder, tmp_path / "whole")
    with cluster(tmp_path / "whole-storage", hparams):
        batch.run(batch.JobSettings.from_hparams(hparams))
    hparams = settings_for(folder, tmp_path / "resumed")
    run_until_the_second_checkpoint(bucket, hparams)
    latest, metadata = newest(bucket)
    assert metadata["steps_completed"] == 2 and not (tmp_path / "resumed").exists()
    shards = f"determined/{metadata['default_output_uuid']}/rank_0/"
    first_two = [shards + "shard-r000-b00000000-00000001.npz", shards + "shard-r000-b00000002-00000003.npz"]
    assert set(first_two + [key + ".sha256" for key in first_two]) <= set(stored(bucket))
    payload, manager = stored(bucket)[first_two[0]](), storage.build(bucket, None)
    put = tmp_path / "put" / "rank_0"
    put.mkdir(parents=True)
    (put / Path(first_two[0]).name).write_bytes(payload[: len(payload) // 2])
    manager.upload(put.parent, metadata["default_output_uuid"])  # a shard cut short in the bucket
    with cluster(bucket, hparams, latest=latest), pytest.raises(DataError, match="is corrupt or cut short") as caught:
        batch.run(batch.JobSettings.from_hparams(hparams))
    assert "\n" not in str(caught.value) and not (tmp_path / "resumed").exists()  # refused, nothing written
    (put / Path(first_two[0]).name).write_bytes(payload)
    manager.upload(put.parent, metadata["default_output_uuid"])
    latest, _ = newest(bucket)  # the restart after the chief's refusal: all batches done
    with cluster(bucket, hparams, latest=latest):
        batch.run(batch.JobSettings.from_hparams(hparams))
    manifest = batch.manifest_of(batch.JobSettings.from_hparams(hparams))
    with shards_in(bucket, metadata["default_output_uuid"]) as downloaded:
        resumed = batch.read_shards(downloaded, manifest)
    whole = batch.read_shards(output_shards(tmp_path / "whole-storage"), manifest)
    assert_resumed_as_whole(resumed, whole, manifest, tmp_path / "resumed", tmp_path / "whole")
    assert_same_outputs(tmp_path / "resumed", local_outputs(folder, tmp_path / "local"), small_network())
    assert catalogue.load(tmp_path / "resumed" / "catalogue").neighbours == 20
    left = [p for p in Path(bucket["temp_dir"]).rglob("*") if p.is_file()]
    assert not left, left  # the storage manager's local copies are gone


class Slot:
    """What ``batch.load_network`` reads of a TorchBatchProcessorContext."""

    def __init__(self, core_context: core.Context):
        self._core_context, self.device = core_context, torch.device("cpu")


@pytest.mark.parametrize("kind", ["shared_fs", "s3", "gcs"])
def test_a_checkpoint_uuid_is_restored_from_checkpoint_storage_and_one_not_there_is_one_line(
    tmp_path, monkeypatch, kind
):
    from samespace.checkpoints import TRIAL_SPEC

    hparams = {"learning_rate": 1e-3, "alpha": 0.9, "dropout1": 0.3, "dropout2": 0.4, "dropout3": 0.5}
    torch.manual_seed(3)
    saved = SiameseNet(pretrained=False, dropouts=(0.3, 0.4, 0.5)).eval()
    with checkpoint_storage(kind, tmp_path, monkeypatch) as storage:
        context = core._dummy_init(checkpoint_storage=storage_argument(storage))
        with context.checkpoint.store_path({"steps_completed": 3}) as (folder, uuid):  # uploaded on exit
            (folder / "load_data.json").write_text(json.dumps({"trial_cls_spec": TRIAL_SPEC, "hparams": hparams}))
            torch.save({"models_state_dict": [saved.state_dict()]}, folder / "state_dict.pth")
        if isinstance(storage, dict):
            assert f"determined/{uuid}/state_dict.pth" in stored(storage)
        restored_and_refused(saved, uuid, context, storage, tmp_path)


def restored_and_refused(saved: SiameseNet, uuid: str, context: core.Context, storage, tmp_path: Path) -> None:
    net, label = batch.load_network(
        batch.JobSettings.from_hparams(settings_for(tmp_path, tmp_path, checkpoint=uuid)), Slot(context)
    )
    assert label == uuid and net.preprocessing == saved.preprocessing
    loaded = net.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in saved.state_dict().items())
    if isinstance(storage, dict):
        assert not [p for p in Path(storage["temp_dir"]).rglob("*") if p.is_file()]  # the download is removed
    for wrong, message in [
        ("0b9b6f1e-1c1d-4d6e-9f3a-5a6b7c8d9e0f", r"not in this experiment's checkpoint storage \(Did not find"),
        (uuid[:8], r"neither a checkpoint folder every slot sees nor a checkpoint UUID$"),
    ]:
        settings = batch.JobSettings.from_hparams(settings_for(tmp_path, tmp_path, checkpoint=wrong))
        with pytest.raises(ConfigError, match=rf"^hyperparameters.checkpoint = {wrong}: {message}") as caught:
            batch.load_network(settings, Slot(context))
        assert "\n" not in str(caught.value)


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
with test_batch.cluster({storage}, hparams, slots=2, latest=latest, distributed=distributed):
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


@pytest.mark.parametrize("kind", ["shared_fs", "gcs"])
def test_two_workers_on_loopback_killed_and_restarted_give_every_photo_once(folder, tmp_path, monkeypatch, kind):
    """2 processes with Determined's ZMQ DistributedContext on 127.0.0.1; worker 1 is killed in
    its 4th batch, the other with it (as Determined restarts the whole trial); the restart from the
    newest progress checkpoint gives every photo exactly once, bit-identical to an uninterrupted
    run (one slot: the same batches), and the outputs of local dedup. On gcs both workers share
    the GCS emulator and one temporary folder, as two slots of a node do."""
    with checkpoint_storage(kind, tmp_path, monkeypatch) as storage:
        two_workers_killed_and_restarted(folder, tmp_path, storage)


def two_workers_killed_and_restarted(folder: Path, tmp_path: Path, storage: Path | dict) -> None:
    places = dict(tests=str(PROJECT / "tests"), project=str(PROJECT), folder=str(folder))
    where = repr(storage) if isinstance(storage, dict) else f"Path({str(storage)!r})"

    def script(output: Path) -> str:
        pub, pull = free_ports(2)
        return TWO_SLOTS.format(**places, storage=where, output=str(output), pub=pub, pull=pull)

    first = two_workers(script(tmp_path / "job"), "", (0, 4))
    try:
        lines = iter(first[1].stdout.readline, "")  # Determined logs to stdout too
        assert any(line.strip() == "stuck" for line in lines)
    finally:
        for process in first:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
    latest, metadata = newest(storage)
    assert metadata["steps_completed"] == 2
    for process in two_workers(script(tmp_path / "job"), latest, (0, 0)):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0 and out.strip().endswith("done"), err[-2000:]
    whole_storage = tmp_path / "whole-storage"
    hparams = settings_for(folder, tmp_path / "whole", catalogue=False)
    with cluster(whole_storage, hparams):  # one slot, uninterrupted: the same batches of 4
        batch.run(batch.JobSettings.from_hparams(hparams))
    manifest = batch.manifest_of(batch.JobSettings.from_hparams(settings_for(folder, tmp_path / "job")))
    with shards_in(storage, metadata["default_output_uuid"]) as shards:
        resumed = batch.read_shards(shards, manifest)
        assert {p.name for p in shards.iterdir()} == {"rank_0", "rank_1"}
    whole = batch.read_shards(output_shards(whole_storage), manifest)
    assert sorted(resumed["ids"].tolist() + resumed["skipped_ids"].tolist()) == list(range(len(manifest.paths)))
    for key in ("ids", "sha256", "first", "second"):
        assert np.array_equal(resumed[key], whole[key]), key
    assert_same_outputs(tmp_path / "job", local_outputs(folder, tmp_path / "local"), small_network())
    if isinstance(storage, dict):
        left = [p for p in Path(storage["temp_dir"]).rglob("*") if p.is_file()]
        assert not left, left  # no worker's local copy is left behind


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
