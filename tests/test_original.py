"""samespace/original.py: the original's exact preprocessing (torchvision decode at the file's own
size, float, Resize((256, 256), antialias=True), normalise, divide by 255), against a direct
forward of its pipeline; our safe decoding in front; the feature cache keyed on it."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageOps
from test_checkpoints import original_model, original_preprocess, write_original_checkpoint

from conftest import small_trunk
from samespace import features, original, photos, scoring
from samespace.checkpoints import load_checkpoint
from samespace.errors import DataError

CPU = torch.device("cpu")
# The same float32 operations in the same order give the same bits; 1e-5 of the largest value
# covers a different SIMD path of the antialiased resize (a few ulps of values up to 255).
RELATIVE = 1e-5


def smooth_photo(path, size=(640, 480), seed=0, **save):
    """A photo-like JPEG/PNG (colour fields plus noise) of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((6, 8, 3)) * 255
    field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize(size, Image.BILINEAR), dtype=np.float64)
    pixels = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, **save)
    return path


def theirs(path) -> torch.Tensor:
    """The original's read, written independently: read_image, then its transforms, unnormalised."""
    x = torchvision.io.read_image(str(path)).float()
    return torchvision.transforms.Resize((256, 256), antialias=True)(x)


def close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    return torch.allclose(actual, expected, rtol=0, atol=RELATIVE * expected.abs().max().item())


def test_read_photo_is_the_originals_read_at_native_size(tmp_path):
    cases = [("a.jpg", (640, 480), {"quality": 90}), ("b.png", (300, 200), {}), ("c.jpg", (97, 61), {})]
    for name, size, save in cases:
        path = smooth_photo(tmp_path / name, size, **save)
        ours = torch.from_numpy(original.read_photo(path)).permute(2, 0, 1)
        assert ours.dtype == torch.float32 and ours.shape == (3, 256, 256)
        assert close(ours, theirs(path)), name
        # Our 256x256 uint8 photo (PIL's resize, rounded to uint8) is not what the original read.
        pil = photos.as_tensor(photos.read_photo(path)[None])[0].float()
        assert (pil - theirs(path)).abs().max() > 0.4


def test_the_originals_trunk_input_and_logits_from_files(tmp_path):
    """Our reader + original.normalise + our modules (NCHW) against the original's model on its
    own pipeline, from the same files: within 1e-5 of the largest value, in float32."""
    paths = [smooth_photo(tmp_path / f"p{i}.jpg", (320 + 40 * i, 240), seed=i) for i in range(4)]
    model = original_model()
    net, _ = load_checkpoint(write_original_checkpoint(tmp_path / "ckpt", model), device=CPU)
    images, kept, skipped = original.read_images(paths)
    assert kept == [0, 1, 2, 3] and not skipped
    with torch.inference_mode():
        direct = [
            torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(theirs(p)) / 255
            for p in paths
        ]
        direct = torch.stack(direct)
        inputs = original.normalise(images)
        assert close(inputs, direct)
        assert close(original_preprocess(torchvision.io.read_image(str(paths[0]))[None]), direct[:1])
        expected = model((direct[:2], direct[2:])).squeeze(1)
        ours = net(inputs[:2], inputs[2:])
    assert expected.std() > 0.01  # informative logits
    assert close(ours, expected)


def test_dedup_and_compare_paths_read_the_originals_way(tmp_path):
    """features_of_files (dedup) with a network of the original's preprocessing embeds the pixels
    of original.read_photo, with and without background decode threads. Small input-dependent
    trunks (conftest.small_trunk: random MobileNetV3 gives nearly the same features for every
    photo); other thread counts reorder float32 sums of 768 terms, far inside 1e-5."""
    paths = [smooth_photo(tmp_path / f"p{i}.jpg", (200, 150), seed=i) for i in range(3)]
    (tmp_path / "bad.jpg").write_text("not a photo")
    paths.insert(1, tmp_path / "bad.jpg")
    net = original.original_network((0.3, 0.4, 0.5)).eval()
    net.trunk, net.second_trunk = small_trunk(0), small_trunk(1)
    embedder = scoring.Embedder(net, CPU)
    expected = embedder.backbone(original.read_images([p for p in paths if p.name != "bad.jpg"])[0])
    for threads in (0, 1):
        got, kept, skipped = scoring.features_of_files(embedder, paths, decode_threads=threads)
        assert kept == [0, 2, 3] and [s.path.name for s in skipped] == ["bad.jpg"]
        assert got.shape == (3, 2, 960) and close(got, expected)
    assert scoring.photo_reader("original") is original.attempt_photo


@pytest.mark.parametrize("transpose", list(original.TENSOR_TRANSPOSES))
def test_tensor_transposes_are_pils(transpose):
    pixels = np.random.default_rng(1).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(pixels).transpose(transpose))
    tensor = original.TENSOR_TRANSPOSES[transpose](torch.from_numpy(pixels).permute(2, 0, 1))
    assert np.array_equal(tensor.permute(1, 2, 0).numpy(), pil)


