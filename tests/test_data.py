"""data.py: labels, decoding of odd files, the pair set, sampling, transforms and the download."""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomRotation

import data
import synthetic
from samespace.errors import DataError
from samespace.pairs import build_pairs, wavelet_hashes
from samespace.settings import DATA_DIR_ENV, DataSettings, resolve_data_dir
from samespace.transforms import normalise

# ---------------------------------------------------------------- labels and the generated split


@pytest.mark.parametrize(
    "name, room",
    [
        ("seattle_3269390_1.jpg", ("seattle", "3269390")),
        ("boston_13693491_2 .jpg", ("boston", "13693491")),  # in the Kaggle set; the original keeps it
        ("london_12_a.JPEG", ("london", "12")),  # three fields: always the original's first two
        ("new_1_2.webp", ("new", "1")),
        ("new_york_12345_3.jpg", ("new_york", "12345")),  # multi-word city (the original: new / york)
        ("rio_de_janeiro_55_3.png", ("rio_de_janeiro", "55")),
        ("boston_123_1_edited.jpg", ("boston", "123")),  # numeric second field: the original's reading
        ("st.louis_7_1.jpg", ("st.louis", "7")),
    ],
)
def test_names_parse_into_rooms(name, room):
    photo = data.parse_photo(Path("x") / name, "bedroom")
    assert (photo.room_type, photo.city, photo.room_id) == ("bedroom", *room)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("IMG_0001.JPG", "name is not <city>_<room_id>_<n>.<ext>"),
        ("holiday-snap.jpg", "name is not"),
        ("london_12.jpg", "name is not"),
        ("london_12_3", "name is not"),  # no extension
        (".DS_Store", "name is not"),
        ("new_york_abc_1.jpg", "no numeric room_id"),
        ("_12_1.jpg", "empty city or room_id"),
        ("london__1.jpg", "empty city or room_id"),
        ("new__york_123_1.jpg", "empty city or room_id"),
    ],
)
def test_names_without_a_room_are_refused_with_the_reason(name, reason):
    assert data.parse_photo(Path("x") / name, "bedroom") is None
    assert reason in data.room_of_name(name)


def original_room(name: str) -> tuple[str, ...]:
    """The original's label: room-type folder and the first two ``_`` fields of the stem."""
    room_type, file_name = name.split("/")
    return (room_type, *Path(file_name).stem.split("_")[:2])


KAGGLE_NAMES = Path(__file__).resolve().parents[2] / "shared/fixtures/airbnb_training_names.txt"
needs_kaggle_names = pytest.mark.skipif(
    not KAGGLE_NAMES.is_file(),
    reason=f"fixture {KAGGLE_NAMES} absent: it lists the Kaggle set's 631 Training Data names; to run this test, "
    "put the project's shared/ folder beside the repository (as CI does), or write the list from a copy in data/: "
    "mkdir -p ../shared/fixtures && (cd 'data/Airbnb Data/Training Data' && find . -type f | cut -c3- | sort) "
    "> ../shared/fixtures/airbnb_training_names.txt",
)


@needs_kaggle_names
def test_kaggle_names_give_the_original_room_partition():
    names = KAGGLE_NAMES.read_text().splitlines()
    ours = [data.parse_photo(Path(n), n.split("/")[0]) for n in names]
    assert all(ours)
    partition = lambda labels: sorted(sorted(i for i, x in enumerate(labels) if x == label) for label in set(labels))  # noqa: E731
    assert partition([p.room for p in ours]) == partition([original_room(n) for n in names])


@needs_kaggle_names
def test_kaggle_training_split_end_to_end(tmp_path):
    """The 631 Training Data names as tiny JPEG files, through data.load_pairs (load_split,
    wavelet hashes, build_pairs): every photo labelled, the original's room groups and pair counts."""
    names = KAGGLE_NAMES.read_text().splitlines()
    assert len(names) == 631
    split_dir = data.dataset_root(tmp_path) / data.SPLITS["train"]
    colours = np.random.default_rng(0).integers(0, 256, (len(names), 3))
    for name, colour in zip(names, colours):
        path = split_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 24), tuple(int(c) for c in colour)).save(path)
    split, pairs = data.load_pairs(DataSettings(download=False), "train", data_dir=tmp_path)
    assert len(split) == 631 and split.skipped == []
    assert {p.path.name for p in split.photos} >= {"boston_13693491_2 .jpg"}
    sizes = Counter(np.unique(split.rooms, return_counts=True)[1].tolist())
    assert sizes == {1: 3, 2: 218, 3: 37, 4: 15, 5: 3, 6: 1}
    assert sum(g * g * k for g, k in sizes.items()) == 1_559  # positive ordered pairs, self-pairs included
    assert pairs.positives == 99_776 and len(pairs) == 199_552
    assert np.array_equal(pairs.label, (split.rooms[pairs.first] == split.rooms[pairs.second]).astype(np.uint8))


