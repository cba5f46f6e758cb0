"""features.py: the trunk-feature cache gives the same model as the end-to-end path, and is
reused or rebuilt exactly when its key changes."""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
from conftest import float32_atol, small_trunk, summed_terms
from samespace import features
from samespace.network import SiameseNet, trainable_parameters
from samespace.pairs import build_pairs, wavelet_hashes
from samespace.transforms import N_VARIANTS, model_input


@pytest.fixture(scope="module")
def photos():
    generator = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=generator)  # coarse patterns
    noise = torch.randint(-20, 21, (6, 3, 256, 256), generator=generator)
    images = (blocks.repeat_interleave(32, 2).repeat_interleave(32, 3) + noise).clamp(0, 255).to(torch.uint8)
    rooms = np.array([0, 0, 1, 1, 1, 2])
    return images, build_pairs(rooms, wavelet_hashes(images))


def make_net(trunk=None, seed=0):
    torch.manual_seed(seed)
    net = SiameseNet(pretrained=False, dropouts=(0.3, 0.4, 0.5))
    if trunk is not None:
        net.trunk = trunk
    return net


def batches(pairs, size, count):
    order = np.random.default_rng(0).permutation(len(pairs))
    return [order[k * size : (k + 1) * size].tolist() for k in range(count)]


@pytest.mark.parametrize("trunk", ["small", "mobilenet"])
def test_cached_and_end_to_end_logits_are_equal(photos, tmp_path, trunk):
    images, pairs = photos
    net = make_net(small_trunk() if trunk == "small" else None).eval()
    cached = features.FeaturePairDataset(features.FeatureCache(tmp_path, net.trunk).features(images), pairs)
    end_to_end = data.ImagePairDataset(images, pairs)
    index = batches(pairs, 24, 1)[0] + [int(np.flatnonzero(pairs.label == 0)[0])]
    f1, f2, labels = cached.__getitems__(index)
    x1, x2, labels_e2e = torch.utils.data.default_collate([end_to_end[i] for i in index])
    with torch.inference_mode():
        from_features, from_images = net(f1, f2), net(x1, x2)
    assert torch.equal(labels, labels_e2e)
    # The trunk ran on other batches (64 images per variant vs 25 pairs): float32 rounding only.
    atol = float32_atol(summed_terms(net.trunk, net.towers[0], net.head))
    assert torch.allclose(from_features, from_images, rtol=0, atol=atol)
    if trunk == "small":
        assert from_images.std() > 10 * atol  # photo-dependent well beyond the tolerance


