"""The original SameSpace's published checkpoint: its network layout, its preprocessing, and the
mapping of its weights onto ours.

Its model was ``nn.Sequential(SiameseNetwork(net1, net2), classifier)``, each ``net`` being
``Sequential(Sequential(features, avgpool), Flatten, classifier[:-1])`` of a MobileNetV3-Large.
Its trunks were frozen but ran in train mode, so each side's BatchNorm running statistics drifted
on their own: the two trunks differ and both are kept (``SiameseNet.second_trunk``).
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torchvision.io
import torchvision.transforms.v2.functional as TF
from PIL import ExifTags, Image, UnidentifiedImageError

from samespace import photos
from samespace.errors import DataError, first_line, printable
from samespace.network import SiameseNet
from samespace.transforms import IMAGENET_MEAN, IMAGENET_STD

TRIAL_SPEC = "model_def:SiameseDuplicateImageDetectionTrial"
HPARAMS = ("learning_rate", "alpha", "dropout1", "dropout2", "dropout3", "global_batch_size")
RESIZE = (256, 256)

# Keys the feature cache with; anything that changes ``read_photo`` or ``normalise`` must change
# this string. v2: read at the file's native size (torchvision decode, EXIF applied), not our 256x256.
PREPROCESSING = (
    f"original:v2:torchvision-native,exif,float255,resize{RESIZE}antialias,"
    f"imagenet{IMAGENET_MEAN}{IMAGENET_STD}on255,div255"
)
# What torchvision's decode_image reads (the original's read_image); other files go through PIL.
TORCHVISION_FORMATS = ("JPEG", "PNG", "WEBP")
# PIL's transposes of ``photos.ORIENTATION_FIX`` on (C, H, W) tensors (tests/test_original.py).
TENSOR_TRANSPOSES = {
    Image.Transpose.FLIP_LEFT_RIGHT: lambda x: x.flip(-1),
    Image.Transpose.FLIP_TOP_BOTTOM: lambda x: x.flip(-2),
    Image.Transpose.ROTATE_180: lambda x: x.flip(-2, -1),
    Image.Transpose.ROTATE_90: lambda x: x.rot90(1, (-2, -1)),
    Image.Transpose.ROTATE_270: lambda x: x.rot90(-1, (-2, -1)),
    Image.Transpose.TRANSPOSE: lambda x: x.transpose(-2, -1),
    Image.Transpose.TRANSVERSE: lambda x: x.transpose(-2, -1).flip(-2, -1),
}

# Its state-dict prefixes -> ours. The head ("1.") keeps its indices: ours has its exact layout.
KEY_PREFIXES = (
    ("0.net1.0.0.", "trunk.0."),  # MobileNetV3 features, side 0 (0.net1.0.1 is the avgpool)
    ("0.net2.0.0.", "second_trunk.0."),
    ("0.net1.2.0.", "towers.0.0."),  # Linear(960, 1280), then Hardswish and Dropout(0.2)
    ("0.net2.2.0.", "towers.1.0."),
    ("1.", "head."),
)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to the original's trunk input: float 0-255, resized to 256x256 (antialiased),
    ImageNet-normalised *on the 0-255 values*, then divided by 255, in that order."""
    x = images.float()
    if tuple(x.shape[-2:]) != RESIZE:  # our decoded photos are 256x256 already
        x = TF.resize(x, list(RESIZE), antialias=True)
    return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD) / 255.0


def upright_pixels(handle, image: Image.Image) -> torch.Tensor:
    """The opened photo's (3, H, W) uint8 pixels at its own size, EXIF orientation applied:
    torchvision's decoder for RGB JPEG, PNG and WebP (what the original's ``read_image`` ran),
    else our ``photos.to_rgb`` (grey, palette, transparency, CMYK, 16-bit: inputs the original
    could not feed its trunk)."""
    if image.format in TORCHVISION_FORMATS and image.mode == "RGB":
        handle.seek(0)
        data = torch.frombuffer(bytearray(handle.read()), dtype=torch.uint8)
        # torchvision reads the orientation of JPEG and PNG itself (equal to PIL's, tested)
        pixels = torchvision.io.decode_image(
            data, mode=torchvision.io.ImageReadMode.RGB, apply_exif_orientation=image.format != "WEBP"
        )
        if pixels.dtype == torch.uint8:  # a 16-bit PNG decodes to uint16: PIL's 8-bit RGB instead
            return orient(pixels, image) if image.format == "WEBP" else pixels
    image.load()  # before reading the orientation: a PNG may keep its EXIF after the pixels
    return orient(torch.from_numpy(np.array(photos.to_rgb(image), dtype=np.uint8)).permute(2, 0, 1), image)


