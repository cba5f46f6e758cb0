"""Trained baselines, fitted here on the Training Data photos, once per content, and cached.

- ``autoencoder``: the "unsupervised" article's convolutional autoencoder (7,579 parameters) on
  32x32 photos divided by their own maximum, trained on per-pixel sigmoid cross-entropy (Adam 1e-3,
  20 epochs, batch 64) on whole batches and every photo (the published code trained on the first
  photo of each batch and encoded one batch repeated); a pair scores minus the L2 distance of its
  256-value codes.
- ``autoencoder-kmeans``: the same codes, KMeans (k = 20, scikit-learn's defaults) on the Training
  Data codes; pairs in different clusters score below every pair in one cluster.
- ``siamese-resnet``: the "image similarity check" Siamese tower (300,560 parameters, Keras'
  count: 299,408 trainable plus 1,152 BatchNorm statistics), trained from scratch with
  contrastive loss (margin 1, Adam 1e-3, 10 epochs) on SameSpace's labels (same room = similar,
  the published code had them inverted) and its transforms; a pair scores minus the Euclidean
  distance of its 16-d embeddings.

A fitted model is kept in the feature-cache folder under a key of the photos' content (and rooms),
the method, the seed and ``VERSION``; it is read back with ``weights_only`` and checked against a
SHA-256 beside it, so a damaged file is trained again (one warning).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import nn

from samespace import console, reports, transforms
from samespace.errors import OutputError, first_line

logger = logging.getLogger("samespace.baselines")

METHODS = ("autoencoder", "autoencoder-kmeans", "siamese-resnet")
TRAINED_ON = {
    "autoencoder": "Training Data photos (unsupervised)",
    "autoencoder-kmeans": "Training Data photos (unsupervised)",
    "siamese-resnet": "Training Data rooms (contrastive)",
}
MODEL_OF = {"autoencoder": "autoencoder", "autoencoder-kmeans": "autoencoder", "siamese-resnet": "siamese-resnet"}
VERSION = "v1"  # bump when a model, its input or its training changes: old cache entries then miss

AUTOENCODER = dict(size=32, epochs=20, batch=64, lr=1e-3)
CLUSTERS = 20
# 224x224 is the published input; 2 CPU cores train that tower at ~1 photo/s (hours for 10 epochs),
# so it trains at 64x64 (global pooling: the same parameters). Each epoch is one pass over the
# Training Data photos, every pair of a batch contributing (README lists this departure).
SIAMESE = dict(size=64, epochs=10, batch=32, lr=1e-3, margin=1.0)


# --------------------------------------------------------------------------------------------
# The networks


def leaky() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.1)


def autoencoder() -> tuple[nn.Sequential, nn.Sequential]:
    """(encoder 1,576 parameters, decoder 6,003): 32x32x3 -> 4x4x16 code -> 32x32x3 logits."""
    encoder = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        leaky(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1),
        leaky(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        leaky(),
        nn.AvgPool2d(2),
    )
    decoder = nn.Sequential(  # "same" padding with stride 2: the output is twice the input
        nn.ConvTranspose2d(16, 16, 3, stride=2, padding=1, output_padding=1),
        nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1),
        nn.ConvTranspose2d(8, 8, 5, stride=2, padding=2, output_padding=1),
        nn.Conv2d(8, 4, 5, padding=2),
        leaky(),
        nn.Conv2d(4, 3, 3, padding=1),  # the sigmoid is in the loss (BCE with logits) and not needed after
    )
    return encoder, decoder


class Residual(nn.Module):
    """An identity residual block: conv 3x3/64, BN, ReLU, conv 3x3/64, BN, add, ReLU."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def siamese_tower() -> nn.Sequential:
    """Conv 3x3/64 + BN + ReLU, max-pool 3/3, four residual blocks each with Dropout 0.2, global
    average pool, Dense 16 + ReLU: a 16-d embedding."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 3)]
    for _ in range(4):
        layers += [Residual(), nn.Dropout(0.2)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(64, 16), nn.ReLU())


def keras_parameters(module: nn.Module) -> int:
    """Parameters as Keras counts them: weights plus BatchNorm's moving mean and variance."""
    statistics = sum(b.numel() for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var")))
    return sum(p.numel() for p in module.parameters()) + statistics


# --------------------------------------------------------------------------------------------
# Inputs


def autoencoder_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 photos to 32x32 (Lanczos, as the article) divided by each photo's own maximum."""
    size = AUTOENCODER["size"]
    small = (
        np.stack(
            [
                np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).resize((size, size), Image.LANCZOS))
                for img in images
            ]
        )
        if len(images)
        else np.zeros((0, size, size, 3), np.uint8)
    )
    x = torch.from_numpy(small).permute(0, 3, 1, 2).float()
    top = x.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(top > 0, x / top.clamp_min(1.0), torch.zeros_like(x))


