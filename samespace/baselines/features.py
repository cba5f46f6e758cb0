"""Feature baselines: a pretrained network's features of each photo, then a similarity of pairs.

- ``imagededup-cnn``: imagededup 0.3.3's CNN, MobileNetV3-Small (``IMAGENET1K_V1``) cut after its
  global average pool (576-d), on the photo resized to 256x256 and centre-cropped to 224, ImageNet
  normalisation; cosine similarity.
- ``vgg16-cosine``, ``vgg16-pca-cosine``: the "image similarity check" system, VGG16's fc2 (4,096-d,
  after its ReLU) with ImageNet preprocessing (which that code skipped), cosine similarity, and with
  a PCA to 100 components fitted on the Training Data photos first.
- ``vgg16-vote``: DeDup, the same fc2 features; for each photo the 5 nearest others by each of five
  distances vote, and a pair scores its votes (both directions averaged, 0-5), ties broken by cosine.

The convolutional part of each network (the costly part) runs through ``samespace.engine`` as
SameSpace's trunk does (onnxruntime on the CPU when ``--engine`` allows); VGG16's two fully
connected layers stay in torch. Without ImageNet weights a network keeps random weights, with one
warning line, and its rows say ``random weights``: their figures then mean nothing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import time
from typing import Callable

import numpy as np
import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from scipy.spatial import distance
from torch import nn

from samespace import console, engine
from samespace import features as trunk_cache
from samespace.transforms import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger("samespace.baselines")

METHODS = ("imagededup-cnn", "vgg16-vote", "vgg16-cosine", "vgg16-pca-cosine")
NETWORK_OF = {"imagededup-cnn": "mobilenet_v3_small", **{m: "vgg16" for m in METHODS[1:]}}
CROP, VGG_SIZE = 224, 224  # imagededup: resize 256, centre crop 224; VGG16: 224x224 (assumed, see README)
PCA_COMPONENTS = 100
VOTERS = 5  # nearest photos each distance votes for
MINKOWSKI_P = 3  # p = 2 would repeat the Euclidean vote
# Votes move in steps of 0.5 (the mean of two directions); cosine in [-1, 1] times 0.2 spans 0.4,
# so it orders pairs of equal votes and never overturns a vote.
TIE_WEIGHT = 0.2
DOWNLOAD_TIMEOUT = 10.0  # seconds: a silent network must not hang an evaluation
BATCH = 32

WEIGHTS = {
    "mobilenet_v3_small": torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1,
    "vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
}


def imagenet_state(network: str) -> dict | None:
    """The ImageNet weights of ``network`` (torch hub cache, else one download attempt with a
    timeout), or None with the one warning line SameSpace's demo gives for its trunk."""
    weights = WEIGHTS[network]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:  # torch.hub announces downloads on stdout: keep it out of our output
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return weights.get_state_dict(progress=False)
    except Exception as exc:  # URL, HTTP, OS and hash errors all mean: no weights here
        logger.warning(
            "%s: the ImageNet weights cannot be fetched here (%s); continuing with random weights "
            "(its rows say random weights), so its figures will be near chance",
            network,
            type(exc).__name__,
        )
        return None
    finally:
        socket.setdefaulttimeout(previous)


class Fit(nn.Module):
    """The 256x256 photo to the network's 224x224 input inside the trunk, so that the ONNX export
    (whose height and width are SameSpace's 256) takes it too: imagededup's centre crop, or for
    VGG16 a bilinear resize (no antialiasing, which ONNX opset 17 lacks; at this 0.875 scale it
    changes little). Both commute with the per-channel normalisation done before."""

    def __init__(self, crop: bool):
        super().__init__()
        self.crop = crop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop:
            top, left = (x.shape[-2] - CROP) // 2, (x.shape[-1] - CROP) // 2
            return x[..., top : top + CROP, left : left + CROP]
        return nn.functional.interpolate(x, size=(VGG_SIZE, VGG_SIZE), mode="bilinear", align_corners=False)


def build_network(network: str) -> tuple[nn.Module, nn.Module, bool]:
    """(convolutional trunk, fully connected tail, pretrained) of ``network``, in eval mode, seeded
    when random so that reruns agree."""
    state = imagenet_state(network)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = getattr(torchvision.models, network)(weights=None)
    if state is not None:
        model.load_state_dict(state)
    # VGG16's AdaptiveAvgPool2d((7, 7)) sees 7x7 maps at 224x224, where it is the identity; the ONNX
    # exporter cannot export it after the resize, so it is left out (exactly the same features).
    pool = nn.Identity() if network == "vgg16" else model.avgpool
    trunk = nn.Sequential(Fit(crop=network != "vgg16"), model.features, pool, nn.Flatten(1))
    # VGG16: fc1, ReLU, Dropout, fc2, ReLU: the 4,096-d fc2 after its ReLU, in torch (matrix products)
    return trunk, model.classifier[:5] if network == "vgg16" else nn.Identity(), state is not None