def test_cached_and_end_to_end_training_follow_the_same_losses(photos, tmp_path):
    images, pairs = photos
    reference = make_net(small_trunk())
    runs = {}
    for path in ("cached", "end_to_end"):
        net = copy.deepcopy(reference).train()
        optimizer = torch.optim.RMSprop(trainable_parameters(net), lr=1e-3, alpha=0.9)
        if path == "cached":
            dataset = features.FeaturePairDataset(features.FeatureCache(tmp_path, net.trunk).features(images), pairs)
            load = dataset.__getitems__
        else:
            dataset = data.ImagePairDataset(images, pairs)
            load = lambda idx: torch.utils.data.default_collate([dataset[i] for i in idx])  # noqa: E731
        torch.manual_seed(123)  # the same dropout masks on both paths
        losses = []
        for index in batches(pairs, 16, 5):
            first, second, labels = load(index)
            loss = F.binary_cross_entropy_with_logits(net(first, second), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        runs[path] = (losses,)
    # Five steps, each a forward and a backward pass through the chain, in other batches: float32
    # rounding accumulates over ten passes (losses are ~0.7; RMSprop scales updates by 1/rms(grad),
    # so relative gradient errors stay relative).
    chain = summed_terms(reference.trunk, reference.towers[0], reference.head)
    assert np.allclose(runs["cached"][0], runs["end_to_end"][0], rtol=0, atol=float32_atol(10 * chain))
    assert len(set(np.round(runs["cached"][0], 4))) > 1  # it trained


def test_cache_is_reused_and_rebuilt_when_its_key_changes(photos, tmp_path, monkeypatch):
    images, _ = photos
    trunk = small_trunk()
    first = features.FeatureCache(tmp_path, trunk)
    computed = first.features(images)
    assert first.built == len(images) and computed.shape == (6, N_VARIANTS, 960)

    again = features.FeatureCache(tmp_path, trunk)
    assert torch.equal(again.features(images), computed) and again.built == 0  # another run reuses it

    changed = images.clone()
    changed[2, 0, 0, 0] ^= 1  # one pixel of one photo
    partial = features.FeatureCache(tmp_path, trunk)
    partial.features(changed)
    assert partial.built == 1

    other_weights = small_trunk(seed=1)
    assert features.FeatureCache(tmp_path, other_weights).folder != first.folder
    retrained = features.FeatureCache(tmp_path, other_weights)
    retrained.features(images)
    assert retrained.built == len(images)

    monkeypatch.setattr(features, "PREPROCESSING", features.PREPROCESSING + ";another resize")
    preprocessed = features.FeatureCache(tmp_path, trunk)
    preprocessed.features(images)
    assert preprocessed.folder != first.folder and preprocessed.built == len(images)


def test_cached_features_are_the_trunk_of_each_variant(photos, tmp_path):
    images, _ = photos
    trunk = small_trunk()
    cached = features.FeatureCache(tmp_path, trunk).features(images[:2])
    atol = float32_atol(summed_terms(trunk))  # tanh features in [-1, 1], batched differently
    for variant in (0, 1, 5, 7):
        expected = trunk(model_input(images[:2], variant))
        assert torch.allclose(cached[:, variant], expected, rtol=0, atol=atol)
    assert not torch.allclose(cached[:, 0], cached[:, 1], rtol=0, atol=10 * atol)


def test_cache_files_are_written_atomically(photos, tmp_path):
    images, _ = photos
    cache = features.FeatureCache(tmp_path, small_trunk())
    cache.features(images[:1])
    assert not list(cache.folder.rglob("*.partial"))
    assert len(list(cache.folder.rglob("*.npy"))) == 1


def test_a_full_disk_leaves_no_partial_files_and_stale_ones_are_cleaned(photos, tmp_path, monkeypatch, caplog):
    """Writes failing with ENOSPC (the file created, nothing written) leave no zero-byte
    ``.partial`` behind and the features come from memory; ``.partial`` files left by a killed
    writer, in the cache folder and its subfolders, are removed by the next build."""
    import errno
    import logging

    images, _ = photos
    cache = features.FeatureCache(tmp_path, small_trunk())
    real_write = Path.write_bytes

    def full_disk(self, data):
        real_write(self, b"")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with caplog.at_level(logging.WARNING, logger="samespace.features"):
        in_memory = cache.features(images[:2])
    assert in_memory.shape[:2] == (2, N_VARIANTS) and torch.isfinite(in_memory).all()
    assert [r.message for r in caplog.records if r.levelno >= logging.WARNING][0].endswith("keeping features in memory")
    assert not list(cache.folder.rglob("*.partial")) and not list(cache.folder.rglob("*.npy"))
    monkeypatch.setattr(Path, "write_bytes", real_write)

    stale = [cache.folder / "ab" / ".abc.npy.4242.partial", cache.folder / "cd" / ".cd.npy.sha256.7.partial"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"" if "4242" in path.name else b"half an entry")
    (cache.folder / ".top.9.partial").write_bytes(b"")
    cache = features.FeatureCache(tmp_path, small_trunk())
    again = cache.features(images[:2])
    assert cache.built == 2 and torch.equal(again, in_memory)
    assert not list(cache.folder.rglob("*.partial")) and len(list(cache.folder.rglob("*.npy"))) == 2


# --------------------------------------------------------------------------------------------
# Nothing on disk is trusted


def reseal(path):
    """A checksum that matches the entry as it now is."""
    features.FeatureCache.checksum_path(path).write_text(hashlib.sha256(path.read_bytes()).hexdigest())


def damage_overwrite(path):
    np.save(path, np.full((N_VARIANTS, 960), 123.0, np.float32))  # a valid .npy with other values


def damage_truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def damage_nan(path):
    array = np.load(path)
    array[3, 7] = np.nan
    np.save(path, array)
    reseal(path)  # a matching checksum: the NaN is caught by value


def damage_shape(path):
    np.save(path, np.zeros((N_VARIANTS, 12), np.float32))
    reseal(path)


def damage_sidecar(path):
    features.FeatureCache.checksum_path(path).unlink()  # e.g. a write cut between entry and checksum


@pytest.mark.parametrize("damage", [damage_overwrite, damage_truncate, damage_nan, damage_shape, damage_sidecar])
def test_damaged_cache_entries_are_rebuilt_with_one_warning(photos, tmp_path, caplog, damage):
    images, _ = photos
    trunk = small_trunk()
    reference = features.FeatureCache(tmp_path, trunk).features(images)
    cache = features.FeatureCache(tmp_path, trunk)
    for index in (1, 4):
        damage(cache.path(features.image_key(images[index])))
    with caplog.at_level("WARNING", logger="samespace.features"):
        again = cache.features(images)
    # Recomputed, not used: equal up to the float32 summation order of the 768-term projection in a
    # batch of 2 instead of 6 (seen: ~1e-6 on features of magnitude <= 1; damage is >= 1 off).
    assert torch.allclose(again, reference, rtol=0, atol=1e-5)
    assert cache.rebuilt == 2 and cache.built == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "rebuilding 2 damaged entries" in warnings[0]
    healed = features.FeatureCache(tmp_path, trunk)
    assert torch.equal(healed.features(images), again) and healed.built == 0  # and rewritten intact


def test_an_unwritable_cache_costs_speed_not_the_run(photos, tmp_path, monkeypatch, caplog):
    images, _ = photos
    cache = features.FeatureCache(tmp_path, small_trunk())

    def full_disk(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(features.Path, "write_bytes", full_disk)
    with caplog.at_level("WARNING", logger="samespace.features"):
        computed = cache.features(images)
    assert computed.shape == (6, N_VARIANTS, 960) and torch.isfinite(computed).all()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]


def test_a_cache_folder_that_cannot_be_created_is_one_clear_error(photos, tmp_path, monkeypatch):
    images, _ = photos
    real_mkdir = features.Path.mkdir

    def refuse(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "readonly")):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(features.Path, "mkdir", refuse)
    with pytest.raises(features.DataError) as error:
        features.FeatureCache(tmp_path / "readonly", small_trunk()).features(images)
    message = str(error.value)
    assert "\n" not in message and "Permission denied" in message and "cache_dir" in message