def siamese_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB photos (the published code read BGR) resized to SIAMESE size, divided by 255."""
    size = SIAMESE["size"]
    return TF.resize(images, [size, size], antialias=True).float().div(255.0)


# --------------------------------------------------------------------------------------------
# Training


def contrastive_loss(distance: torch.Tensor, similar: torch.Tensor, margin: float) -> torch.Tensor:
    """Hadsell et al.: similar pairs (label 1) pay d², dissimilar ones max(0, margin - d)²; the two
    kinds weighted equally, as SameSpace's balanced pair set weighs them."""
    pull = distance.pow(2)
    push = (margin - distance).clamp_min(0).pow(2)
    similar = similar.bool()
    parts = [pull[similar].mean() if similar.any() else None, push[~similar].mean() if (~similar).any() else None]
    present = [p for p in parts if p is not None]
    return sum(present) / len(present) if present else distance.sum() * 0


def room_batches(rooms: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """An epoch's batches of photo indices, each room's photos kept together so that batches hold
    same-room pairs; rooms in a seeded random order."""
    order = [np.flatnonzero(rooms == room) for room in rng.permutation(np.unique(rooms))]
    batches, current = [], []
    for members in order:
        current.extend(members.tolist())
        if len(current) >= size:
            batches.append(np.array(current))
            current = []
    if current:
        batches.append(np.array(current))
    return batches


def train_autoencoder(images: torch.Tensor, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    encoder, decoder = autoencoder()
    model = nn.Sequential(encoder, decoder)
    inputs = autoencoder_input(images)
    optimizer = torch.optim.Adam(model.parameters(), lr=AUTOENCODER["lr"])
    generator = torch.Generator().manual_seed(seed)
    loss_of = nn.BCEWithLogitsLoss()
    bar = console.progress(range(AUTOENCODER["epochs"]), desc="training autoencoder", unit="epoch")
    for _ in bar:
        for batch in torch.randperm(len(inputs), generator=generator).split(AUTOENCODER["batch"]):
            optimizer.zero_grad()
            loss = loss_of(model(inputs[batch]), inputs[batch])
            loss.backward()
            optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return encoder.eval()


def train_siamese(images: torch.Tensor, rooms: np.ndarray, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    tower = siamese_tower()
    optimizer = torch.optim.Adam(tower.parameters(), lr=SIAMESE["lr"])
    rng = np.random.default_rng(seed)
    bar = console.progress(range(SIAMESE["epochs"]), desc="training siamese-resnet", unit="epoch")
    for _ in bar:
        tower.train()
        for batch in room_batches(rooms, SIAMESE["batch"], rng):
            variants = rng.integers(0, transforms.N_VARIANTS, len(batch))  # SameSpace's flips and rotations
            pixels = torch.stack([transforms.apply_variant(images[i], int(v)) for i, v in zip(batch, variants)])
            embeddings = tower(siamese_input(pixels))
            a, b = np.triu_indices(len(batch), 1)
            distance = (embeddings[a] - embeddings[b]).pow(2).sum(1).add(1e-12).sqrt()
            similar = torch.from_numpy(rooms[batch][a] == rooms[batch][b])
            optimizer.zero_grad()
            loss = contrastive_loss(distance, similar, SIAMESE["margin"])
            loss.backward()
            optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return tower.eval()


# --------------------------------------------------------------------------------------------
# Fitted models and their cache


@dataclasses.dataclass
class Fitted:
    """A trained encoder (or tower), the KMeans centres of its Training Data codes, and notes."""

    method: str
    network: nn.Module
    centres: np.ndarray | None = None
    notes: tuple[str, ...] = ()


def cache_key(images: torch.Tensor, rooms: np.ndarray, method: str, seed: int) -> str:
    """SHA-256 over the photos' decoded content, their rooms, the model, the seed and VERSION."""
    digest = hashlib.sha256(f"{MODEL_OF[method]}|{method}|seed{seed}|{VERSION}|{AUTOENCODER}|{SIAMESE}".encode())
    digest.update(images.contiguous().numpy().tobytes())
    digest.update(np.asarray(rooms).astype(np.int64).tobytes())
    return digest.hexdigest()


def cluster(codes: np.ndarray, seed: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """KMeans centres (k = 20, fewer for a small Training Data, said so)."""
    from sklearn.cluster import KMeans

    k = min(CLUSTERS, len(codes))
    notes = () if k == CLUSTERS else (f"KMeans k = {k}, not {CLUSTERS}: Training Data has only {len(codes)} photos",)
    if notes:
        logger.warning("autoencoder-kmeans: %s", notes[0])
    with warnings.catch_warnings():  # identical codes give fewer distinct clusters than k: still usable
        warnings.simplefilter("ignore")
        centres = KMeans(k, random_state=seed).fit(codes).cluster_centers_
    return centres, notes


def fit(method: str, images: torch.Tensor, rooms: np.ndarray, seed: int) -> Fitted:
    if method == "siamese-resnet":
        return Fitted(method, train_siamese(images, rooms, seed))
    model = Fitted(method, train_autoencoder(images, seed))
    if method == "autoencoder-kmeans":
        model.centres, model.notes = cluster(encode(model, images).numpy(), seed)
    return model


def network_of(method: str) -> nn.Module:
    return siamese_tower() if method == "siamese-resnet" else autoencoder()[0]


def save(path: Path, fitted: Fitted, training_s: float) -> None:
    """The model and its SHA-256 sidecar, each written whole or not at all; a cache that cannot be
    written costs the next run a training, not this one."""
    buffer = io.BytesIO()
    centres = None if fitted.centres is None else torch.from_numpy(np.asarray(fitted.centres))
    torch.save(
        {
            "state": fitted.network.state_dict(),
            "centres": centres,
            "notes": list(fitted.notes),
            "training_s": training_s,
        },
        buffer,
    )
    payload = buffer.getvalue()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with reports.atomic_write(path, "wb") as handle:
            handle.write(payload)
        with reports.atomic_write(path.with_name(path.name + ".sha256")) as handle:
            handle.write(hashlib.sha256(payload).hexdigest())
    except (OSError, OutputError) as exc:
        logger.warning(
            "cannot keep the trained %s in %s (%s); it trains again next time",
            fitted.method,
            path.parent,
            first_line(exc),
        )


def load(path: Path, method: str) -> tuple[Fitted, float] | None:
    """The cached model, or None when missing or damaged (checksum, contents; one warning)."""
    if not path.is_file():
        return None
    try:
        payload = path.read_bytes()
        if hashlib.sha256(payload).hexdigest() != path.with_name(path.name + ".sha256").read_text().strip():
            raise ValueError("checksum wrong")
        saved = torch.load(io.BytesIO(payload), weights_only=True)
        network = network_of(method)
        network.load_state_dict(saved["state"])
        centres = None if saved["centres"] is None else saved["centres"].numpy()
        return Fitted(method, network.eval(), centres, tuple(saved["notes"])), float(saved["training_s"])
    except Exception as exc:  # any damage (checksum, pickle, shapes) means: train again
        logger.warning("the cached %s %s is damaged (%s); training it again", method, path, first_line(exc))
        return None


def trained_model(
    method: str, images: torch.Tensor, rooms: np.ndarray, cache_root: Path, seed: int = 0
) -> tuple[Fitted, float]:
    """The model trained on these Training Data photos (from the cache, else trained and kept),
    and the seconds its training took."""
    path = Path(cache_root) / "baselines" / f"{method}-{cache_key(images, rooms, method, seed)[:32]}.pt"
    cached = load(path, method)
    if cached is not None:
        return cached
    start = time.perf_counter()
    model = fit(method, images, rooms, seed)
    seconds = time.perf_counter() - start
    save(path, model, seconds)
    return model, seconds


# --------------------------------------------------------------------------------------------
# Scores


@torch.inference_mode()
def encode(model: Fitted, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Codes (N, 256) of the autoencoder or embeddings (N, 16) of the Siamese tower."""
    prepare = siamese_input if model.method == "siamese-resnet" else autoencoder_input
    network = model.network.eval()
    parts = [network(prepare(part)).flatten(1) for part in images.split(batch)]
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def pair_scores(method: str, model: Fitted, codes: torch.Tensor, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Minus the L2 distance of codes; for autoencoder-kmeans, pairs in different clusters below
    every pair sharing one."""
    x = codes.double().numpy()
    distance = np.linalg.norm(x[a] - x[b], axis=1)
    scores = -distance
    if method == "autoencoder-kmeans":
        nearest = np.argmin(((x[:, None, :] - model.centres[None]) ** 2).sum(-1), axis=1)
        apart = nearest[a] != nearest[b]
        scores = scores - apart * (distance.max(initial=0.0) + 1.0)
    return scores