def test_room_requires_type_city_and_id_to_match():
    photos = [
        data.Photo(Path("a"), "bedroom", "paris", "1"),
        data.Photo(Path("b"), "bedroom", "paris", "1"),
        data.Photo(Path("c"), "kitchen", "paris", "1"),  # other room-type folder
        data.Photo(Path("d"), "bedroom", "lisbon", "1"),  # other city
        data.Photo(Path("e"), "bedroom", "paris", "2"),  # other id
    ]
    labels = data.room_labels(photos)
    assert labels[0] == labels[1]
    assert len(set(labels[1:].tolist())) == 4


def test_split_labels_and_skips_are_exact(airbnb):
    split = data.load_split(airbnb["root"] / data.SPLITS["train"])
    generated = {p.path for p in airbnb["made"]["train"]}
    expected = generated | set(airbnb["odd"]["kept"])
    assert {p.path for p in split.photos} == expected
    assert {s.path for s in split.skipped} == set(airbnb["odd"]["skipped"])
    assert split.images.shape == (len(expected), 3, 256, 256) and split.images.dtype == torch.uint8
    # Room groups: the generated rooms, five single odd photos, and the EXIF photo with its twin.
    sizes = sorted(np.unique(split.rooms, return_counts=True)[1].tolist())
    assert sizes == sorted(synthetic.group_sizes(airbnb["made"]["train"]) + [1] * 5 + [2])
    # Pair counts on these photos: 64 * sum(g^2) positives, negatives capped by what exists.
    pairs = build_pairs(split.rooms, wavelet_hashes(split.images))
    positives = 64 * sum(g * g for g in sizes)
    n = len(split)
    assert pairs.positives == positives
    assert len(pairs) - positives == min(positives, n * n - sum(g * g for g in sizes))


def test_skipped_files_are_reported_with_reasons(airbnb, caplog):
    with caplog.at_level("WARNING", logger="samespace.data"):
        split = data.load_split(airbnb["root"] / data.SPLITS["train"])
    reasons = {s.path.name: s.reason for s in split.skipped}
    assert "truncated" in reasons["oslo_7008_0.jpg"]
    assert "not an image" in reasons["oslo_7009_0.jpg"]
    assert reasons["holiday-snap.jpg"].startswith("name is not")
    assert reasons["oslo_7010_0.jpg"] == "not inside a <room-type> folder"
    assert "skipped 4 files" in caplog.text
    assert all("\n" not in r for r in reasons.values())


def test_empty_split_is_a_clear_error(tmp_path):
    (tmp_path / "bedroom").mkdir()
    with pytest.raises(DataError, match="no readable photos"):
        data.load_split(tmp_path)
    with pytest.raises(DataError, match="split folder not found"):
        data.load_split(tmp_path / "missing")


def test_upsampled_pairs_carry_their_transforms():
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    pairs = build_pairs(np.array([0, 0]), np.array([0, 1], dtype=np.uint64))
    dataset = data.ImagePairDataset(images, pairs)
    by_variants = {
        (int(a), int(b), int(v1), int(v2)): i
        for i, (a, b, v1, v2) in enumerate(zip(pairs.first, pairs.second, pairs.first_variant, pairs.second_variant))
    }
    plain = normalise(images[0])
    flipped_first, plain_second, label = dataset[by_variants[(0, 1, 1, 0)]]
    assert torch.equal(flipped_first, torch.flip(plain, dims=[-1])) and label == 1
    assert torch.equal(plain_second, normalise(images[1]))
    rotated = RandomRotation((5, 5))(images[1])  # the original's transform, its defaults
    assert torch.equal(dataset[by_variants[(0, 1, 0, 2)]][1], normalise(rotated))
    all_three = RandomRotation((-5, -5))(RandomRotation((5, 5))(torch.flip(images[0], dims=[-1])))
    assert torch.equal(dataset[by_variants[(0, 0, 7, 0)]][0], normalise(all_three))
    assert not torch.equal(dataset[by_variants[(0, 0, 6, 0)]][0], plain)  # +5 then -5 is not the identity