def test_a_read_only_data_directory_falls_back_to_the_user_cache(tmp_path, monkeypatch, caplog):
    from samespace import settings

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    inside = data_dir / ".samespace-cache" / "features"
    assert settings.DataSettings(dir=str(data_dir)).cache_root() == inside  # writable: the shared place

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == inside else real_access(path, mode))
    with caplog.at_level("INFO", logger="samespace.settings"):
        root = settings.DataSettings(dir=str(data_dir)).cache_root()
        settings.DataSettings(dir=str(data_dir)).cache_root()
    assert root == tmp_path / "xdg-cache" / "samespace" / "features"
    assert len([r for r in caplog.records if "not writable" in r.getMessage()]) == 1  # one line, not one per call
    explicit = tmp_path / "mine"
    assert settings.DataSettings(dir=str(data_dir), cache_dir=str(explicit)).cache_root() == explicit

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert settings.user_cache_dir() == tmp_path / "home" / ".cache" / "samespace"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_chmod_read_only_data_directory_falls_back(tmp_path, monkeypatch):
    from samespace import settings

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o555)
    try:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
        root = settings.DataSettings(dir=str(data_dir)).cache_root()
        assert root == tmp_path / "xdg-cache" / "samespace" / "features"
        assert (
            features.FeatureCache(root, small_trunk()).features(torch.zeros(1, 3, 256, 256, dtype=torch.uint8)).shape[0]
            == 1
        )
    finally:
        data_dir.chmod(0o755)


def input_dependent_mobilenet(seed: int = 1) -> torch.nn.Module:
    """The real MobileNetV3-Large trunk, its convolutions re-drawn with fan-in scaling: with
    torchvision's fan-out initialisation (weights=None) the features are ~1e-8 and nearly the same
    for every photo; these are O(100) and vary between photos, so a layout bug would show."""
    trunk = SiameseNet(pretrained=False).trunk
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in trunk.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
    return trunk


def test_channels_last_trunk_features_equal_the_nchw_trunk(photos):
    images, _ = photos
    trunk = input_dependent_mobilenet()
    before = {name: tensor.clone() for name, tensor in trunk.state_dict().items()}
    fast = features.inference_trunk(trunk)
    for variant in (0, 6):
        with torch.inference_mode():
            exact = trunk(model_input(images[:3], variant))  # NCHW, as the end-to-end path runs it
        found = features.trunk_features(fast, images[:3], variant)
        assert found.dtype == torch.float32 and found.device == torch.device("cpu")
        assert exact.std(0).mean() > 0.01 * exact.abs().max()  # the photos differ well beyond the tolerance
        # oneDNN's channels_last kernels sum each output in another order: float32 rounding of sums
        # of up to 960 terms per layer (~sqrt(960) * 2**-24 relative each), compounded over 15
        # blocks, stays near 1e-5 of the largest feature (measured); 1e-4 leaves a 10x margin.
        assert (found - exact).abs().max() <= 1e-4 * exact.abs().max()
    # The caller's trunk keeps its layout and values: only the copy is channels_last.
    assert all(torch.equal(before[name], tensor) for name, tensor in trunk.state_dict().items())
    assert all(p.is_contiguous() for p in trunk.parameters())
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_cache_build_leaves_the_training_trunk_as_it_was(photos, tmp_path):
    images, _ = photos
    net = make_net().train()
    layouts = [p.is_contiguous() for p in net.trunk.parameters()]
    cache = features.FeatureCache(tmp_path, net.trunk)
    assert cache.batch_size == 64  # on the CPU; 256 on a GPU
    cache.features(images[:2])
    assert [p.is_contiguous() for p in net.trunk.parameters()] == layouts
    assert net.training and not net.trunk.training  # the frozen trunk stays in eval mode, as before
