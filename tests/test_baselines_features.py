"""Feature baselines: an exact copy is the top-scoring pair for every method, the vote is
symmetric and counts five distances' five nearest, Dice is the published formula, the networks
have the published widths, the ONNX engine gives the torch features, and without ImageNet weights
there is one warning line and rows marked random weights.

Random-weight MobileNetV3 and VGG16 give nearly the same features for every photo, so most tests
put a small input-dependent network in ``features.BUILDERS`` (224x224 input, as both networks
see it) and say so."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from samespace.baselines import features, table
from tests.test_baselines_table import context_of


def small_network(network: str):
    """The network's own 224x224 fit, average-pool 16 -> 588 values -> fixed random Linear(588, 64)
    (+ ReLU for VGG16's fc2, which is non-negative): input-dependent, cheap, deterministic."""
    generator = torch.Generator().manual_seed(3)
    linear = nn.Linear(3 * 14 * 14, 64)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(64, 588, generator=generator) / 588**0.5)
        linear.bias.zero_()
    trunk = nn.Sequential(features.Fit(crop=network != "vgg16"), nn.AvgPool2d(16), nn.Flatten(1))
    tail = nn.Sequential(linear, nn.ReLU()) if network == "vgg16" else linear
    return trunk, tail, True


@pytest.fixture()
def small_networks(monkeypatch):
    for name in features.BUILDERS:
        monkeypatch.setitem(features.BUILDERS, name, small_network)


@pytest.mark.parametrize("method", features.METHODS)
def test_an_exact_copy_is_the_top_scoring_pair(method, small_networks, tmp_path):
    context = context_of(tmp_path)
    scored = table.score_features(context, method)
    a, b, _ = context.test.pairs()
    copy = (a == 0) & (b == len(context.test.paths) - 1)
    assert scored.test[copy].item() == scored.test.max()
    assert scored.test[copy].item() > scored.test[~copy].max()  # strictly: no other pair ties with it
    assert not scored.random_weights and np.all(np.isfinite(scored.train))
    if method == "vgg16-pca-cosine":  # 10 Training Data photos: PCA clamped, and said so
        assert scored.notes == ["PCA to 10 components, not 100: Training Data has only 10 photos"]
        assert scored.trained_on == "Training Data photos (PCA)"


def test_the_vote_is_symmetric_and_counts_five_nearest_by_five_distances():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(12, 16)), 0)  # non-negative, as VGG16's fc2 after its ReLU
    count = features.votes(x)
    assert count.sum(axis=1).tolist() == [25] * 12 and np.all(
        np.diag(count) == 0
    )  # 5 distances x 5 photos, never itself
    a, b = np.triu_indices(12, 1)
    forward, backward = features.vote_scores(x, a, b), features.vote_scores(x, b, a)
    np.testing.assert_array_equal(forward, backward)
    votes = (count[a, b] + count[b, a]) / 2
    assert np.array_equal(np.floor(forward * 2 + 0.5) / 2, votes)  # the cosine term never overturns a vote
    order = np.lexsort((-forward, -votes))
    assert np.all(np.diff(votes[order]) <= 0)


def test_dice_is_the_published_formula_and_minkowski_is_order_3():
    rng = np.random.default_rng(1)
    x = np.maximum(rng.normal(size=(5, 7)), 0)
    got = features.distances(x)
    for i in range(5):
        for j in range(5):
            dice = 1 - 2 * np.minimum(x[i], x[j]).sum() / (x[i] + x[j]).sum()
            assert got["dice"][i, j] == pytest.approx(dice, abs=1e-12)
            assert got["minkowski"][i, j] == pytest.approx((np.abs(x[i] - x[j]) ** 3).sum() ** (1 / 3), rel=1e-12)


def test_cosine_of_a_zero_row_is_zero_and_finite():
    similarity = features.cosine_matrix(np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]]))
    assert similarity[0, 1] == 0.0 and similarity[1, 2] == pytest.approx(1.0) and np.all(np.isfinite(similarity))


def test_the_networks_have_the_published_widths(monkeypatch):
    monkeypatch.setattr(features, "imagenet_state", lambda network: None)  # random weights, no download
    images = torch.randint(0, 256, (1, 3, 256, 256), dtype=torch.uint8)
    for network, width in (("mobilenet_v3_small", 576), ("vgg16", 4096)):
        trunk, tail, pretrained = features.build_network(network)
        with torch.inference_mode():
            out = tail.eval()(trunk.eval()(features.network_input(images)))
        assert out.shape == (1, width) and pretrained is False
        if network == "vgg16":
            assert isinstance(tail[-1], nn.ReLU) and tail[3].out_features == 4096  # fc2 after its ReLU
            torch.manual_seed(0)  # build_network's seed: the same random weights
            model = torchvision.models.vgg16(weights=None).eval()
            with torch.inference_mode():
                x = nn.functional.interpolate(features.network_input(images), size=(224, 224), mode="bilinear")
                full = model.classifier[:5](torch.flatten(model.avgpool(model.features(x)), 1))
            assert torch.equal(out, full)  # leaving out the 7x7 adaptive pool at 224x224 changes nothing


def test_the_onnx_engine_gives_the_torch_features(small_networks, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    images = torch.randint(0, 256, (6, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    eager = features.Network("vgg16", torch.device("cpu"), "torch")
    onnx = features.Network("vgg16", torch.device("cpu"), "onnx")
    assert eager.runner is None and onnx.runner is not None
    expected, got = eager.features(images), onnx.features(images)
    # 588 summed products per output, each ~1: float32 sums differ by about sqrt(588) * 2**-24
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_without_imagenet_weights_one_warning_and_rows_say_random_weights(tmp_path, monkeypatch, caplog):
    class Unreachable:
        url = "https://example.invalid/weights.pth"

        def get_state_dict(self, progress: bool = False):
            raise OSError("Name or service not known")

    monkeypatch.setitem(features.WEIGHTS, "mobilenet_v3_small", Unreachable())
    with caplog.at_level(logging.WARNING, logger="samespace.baselines"):
        assert features.imagenet_state("mobilenet_v3_small") is None
    (record,) = caplog.records
    assert "\n" not in record.getMessage() and "continuing with random weights" in record.getMessage()

    monkeypatch.setitem(features.BUILDERS, "mobilenet_v3_small", lambda n: (*small_network(n)[:2], False))
    context = context_of(tmp_path)
    block, curves = table.methods_block(["imagededup-cnn"], context)
    assert block["imagededup-cnn"]["weights"] == "random weights" and "imagededup-cnn" in curves
    assert "random weights" in table.table_lines(block)[2]


def test_imagededup_cnn_input_is_imagededups_transform():
    """On a 256x256 RGB photo (our decoding's size), our input equals imagededup 0.3.3's own
    MobilenetV3.transform (Resize 256, CenterCrop 224, ToTensor, Normalize), up to float32 rounding."""
    models = pytest.importorskip("imagededup.utils.models")  # a dev tool, not in requirements.txt
    from PIL import Image

    pixels = np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    theirs = models.MobilenetV3.transform(Image.fromarray(pixels))
    ours = features.Fit(crop=True)(features.network_input(torch.from_numpy(pixels).permute(2, 0, 1)[None]))[0]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)  # values ~2, float32 steps ~2.4e-7