class FakeKaggle:
    """Stands in for KaggleApi at the boundary: serves a zip of a generated dataset."""

    def __init__(self, zip_bytes: bytes, authenticated: bool = True, fail: bool = False):
        self.zip_bytes, self.authenticated, self.fail, self.calls = zip_bytes, authenticated, fail, 0

    def authenticate(self):
        if not self.authenticated:
            print("a page of help")
            raise SystemExit(1)

    def dataset_download_files(self, dataset, path, unzip, quiet, force):
        assert dataset == data.KAGGLE_DATASET and unzip
        self.calls += 1
        if self.fail:
            raise ConnectionError("network unreachable")
        with zipfile.ZipFile(io.BytesIO(self.zip_bytes)) as archive:
            archive.extractall(path)


@pytest.fixture(scope="module")
def dataset_zip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zip")
    synthetic.make_dataset(folder, train_rooms=2, test_rooms=1, photos_per_room=(2, 2), size=(32, 24))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in folder.rglob("*"):
            archive.write(path, path.relative_to(folder))
    return buffer.getvalue()


def test_download_once_then_trust_the_marker(tmp_path, dataset_zip):
    api = FakeKaggle(dataset_zip)
    root = data.download(tmp_path, api_factory=lambda: api)
    assert (root / "Training Data").is_dir() and data.is_complete(tmp_path)
    data.download(tmp_path, api_factory=lambda: api)
    assert api.calls == 1


def test_half_finished_download_is_redone(tmp_path, dataset_zip):
    (data.dataset_root(tmp_path) / "Training Data").mkdir(parents=True)  # unzip cut short, no marker
    api = FakeKaggle(dataset_zip)
    data.download(tmp_path, api_factory=lambda: api)
    assert api.calls == 1 and data.is_complete(tmp_path)


def test_failed_download_leaves_no_marker(tmp_path, dataset_zip):
    with pytest.raises(DataError, match="network unreachable"):
        data.download(tmp_path, api_factory=lambda: FakeKaggle(dataset_zip, fail=True))
    assert not data.is_complete(tmp_path)


def test_missing_credentials_fake_gives_one_line(tmp_path, dataset_zip, capsys):
    with pytest.raises(DataError, match="Kaggle credentials not found") as error:
        data.download(tmp_path, api_factory=lambda: FakeKaggle(dataset_zip, authenticated=False))
    assert "\n" not in str(error.value) and "a page of help" not in capsys.readouterr().out


def test_missing_credentials_with_the_real_kaggle_client(tmp_path, monkeypatch):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "home" / ".kaggle"))
    with pytest.raises(DataError, match="KAGGLE_USERNAME and KAGGLE_KEY"):
        data.download(tmp_path / "data")


def test_ensure_dataset_uses_a_placed_copy_when_downloads_are_off(tmp_path):
    (data.dataset_root(tmp_path) / "Training Data").mkdir(parents=True)
    assert data.ensure_dataset(tmp_path, allow_download=False) == data.dataset_root(tmp_path)
    with pytest.raises(DataError, match="python data.py --data-dir"):
        data.ensure_dataset(tmp_path / "empty", allow_download=False)


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir(None) == tmp_path / "data"
    assert resolve_data_dir("elsewhere") == tmp_path / "elsewhere"
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "mounted"))
    assert resolve_data_dir("elsewhere") == tmp_path / "mounted"
    assert resolve_data_dir("elsewhere", explicit="flag") == tmp_path / "flag"


def test_download_command_without_credentials_is_one_line(tmp_path, monkeypatch, capsys):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "home" / ".kaggle"))
    assert data.main(["--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Kaggle credentials not found") and err.count("\n") == 1


def test_download_leaves_no_lock_file_behind(tmp_path, dataset_zip):
    data.download(tmp_path / "d", api_factory=lambda: FakeKaggle(dataset_zip))
    assert not (tmp_path / "d" / ".download.lock").exists() and data.is_complete(tmp_path / "d")
    with pytest.raises(DataError, match="Kaggle credentials not found: .* uploads\\)$"):  # no "(SystemExit)"
        data.download(tmp_path / "none", api_factory=lambda: FakeKaggle(dataset_zip, authenticated=False))
    assert not (tmp_path / "none").exists()  # nothing written without credentials