# (trunk, tail, pretrained) for a network name; tests put small input-dependent networks here.
BUILDERS: dict[str, Callable[[str], tuple[nn.Module, nn.Module, bool]]] = {
    "mobilenet_v3_small": build_network,
    "vgg16": build_network,
}


def network_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 256x256 photos (imagededup's Resize((256, 256)), which our decoding already did),
    scaled to [0, 1] and ImageNet-normalised; the trunk's ``Fit`` makes them 224x224."""
    return TF.normalize(images.float().div(255.0), IMAGENET_MEAN, IMAGENET_STD)


class Network:
    """One pretrained network's features of uint8 photos, its trunk through ``engine.load``."""

    def __init__(self, network: str, device: torch.device, engine_name: str = "torch"):
        self.name = network
        self.device = torch.device(device)
        trunk, self.tail, self.pretrained = BUILDERS[network](network)
        self.trunk = trunk_cache.inference_trunk(trunk.requires_grad_(False), self.device)
        self.tail = self.tail.eval().to(self.device)
        fingerprint = trunk_cache.trunk_fingerprint(trunk)
        self.runner = engine.load(trunk, fingerprint, self.device, engine_name, preprocessing=f"baseline-{network}")

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, D) float32 features on the CPU."""
        out = []
        for batch in console.progress(images.split(BATCH), desc=self.name, unit="batch"):
            inputs = network_input(batch.to(self.device))
            if self.runner is not None:
                pooled = self.runner(inputs).to(self.device)
            else:
                pooled = self.trunk(inputs.contiguous(memory_format=torch.channels_last))
            out.append(self.tail(pooled).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    """Cosine similarities of all rows (float64); a zero row has similarity 0 to everything but
    itself, so it never ties with a real match."""
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, 1.0)
    return np.clip(similarity, -1.0, 1.0)


def distances(x: np.ndarray) -> dict[str, np.ndarray]:
    """DeDup's five distances between all rows. Sørensen-Dice on non-negative vectors,
    1 - 2·Σmin(a, b)/Σ(a + b), equals Σ|a - b| / Σ(a + b) (as min = (a + b - |a - b|)/2), so it
    reuses the Manhattan distances."""
    x = np.asarray(x, np.float64)
    manhattan = distance.cdist(x, x, "cityblock")
    sums = x.sum(axis=1)
    total = sums[:, None] + sums[None, :]
    dice = np.divide(manhattan, total, out=np.zeros_like(manhattan), where=total > 0)
    return {
        "euclidean": distance.cdist(x, x, "euclidean"),
        "manhattan": manhattan,
        "cosine": 1.0 - cosine_matrix(x),
        "minkowski": distance.cdist(x, x, "minkowski", p=MINKOWSKI_P),
        "dice": dice,
    }


def votes(x: np.ndarray, voters: int = VOTERS) -> np.ndarray:
    """(N, N) counts: in how many of the five distances photo j is among the ``voters`` nearest
    photos of photo i (itself excluded; equal distances go to the lower index, a stable sort)."""
    n = len(x)
    count = np.zeros((n, n), np.int64)
    keep = min(voters, n - 1)
    rows = np.arange(n)[:, None]
    for matrix in distances(x).values():
        matrix = matrix.copy()
        np.fill_diagonal(matrix, np.inf)
        nearest = np.argsort(matrix, axis=1, kind="stable")[:, :keep]
        count[rows, nearest] += 1
    return count


def vote_scores(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """DeDup's pair score: the mean vote of both directions (0-5), ties broken by cosine."""
    count = votes(x)
    return (count[a, b] + count[b, a]) / 2.0 + TIE_WEIGHT * cosine_matrix(x)[a, b]


def pca_components(train: np.ndarray) -> tuple[int, str | None]:
    """PCA_COMPONENTS, or fewer when the Training Data has fewer photos (or features), with why."""
    most = min(len(train), train.shape[1])
    if most >= PCA_COMPONENTS:
        return PCA_COMPONENTS, None
    return most, f"PCA to {most} components, not {PCA_COMPONENTS}: Training Data has only {len(train)} photos"


def pair_scores(method: str, x: np.ndarray, a: np.ndarray, b: np.ndarray, projection=None) -> np.ndarray:
    """Scores of pairs (a, b) of rows of ``x`` (higher = more alike). ``projection``: a fitted PCA."""
    if method == "vgg16-vote":
        return vote_scores(x, a, b)
    if method == "vgg16-pca-cosine":
        x = projection.transform(np.asarray(x, np.float64))
    return cosine_matrix(x)[a, b]


def timed(function: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start