def orient(pixels: torch.Tensor, image: Image.Image) -> torch.Tensor:
    """(C, H, W) pixels turned upright by the image's EXIF orientation, as PIL's exif_transpose."""
    upright = photos.ORIENTATION_FIX.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    return TENSOR_TRANSPOSES[upright](pixels) if upright is not None else pixels


def read_photo(path: str | os.PathLike, budget: photos.MemoryBudget | None = None) -> np.ndarray:
    """A photo as the original read it, before normalisation: decoded at its native size, to
    float, ``Resize((256, 256), antialias=True)`` on the float values; (256, 256, 3) float32 0-255.

    Our safe decoding stays in front: ``photos.open_regular`` (no FIFO or device), PIL's size
    limit and truncated-PNG check before any decode, ``budget`` for concurrent decodes, EXIF
    orientation applied (the original ignored it). Raises ``photos.UnreadablePhoto`` (one line).
    """
    name = Path(path).name
    try:
        with photos.open_regular(path) as handle, Image.open(handle) as image:
            if image.format == "PNG" and photos.png_too_short(handle):
                raise photos.UnreadablePhoto(name, f"truncated: too little image data for {image.width}x{image.height}")
            needed = image.width * image.height * 20  # uint8 and float pixels, and PIL's when it decodes
            with budget.reserve(needed) if budget else contextlib.nullcontext():
                pixels = upright_pixels(handle, image)
                resized = TF.resize(pixels.float(), list(RESIZE), antialias=True)
        return resized.permute(1, 2, 0).contiguous().numpy()
    except UnidentifiedImageError:
        raise photos.UnreadablePhoto(name, "not an image in a format PIL reads") from None
    except MemoryError:
        raise photos.UnreadablePhoto(name, "not enough memory to decode it") from None
    except (OSError, ValueError, SyntaxError, RuntimeError, Image.DecompressionBombError) as exc:
        raise photos.UnreadablePhoto(name, first_line(exc)) from None


def attempt_photo(path: Path, budget: photos.MemoryBudget | None = None) -> np.ndarray | photos.Skipped:
    """``read_photo``, with an unreadable file returned as ``photos.Skipped`` rather than raised."""
    try:
        return read_photo(path, budget)
    except photos.UnreadablePhoto as exc:
        return photos.Skipped(path, exc.reason)


def read_images(paths: Sequence[Path]) -> tuple[torch.Tensor, list[int], list[photos.Skipped]]:
    """``read_photo`` of each path as (N, 3, 256, 256) float32, the positions that decoded, and
    the files that did not (``photos.read_photos`` with the original's reader)."""
    array, kept, skipped = photos.read_photos(paths, desc="reading photos (original)", attempt=attempt_photo)
    return photos.as_tensor(array), kept, skipped


def exact_images(paths: Sequence[Path]) -> torch.Tensor:
    """``read_images`` of photos that our reader already decoded (a split): all of them, or a
    ``DataError`` naming the first that the original's reader cannot read."""
    images, _, skipped = read_images(paths)
    if skipped:
        raise DataError(
            f"{len(skipped)} photo(s) decode with our reader but not the original's, e.g. "
            f"{printable(skipped[0].path.name)}: {skipped[0].reason}; pass --preprocessing ours"
        )
    return images


def original_network(dropouts: Sequence[float]) -> SiameseNet:
    """Our network with a trunk per side, untrained, no downloads; it normalises photos the
    original's way. Our head is the original's layer for layer (Linear layers at 0, 3, 6, 9, 11)."""
    net = SiameseNet(pretrained=False, dropouts=dropouts)
    net.second_trunk = copy.deepcopy(net.trunk)
    net.preprocessing = "original"
    return net


def our_state_dict(state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The original's model state dict under our names, and the keys that have no counterpart."""
    if state and all(key.startswith("module.") for key in state):  # saved from a DDP wrapper
        state = {key.removeprefix("module."): value for key, value in state.items()}
    ours, unknown = {}, []
    for key, value in state.items():
        for theirs, mine in KEY_PREFIXES:
            if key.startswith(theirs):
                ours[mine + key.removeprefix(theirs)] = value
                break
        else:
            unknown.append(key)
    return ours, unknown
