"""data.py: labels, decoding of odd files, the pair set, sampling, transforms and the download."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

import data
import synthetic
from conftest import save_exif_rotated

# ---------------------------------------------------------------- labels and the generated split


def test_names_parse_into_rooms():
    photo = data.parse_photo(Path("x/new_york_12345_3.jpg"), "bedroom")
    assert (photo.room_type, photo.city, photo.room_id) == ("bedroom", "new_york", "12345")
    assert data.parse_photo(Path("x/IMG_0001.JPG"), "bedroom") is None
    assert data.parse_photo(Path("x/holiday-snap.jpg"), "bedroom") is None
    assert data.parse_photo(Path("x/london_12_a.jpg"), "bedroom") is None
    assert data.parse_photo(Path("x/london_12.jpg"), "bedroom") is None


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
    pairs = data.build_pairs(split.rooms, data.wavelet_hashes(split.images))
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
    with pytest.raises(data.DataError, match="no readable photos"):
        data.load_split(tmp_path)
    with pytest.raises(data.DataError, match="split folder not found"):
        data.load_split(tmp_path / "missing")


# ---------------------------------------------------------------- decoding


def test_odd_modes_become_rgb(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = data.read_photo(tmp_path / "a.png", size=8)
    assert out.shape == (8, 8, 3)
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[7, 0]) == (255, 255, 255)  # white, not black

    Image.new("L", (10, 10), 77).save(tmp_path / "g.jpg")
    assert np.allclose(data.read_photo(tmp_path / "g.jpg", size=4), 77, atol=2)
    Image.new("CMYK", (10, 10), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    red = data.read_photo(tmp_path / "c.jpg", size=4).astype(int)
    assert red[..., 0].min() > 200 and red[..., 1:].max() < 60
    Image.new("RGB", (10, 10), (0, 128, 0)).convert("P").save(tmp_path / "p.png")
    assert data.read_photo(tmp_path / "p.png", size=4)[..., 1].min() > 100


def test_exif_orientation_is_honoured(tmp_path):
    save_exif_rotated(tmp_path / "r.jpg")
    upright = data.read_photo(tmp_path / "r.jpg", size=32).astype(int)
    top, bottom = upright[:12].mean(axis=(0, 1)), upright[-12:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60  # red on top
    assert bottom[2] > 200 and bottom[0] < 60  # blue below


def test_unreadable_files_raise_one_line(tmp_path):
    (tmp_path / "t.jpg").write_text("hello")
    with pytest.raises(data.DataError) as error:
        data.read_photo(tmp_path / "t.jpg")
    assert str(error.value).startswith("cannot read t.jpg:") and "\n" not in str(error.value)


def test_preprocessing_scales_before_normalising():
    white = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    out = data.normalise(white)
    expected = [(1 - m) / s for m, s in zip(data.IMAGENET_MEAN, data.IMAGENET_STD)]
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected), atol=1e-6)


# ---------------------------------------------------------------- pair set


def rooms_of(sizes):
    return np.repeat(np.arange(len(sizes)), sizes)


def random_hashes(n, seed=0):
    return np.random.default_rng(seed).integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)


def test_pair_counts_follow_group_sizes():
    sizes = [2, 3, 5, 4] + [1] * 130  # enough different-room pairs for 64 x sum(g^2) negatives
    rooms = rooms_of(sizes)
    pairs = data.build_pairs(rooms, random_hashes(len(rooms)))
    positives = 64 * sum(g * g for g in sizes)
    assert pairs.positives == positives
    assert len(pairs) == data.expected_pair_count(sizes) == 2 * positives
    # Labels agree with the rooms, positives include self-pairs, negatives are untransformed.
    assert np.array_equal(pairs.label, (rooms[pairs.first] == rooms[pairs.second]).astype(np.uint8))
    pos = pairs.label == 1
    assert np.any(pairs.first[pos] == pairs.second[pos])
    assert not np.any(pairs.first_variant[~pos]) and not np.any(pairs.second_variant[~pos])


def test_each_positive_pair_appears_in_all_64_variant_combinations():
    rooms = rooms_of([3, 2])
    pairs = data.build_pairs(rooms, random_hashes(5))
    pos = pairs.label == 1
    combos = {}
    for a, b, v1, v2 in zip(pairs.first[pos], pairs.second[pos], pairs.first_variant[pos], pairs.second_variant[pos]):
        combos.setdefault((a, b), set()).add((v1, v2))
    assert len(combos) == 9 + 4
    assert all(len(c) == 64 for c in combos.values())


def test_self_pairs_can_be_excluded():
    sizes = [2, 3, 1]
    pairs = data.build_pairs(rooms_of(sizes), random_hashes(6), self_pairs=False)
    assert pairs.positives == 64 * sum(g * g - g for g in sizes)
    assert not np.any(pairs.first == pairs.second)


def test_airbnb_sized_split_gives_the_original_epoch():
    # 631 photos whose same-room ordered pairs (self-pairs included) number 1,559, as the original.
    sizes = [1] * 148 + [2] * 104 + [3] * 50 + [4] * 20 + [5] * 9
    assert sum(sizes) == 631 and sum(g * g for g in sizes) == 1559
    pairs = data.build_pairs(rooms_of(sizes), random_hashes(631))
    assert len(pairs) == 199_552


@pytest.mark.parametrize("sampler", ["exact", "streaming"])
def test_sampling_is_reproducible_without_repeats(sampler):
    rooms = rooms_of([2, 3, 2, 4] + [1] * 120)
    hashes = random_hashes(len(rooms))
    a = data.build_pairs(rooms, hashes, sampler=sampler)
    b = data.build_pairs(rooms, hashes, sampler=sampler)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("first", "second", "label"))
    neg = a.label == 0
    flat = a.first[neg] * len(rooms) + a.second[neg]
    assert len(np.unique(flat)) == neg.sum()
    c = data.build_pairs(rooms, hashes, sampler=sampler, seed=1)
    assert not np.array_equal(a.first, c.first) or not np.array_equal(a.second, c.second)


def test_too_few_negatives_takes_all_of_them(caplog):
    rooms = rooms_of([3, 1])  # 9+1 positive pairs x64 but only 6 negative ordered pairs
    pairs = data.build_pairs(rooms, random_hashes(4))
    assert (pairs.label == 0).sum() == 6
    assert "only 6 negative pairs" in caplog.text


def test_near_negatives_are_drawn_more_often():
    # Singletons whose hashes sit at controlled distances: 1 bit, 8 bits or 32 bits from photo 0.
    base = np.uint64(0)
    hashes = np.array(
        [base]
        + [np.uint64(1 << i) for i in range(5)]
        + [np.uint64((1 << 8) - 1) << np.uint64(8 * (i + 1)) for i in range(5)]
        + [np.uint64(0xFFFFFFFF) << np.uint64(i) for i in range(5)],
        dtype=np.uint64,
    )
    rooms = np.arange(len(hashes))
    distance = data.hamming(hashes[:, None], hashes[None, :])
    near, far = (distance > 0) & (distance <= 2), distance >= 24
    counts = np.zeros((len(rooms), len(rooms)))
    for seed in range(40):
        flat = data.sample_negatives_streaming(rooms, hashes, 60, seed=seed)
        np.add.at(counts, (flat // len(rooms), flat % len(rooms)), 1)
    rate_near, rate_far = counts[near].mean() / 40, counts[far].mean() / 40
    assert rate_near > 0.5 and rate_far < 0.05 and rate_near > 10 * rate_far


def test_streaming_sampler_matches_exact_draw_frequencies():
    """Both methods sample the same distribution: compare inclusion frequencies per pair."""
    rooms = np.array([0, 0, 1, 2, 3])
    hashes = np.array([0, 0b1, 0b11, 0b1111, 0b11111111], dtype=np.uint64)
    n, k, runs = len(rooms), 4, 3000
    freq = {}
    for name, sampler in data.SAMPLERS.items():
        counts = np.zeros(n * n)
        for seed in range(runs):
            counts[sampler(rooms, hashes, k, seed=seed)] += 1
        freq[name] = counts / runs
    candidates = (rooms[:, None] != rooms[None, :]).reshape(-1)
    assert np.all(freq["exact"][~candidates] == 0) and np.all(freq["streaming"][~candidates] == 0)
    # Binomial standard error at 3000 runs is at most 0.009; allow 4 of them.
    assert np.max(np.abs(freq["exact"] - freq["streaming"])) < 0.036
    assert np.isclose(freq["streaming"].sum(), k)


def test_streaming_sampler_result_does_not_depend_on_block_size():
    rooms = rooms_of([2, 1, 3, 2, 1, 1, 2])
    hashes = random_hashes(len(rooms), seed=3)
    a = data.sample_negatives_streaming(rooms, hashes, 20, block=12)
    b = data.sample_negatives_streaming(rooms, hashes, 20, block=1 << 20)
    assert np.array_equal(a, b)


# ---------------------------------------------------------------- transforms and datasets


def test_upsampled_pairs_carry_their_transforms():
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    pairs = data.build_pairs(np.array([0, 0]), np.array([0, 1], dtype=np.uint64))
    dataset = data.ImagePairDataset(images, pairs)
    by_variants = {
        (int(a), int(b), int(v1), int(v2)): i
        for i, (a, b, v1, v2) in enumerate(zip(pairs.first, pairs.second, pairs.first_variant, pairs.second_variant))
    }
    plain = data.normalise(images[0])
    flipped_first, plain_second, label = dataset[by_variants[(0, 1, 1, 0)]]
    assert torch.equal(flipped_first, torch.flip(plain, dims=[-1])) and label == 1
    assert torch.equal(plain_second, data.normalise(images[1]))
    rotated = TF.rotate(images[1], 5.0, interpolation=TF.InterpolationMode.BILINEAR)
    assert torch.equal(dataset[by_variants[(0, 1, 0, 2)]][1], data.normalise(rotated))
    all_three = TF.rotate(
        TF.rotate(torch.flip(images[0], dims=[-1]), 5.0, interpolation=TF.InterpolationMode.BILINEAR),
        -5.0,
        interpolation=TF.InterpolationMode.BILINEAR,
    )
    assert torch.equal(dataset[by_variants[(0, 0, 7, 0)]][0], data.normalise(all_three))
    assert not torch.equal(dataset[by_variants[(0, 0, 6, 0)]][0], plain)  # +5 then -5 is not the identity


def test_wavelet_hashes_match_imagehash():
    import imagehash

    images = torch.randint(0, 256, (3, 3, 256, 256), dtype=torch.uint8)
    packed = data.wavelet_hashes(images)
    for i in range(3):
        expected = imagehash.whash(Image.fromarray(images[i].permute(1, 2, 0).numpy()))
        assert int(packed[i]) == int(str(expected), 16)
    first = imagehash.whash(Image.fromarray(images[0].permute(1, 2, 0).numpy()))
    second = imagehash.whash(Image.fromarray(images[1].permute(1, 2, 0).numpy()))
    assert data.hamming(packed[0], packed[1]) == first - second


# ---------------------------------------------------------------- download


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
    with pytest.raises(data.DataError, match="network unreachable"):
        data.download(tmp_path, api_factory=lambda: FakeKaggle(dataset_zip, fail=True))
    assert not data.is_complete(tmp_path)


def test_missing_credentials_fake_gives_one_line(tmp_path, dataset_zip, capsys):
    with pytest.raises(data.DataError, match="Kaggle credentials not found") as error:
        data.download(tmp_path, api_factory=lambda: FakeKaggle(dataset_zip, authenticated=False))
    assert "\n" not in str(error.value) and "a page of help" not in capsys.readouterr().out


def test_missing_credentials_with_the_real_kaggle_client(tmp_path, monkeypatch):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "home" / ".kaggle"))
    with pytest.raises(data.DataError, match="KAGGLE_USERNAME and KAGGLE_KEY"):
        data.download(tmp_path / "data")


def test_ensure_dataset_uses_a_placed_copy_when_downloads_are_off(tmp_path):
    (data.dataset_root(tmp_path) / "Training Data").mkdir(parents=True)
    assert data.ensure_dataset(tmp_path, allow_download=False) == data.dataset_root(tmp_path)
    with pytest.raises(data.DataError, match="python data.py --data-dir"):
        data.ensure_dataset(tmp_path / "empty", allow_download=False)


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert data.resolve_data_dir(None) == tmp_path / "data"
    assert data.resolve_data_dir("elsewhere") == tmp_path / "elsewhere"
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "mounted"))
    assert data.resolve_data_dir("elsewhere") == tmp_path / "mounted"
    assert data.resolve_data_dir("elsewhere", explicit="flag") == tmp_path / "flag"


def test_download_command_without_credentials_is_one_line(tmp_path, monkeypatch, capsys):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "home" / ".kaggle"))
    assert data.main(["--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Kaggle credentials not found") and err.count("\n") == 1


def test_popcount_fallback_matches_numpy(monkeypatch):
    values = random_hashes(50, seed=9)
    expected = np.array([bin(int(v)).count("1") for v in values])
    assert np.array_equal(data.popcount(values), expected)
    monkeypatch.delattr(np, "bitwise_count")  # the byte-table path of numpy < 2 images
    assert np.array_equal(data.popcount(values), expected)
    assert np.array_equal(data.popcount(values.reshape(5, 10)), expected.reshape(5, 10))