@pytest.mark.parametrize("kind", ["jpg", "png", "webp", "gif"])
def test_every_exif_orientation_is_pils(tmp_path, kind):
    """torchvision's own orientation (JPEG, PNG), ours on its WebP pixels and on PIL's (GIF: a
    palette, so our decoding): all equal to PIL's exif_transpose, then the float resize."""
    pixels = np.random.default_rng(4).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.{kind}"
        Image.fromarray(pixels).save(path, exif=exif, **({"lossless": True} if kind == "webp" else {}))
        with Image.open(path) as image:
            upright = np.array(ImageOps.exif_transpose(image.convert("RGB")))
        expected = torchvision.transforms.Resize((256, 256), antialias=True)(
            torch.from_numpy(upright).permute(2, 0, 1).float()
        )
        assert close(torch.from_numpy(original.read_photo(path)).permute(2, 0, 1), expected), orientation


def test_exif_orientation_and_other_modes_go_through_our_decoding(tmp_path):
    upright = smooth_photo(tmp_path / "upright.png", (90, 60))
    stored = np.asarray(Image.open(upright)).transpose(1, 0, 2)[::-1]  # rotated 90 degrees counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: upright again
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "sideways.png", exif=exif)
    assert np.array_equal(original.read_photo(tmp_path / "sideways.png"), original.read_photo(upright))
    # Grey: PIL's RGB conversion replicates the channel, as torchvision's RGB mode does.
    Image.open(upright).convert("L").save(tmp_path / "grey.png")
    grey = torchvision.io.decode_image(str(tmp_path / "grey.png"), mode=torchvision.io.ImageReadMode.RGB).float()
    expected = torchvision.transforms.Resize((256, 256), antialias=True)(grey)
    assert close(torch.from_numpy(original.read_photo(tmp_path / "grey.png")).permute(2, 0, 1), expected)


def png16(path, pixels: np.ndarray) -> None:
    """A 48-bit RGB PNG (PIL cannot write one): torchvision decodes it to uint16."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def test_a_16_bit_png_is_read_at_8_bits(tmp_path):
    pixels = (np.random.default_rng(2).random((30, 40, 3)) * 65535).astype(np.uint16)
    png16(tmp_path / "deep.png", pixels)
    eight = torch.from_numpy(np.array(Image.open(tmp_path / "deep.png").convert("RGB"))).permute(2, 0, 1).float()
    expected = torchvision.transforms.Resize((256, 256), antialias=True)(eight)
    read = torch.from_numpy(original.read_photo(tmp_path / "deep.png")).permute(2, 0, 1)
    assert read.max() <= 255 and close(read, expected)  # not 0-65535 values into the trunk


def test_unreadable_files_are_one_line(tmp_path):
    good = smooth_photo(tmp_path / "good.jpg", (64, 48))
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    os.mkfifo(tmp_path / "fifo.jpg")  # never opened for a blocking read
    reasons = {}
    for name in ("truncated.jpg", "text.jpg", "fifo.jpg"):
        with pytest.raises(photos.UnreadablePhoto) as caught:
            original.read_photo(tmp_path / name)
        reasons[name] = caught.value.reason
        assert "\n" not in str(caught.value)
    assert "FIFO" in reasons["fifo.jpg"] and "PIL" in reasons["text.jpg"]
    assert isinstance(original.attempt_photo(tmp_path / "text.jpg"), photos.Skipped)
    with pytest.raises(DataError, match="not the original's.*--preprocessing ours"):
        original.exact_images([good, tmp_path / "text.jpg"])


def test_the_feature_cache_is_keyed_on_the_originals_read(tmp_path):
    net = original.original_network((0.3, 0.4, 0.5))
    cache = features.FeatureCache(tmp_path, net.trunk, CPU, preprocessing="original")
    what = f"{features.trunk_fingerprint(net.trunk)}|{features.PREPROCESSING}|{original.PREPROCESSING}"
    assert cache.folder.name == hashlib.sha256(what.encode()).hexdigest()[:24]
    assert "torchvision-native" in original.PREPROCESSING  # v2: entries of the PIL-resized read are not reused


def test_the_float_read_is_never_changed_in_place(tmp_path):
    """Both preprocessings leave their input as it was (ours normalises in place on a copy), also
    the original's float pixels, which the feature cache reuses for all 8 variants."""
    images = original.read_images([smooth_photo(tmp_path / "a.jpg", (120, 90))])[0]
    before = images.clone()
    for normalise in features.PREPROCESSINGS.values():
        normalise(images)
        features.trunk_features(small_trunk(), images, 0, CPU, preprocessing="ours")
    assert torch.equal(images, before)
