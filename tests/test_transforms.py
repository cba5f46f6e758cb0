"""samespace/transforms.py: preprocessing order, the original's rotations, and variants that
follow the list of transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import RandomRotation

from samespace import pairs, transforms
from samespace.transforms import IMAGENET_MEAN, IMAGENET_STD, apply_variant, normalise


def test_preprocessing_scales_before_normalising():
    white = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalise(white)
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    # A few float32 roundings (scale, subtract, divide) of values ~2, each <= 2**-24 relative.
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected), rtol=16 * 2**-24, atol=0)


@pytest.mark.parametrize("degrees, variant", [(5, 0b010), (-5, 0b100)])
def test_rotations_equal_the_originals_random_rotation(degrees, variant):
    """RandomRotation((d, d)) with its defaults (nearest, fill 0) on a uint8 image, bit for bit."""
    image = torch.randint(0, 256, (3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = RandomRotation((degrees, degrees))(image)
    assert torch.equal(apply_variant(image, variant), expected)
    batch = torch.stack([image, image.flip(-1)])  # batched, as the feature cache applies them
    assert torch.equal(apply_variant(batch, variant)[0], expected)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(4, 3, 256, 256), (3, 37, 53), (2, 3, 64, 90)])
@pytest.mark.parametrize("degrees", [5.0, -5.0, 33.0])
def test_rotation_as_a_gather_is_torchvisions_rotation_pixel_for_pixel(device, shape, degrees):
    """The precomputed nearest-neighbour map (a gather, the fast path) against TF.rotate itself,
    on batches, single images, odd and non-square sizes and channels_last layouts."""
    generator = torch.Generator().manual_seed(int(degrees) + len(shape))
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator).to(device)
    expected = TF.rotate(images, degrees, interpolation=TF.InterpolationMode.NEAREST)
    assert torch.equal(transforms.rotate(degrees)(images), expected)
    if images.dim() == 4:
        channels_last = images.contiguous(memory_format=torch.channels_last)
        assert torch.equal(transforms.rotate(degrees)(channels_last), expected)
    assert (expected == 0).any()  # the corners are the fill, so the fill is checked too


def test_other_interpolations_resample_through_torchvision(monkeypatch):
    monkeypatch.setattr(transforms, "ROTATION_INTERPOLATION", TF.InterpolationMode.BILINEAR)
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    expected = TF.rotate(image, 5.0, interpolation=TF.InterpolationMode.BILINEAR)
    assert torch.equal(transforms.rotate(5.0)(image), expected)


def test_cache_key_names_the_interpolation(monkeypatch):
    """Features cached with the former bilinear rotations must not be reused for nearest ones."""
    assert "nearest" in transforms.PREPROCESSING
    nearest = transforms.PREPROCESSING
    monkeypatch.setattr(transforms, "ROTATION_INTERPOLATION", TF.InterpolationMode.BILINEAR)
    assert transforms.PREPROCESSING != nearest and "bilinear" in transforms.PREPROCESSING


def test_hflip_then_rotations_in_list_order():
    image = torch.randint(0, 256, (3, 32, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    expected = RandomRotation((-5, -5))(RandomRotation((5, 5))(image.flip(-1)))
    assert torch.equal(apply_variant(image, 0b111), expected)
    assert torch.equal(apply_variant(image, 0), image)


def test_a_new_transform_changes_variants_upsampling_and_cache_key(monkeypatch):
    key = transforms.PREPROCESSING
    assert transforms.N_VARIANTS == 8 and pairs.positive_upsampling() == 64
    monkeypatch.setattr(transforms, "TRANSFORMS", transforms.TRANSFORMS + (("vflip", TF.vertical_flip),))
    assert transforms.N_VARIANTS == 16 and pairs.positive_upsampling() == 256
    assert transforms.PREPROCESSING != key and "vflip" in transforms.PREPROCESSING
    image = torch.arange(12, dtype=torch.uint8).reshape(1, 3, 2, 2)
    assert torch.equal(apply_variant(image, 0b1000), image.flip(-2))  # bit 3 is the new transform
    rooms = np.array([0, 0, 1] + list(range(2, 40)))
    hashes = np.arange(len(rooms), dtype=np.uint64)
    pair_set = pairs.build_pairs(rooms, hashes)
    positive = pair_set.label == 1
    assert pair_set.positives == 256 * (4 + 1 + 38) == pairs.expected_pair_count([2, 1] + [1] * 38) // 2
    combos = set(zip(pair_set.first_variant[positive].tolist(), pair_set.second_variant[positive].tolist()))
    assert combos == {(a, b) for a in range(16) for b in range(16)}
