"""What the trunk sees: the preprocessing of a uint8 photo, and the upsampling transforms.

The original upsamples positive pairs with three fixed transforms, each applied to the first
photo, the second, both or neither. A photo therefore carries one of 2**3 *variants*: bit ``k`` of
the variant says whether ``TRANSFORMS[k]`` is applied (in list order). To add an augmentation,
append a (name, function) pair to ``TRANSFORMS``; ``N_VARIANTS``, the x64 (then x4**len) upsampling
and the feature-cache key ``PREPROCESSING`` follow from that list, read whenever they are used.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ROTATION_DEGREES = 5.0
# The original's torchvision RandomRotation((5, 5)) / ((-5, -5)) with its defaults: nearest
# neighbour, no expansion, fill 0 (equal to it, pixel for pixel, on uint8 tensors).
ROTATION_INTERPOLATION = TF.InterpolationMode.NEAREST


def rotate(degrees: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A fixed rotation of uint8 image(s) about the centre, nearest neighbour, black fill."""

    def rotated(images: torch.Tensor) -> torch.Tensor:
        if ROTATION_INTERPOLATION != TF.InterpolationMode.NEAREST:
            return TF.rotate(images, degrees, interpolation=ROTATION_INTERPOLATION)
        height, width = images.shape[-2:]
        source = rotation_map(height, width, degrees, images.device)
        flat = images.reshape(*images.shape[:-2], height * width)
        padded = torch.cat([flat.new_zeros(*flat.shape[:-1], 1), flat], dim=-1)  # position 0: the fill
        if padded.device.type == "cpu":  # numpy's take is about 2x torch.gather here
            return torch.from_numpy(np.take(padded.numpy(), source.numpy(), axis=-1)).reshape(images.shape)
        return padded.gather(-1, source.expand(*flat.shape)).reshape(images.shape)

    return rotated


@functools.lru_cache(maxsize=32)
def rotation_map(height: int, width: int, degrees: float, device: torch.device) -> torch.Tensor:
    """For each pixel of ``TF.rotate(image, degrees)`` (nearest, fill 0), 1 + the flat position of
    the pixel it copies, or 0 for the fill. Made once by TF.rotate itself from an image of
    positions (float32 holds them exactly), so it is torchvision's mapping, pixel for pixel.

    Nearest-neighbour rotation only moves pixels, so it is a gather: about 20x faster on a CPU
    than resampling every batch (torchvision rebuilds and samples a grid per call), which made the
    rotations cost as much as the onnxruntime trunk in the feature-cache build."""
    # int64 positions: what torch.gather wants, and numpy's take reads them as its intp
    positions = torch.arange(1, height * width + 1, dtype=torch.float32).reshape(1, 1, height, width)
    rotated = TF.rotate(positions, degrees, interpolation=TF.InterpolationMode.NEAREST)
    return rotated.reshape(-1).round().long().to(device)


# (name, function on uint8 image batches), applied in this order.
TRANSFORMS: tuple[tuple[str, Callable[[torch.Tensor], torch.Tensor]], ...] = (
    ("hflip", TF.horizontal_flip),
    ("rotate+5", rotate(ROTATION_DEGREES)),
    ("rotate-5", rotate(-ROTATION_DEGREES)),
)


def __getattr__(name: str) -> Any:
    """``N_VARIANTS`` (2 ** len(TRANSFORMS)) and ``PREPROCESSING`` (the feature-cache key: anything
    that changes what the trunk sees must change it), derived from ``TRANSFORMS`` when read, so
    they can never disagree with it."""
    if name == "N_VARIANTS":
        return 2 ** len(TRANSFORMS)
    if name == "PREPROCESSING":
        return (
            f"scale01;imagenet{IMAGENET_MEAN}{IMAGENET_STD};"
            f"variants:{','.join(n for n, _ in TRANSFORMS)},{ROTATION_INTERPOLATION.value},{ROTATION_DEGREES};v1"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def apply_variant(images: torch.Tensor, variant: int) -> torch.Tensor:
    """Apply the variant's transforms to uint8 image(s) (N, 3, H, W) or (3, H, W)."""
    for bit, (_, transform) in enumerate(TRANSFORMS):
        if variant >> bit & 1:
            images = transform(images)
    return images


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to the network's input: scale to [0, 1] first, then ImageNet normalisation.

    In place on a fresh float copy: the same operations in the same order (so the same bits) as
    the out-of-place form, without two more image-sized temporaries (about 3x faster on a CPU).
    A copy also of float input (the original's float read), so the caller's tensor never changes."""
    fresh = images.to(torch.float32, copy=True)
    return TF.normalize(fresh.div_(255.0), IMAGENET_MEAN, IMAGENET_STD, inplace=True)


def model_input(images: torch.Tensor, variant: int = 0) -> torch.Tensor:
    """The trunk's float input for uint8 image(s) in one variant."""
    return normalise(apply_variant(images, variant))
