"""SameSpace benchmarks: each comparison measured side by side in one process, reported as ratios.

    python benchmarks/run.py [--quick] [--sections sampling,training,dedup,cpu,gpu,baselines,scale]
                             [--imagededup-python PATH]
    (scale = scale-index,scale-against,scale-memory)

1. Pair set and hash-weighted sampling: the original method (an N^2-row pandas frame, an imagehash
   difference per pair, pandas 1.x's weighted ``DataFrame.sample``) against ours at N = 631; ours alone at N = 5,000
   and 20,000 with peak memory.
2. Training pairs per second on the CPU for an Airbnb-sized pair set (631 photos, 199,552 pairs an
   epoch): end-to-end (the trunk per pair) against cached trunk features, the cache build, and the
   projected wall time of a 30-epoch trial both ways.
3. dedup of 1,000 and 10,000 photos: head evaluations and time, all pairs against candidate search,
   and the share of planted duplicate pairs the candidates keep.
4. CPU speed: the engine's start-up (cold and warm export cache); the MobileNetV3-Large trunk
   alone (torch NCHW, channels_last, onnxruntime) against our trunk path (uint8 photos in,
   preprocessing included); the training feature cache built by torch and by onnxruntime (631
   photos x 8 variants; --quick: 136); and dedup of 1,000 generated 640x480 JPEGs against
   imagededup 0.3.3's CNN method on the same photos and cores. imagededup runs in this Python if it
   has imagededup, else in ``--imagededup-python`` (e.g. a venv with ``pip install
   imagededup==0.3.3``), with ``weights=None`` patched in since it would download ImageNet weights;
   skipped without either.
5. With a GPU: 2 and 3 there, the trunk alone against the cache build and dedup embedding, and
   dedup of 10,000 generated photos.
6. Trained baselines (``--sections baselines``): the training time of ``autoencoder`` (+ its KMeans)
   and ``siamese-resnet`` on 631 generated 256x256 photos in the Kaggle Training Data's room sizes
   (``--quick``: one epoch each, projected to the full epochs).
7. ``--sections scale`` (benchmarks/scale.py; its parts alone: ``scale-index``, ``scale-against``,
   ``scale-memory``): the compressed candidate index on 1,000,000
   (``--quick``: 100,000) synthetic 2,560-d vectors with planted duplicates: recall against exact
   search on a sample, bytes per photo, build and search time; ``--against`` against dedup of the union
   (and the query's memory per catalogue photo, at a fifth of the catalogue and all of it);
   local dedup's peak RSS per photo at 5,000 and 30,000 photos (``--quick``: 1,000 and 5,000).

Speed does not depend on weight values, so the networks use random weights (no download). Machines
are noisy: read the ratios, not the absolute times. The last lines are one per target:
``target <name>: <measured> (goal <goal>) met|missed|not measured``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data  # noqa: E402
from data import pair_dataset  # noqa: E402
from samespace import features, scoring, transforms  # noqa: E402
from samespace.dedup import Dedup, score_embeddings  # noqa: E402
from samespace.network import COMPILE_AFTER_STEPS, SiameseNet, make_optimizer  # noqa: E402
from samespace.pairs import build_pairs, pack_bits  # noqa: E402
from samespace.settings import DataSettings, Hyperparameters  # noqa: E402
from samespace.transforms import N_VARIANTS, TRANSFORMS  # noqa: E402

# The room groups of the Kaggle Training Data's 631 photos (tests/test_data.py derives them from
# its file names): 1,559 same-room ordered pairs with self-pairs, 199,552 pairs an epoch.
AIRBNB_GROUP_SIZES = [1] * 3 + [2] * 218 + [3] * 37 + [4] * 15 + [5] * 3 + [6] * 1
EPOCHS = 30
BATCH = 64

ROWS: list[tuple[str, str, str]] = []
TARGETS: list[tuple[str, str, str, bool]] = []


def row(section: str, what: str, value: str) -> None:
    ROWS.append((section, what, value))
    print(f"  {section:<9} {what:<58} {value}", flush=True)


def target(name: str, measured: str, goal: str, met: bool | None) -> None:
    """A goal and how it went; ``met=None``: not measured in this run (``measured`` says why)."""
    TARGETS.append((name, measured, goal, met))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def with_peak_memory(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """Result, seconds and peak traced allocation (numpy and torch CPU buffers report to tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        result, seconds = timed(fn)
        return result, seconds, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def airbnb_like_rooms(n: int, seed: int = 0) -> np.ndarray:
    """Room labels for ``n`` photos with the original training split's group-size distribution."""
    if n == sum(AIRBNB_GROUP_SIZES):
        sizes = list(AIRBNB_GROUP_SIZES)
    else:
        rng = np.random.default_rng(seed)
        sizes = []
        while sum(sizes) < n:
            sizes.append(int(rng.choice(AIRBNB_GROUP_SIZES)))
        sizes[-1] -= sum(sizes) - n
    return np.repeat(np.arange(len(sizes)), sizes)


def random_hashes(n: int, seed: int = 0) -> np.ndarray:
    return pack_bits(np.random.default_rng(seed).random((n, 64)) < 0.5)


# --------------------------------------------------------------------------------------------
# 1. Pair set and sampling


def original_pair_set(rooms: np.ndarray, hashes: np.ndarray, seed: int = 0):
    """The original method: every ordered pair as a pandas row, an ImageHash difference per pair
    (``DataFrame.apply``), x64 upsampled positives, and ``DataFrame.sample`` for the negatives."""
    import imagehash
    import pandas as pd

    bits = np.unpackbits(hashes.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1).astype(bool)
    image_hashes = [imagehash.ImageHash(b.reshape(8, 8)) for b in bits]
    n = len(rooms)
    frame = pd.DataFrame({"image1": np.repeat(np.arange(n), n), "image2": np.tile(np.arange(n), n)})
    frame["label"] = (rooms[frame.image1] == rooms[frame.image2]).astype(int)
    frame["hamming"] = frame.apply(lambda r: image_hashes[r.image1] - image_hashes[r.image2], axis=1)
    positives = frame[frame.label == 1]
    for transform in TRANSFORMS:  # each transform: image 1, image 2, both or neither
        parts = []
        for first, second in [(False, False), (True, False), (False, True), (True, True)]:
            part = positives.copy()
            part[f"{transform}_1"], part[f"{transform}_2"] = first, second
            parts.append(part)
        positives = pd.concat(parts, ignore_index=True)
    candidates = frame[frame.label == 0]
    # DataFrame.sample(n, weights=..., random_state=seed) as in the pandas of the original (1.x):
    # pandas 3 refuses weights this skewed without replacement, so call what 1.x called.
    weights = np.exp(-candidates.hamming.to_numpy(dtype=float))
    chosen = np.random.RandomState(seed).choice(
        len(candidates), size=len(positives), replace=False, p=weights / weights.sum()
    )
    negatives = candidates.iloc[chosen]
    return pd.concat([positives, negatives], ignore_index=True)


def bench_sampling(quick: bool) -> None:
    print("1. pair set and hash-weighted sampling", flush=True)
    rooms, hashes = airbnb_like_rooms(631), random_hashes(631)
    original, original_s = timed(lambda: original_pair_set(rooms, hashes))
    ours, ours_s = timed(lambda: build_pairs(rooms, hashes, sampler="streaming"))
    exact, exact_s = timed(lambda: build_pairs(rooms, hashes, sampler="exact"))
    assert len(original) == len(ours) == len(exact) == 199_552
    row("sampling", "N=631 original (pandas frame, imagehash per pair)", f"{original_s:.2f} s")
    row("sampling", "N=631 ours, streaming sampler", f"{ours_s * 1e3:.1f} ms")
    row("sampling", "N=631 ours, exact sampler (vectorised RandomState.choice)", f"{exact_s * 1e3:.1f} ms")
    speedup = original_s / ours_s
    row("sampling", "N=631 speed-up, streaming over original", f"{speedup:.0f}x")
    target("sampling_speedup_n631", f"{speedup:.0f}x", ">= 100x", speedup >= 100)
    for n in (5_000, 20_000):
        big_rooms, big_hashes = airbnb_like_rooms(n, seed=n), random_hashes(n, seed=n)
        pairs, seconds, peak = with_peak_memory(lambda: build_pairs(big_rooms, big_hashes, sampler="streaming"))
        row(
            "sampling",
            f"N={n:,} ours: {len(pairs):,} pairs from {n * n:,} candidates",
            f"{seconds:.1f} s, peak {peak / 2**30:.2f} GiB",
        )
        if n == 20_000:
            target("sampling_n20000_seconds", f"{seconds:.1f} s", "< 60 s", seconds < 60)
            target("sampling_n20000_peak_memory", f"{peak / 2**30:.2f} GiB", "< 2 GiB", peak < 2 * 2**30)


# --------------------------------------------------------------------------------------------
# 2. Training throughput


def train_steps(net, optimizer, batches, device) -> int:
    """The trial's train_batch on plain torch: forward, BCE-with-logits, backward, RMSprop."""
    pairs = 0
    for first, second, labels in batches:
        first, second, labels = first.to(device), second.to(device), labels.to(device)
        loss = F.binary_cross_entropy_with_logits(net(first, second), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pairs += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return pairs


HPARAMS = Hyperparameters.from_hparams(  # best.yaml's
    {"learning_rate": 0.002061, "alpha": 0.926, "dropout1": 0.306, "dropout2": 0.491, "dropout3": 0.562}
)


def pairs_per_second(net, loader, device, warmup: int, measured: int, compile_after: int) -> tuple[float, float]:
    """Steady-state pairs per second with the trial's optimizer, and the warm-up's seconds (loader
    workers, and the optimizer's compilation when ``compile_after`` falls inside it)."""
    optimizer = make_optimizer(net, HPARAMS, device, compile_after=compile_after)
    batches = iter(loader)
    _, warmup_s = timed(lambda: train_steps(net, optimizer, (next(batches) for _ in range(warmup)), device))
    pairs, seconds = timed(lambda: train_steps(net, optimizer, (next(batches) for _ in range(measured)), device))
    return pairs / seconds, warmup_s


def floor_pairs_per_second(net, device, measured: int) -> float:
    """Forward and backward of the trainable layers alone on ready-made feature batches: no data
    loading, no optimizer. What the head's ~8M (towers' 2.5M) parameters per pair cost at best."""
    width = net.feature_dim
    first, second = torch.randn(BATCH, width, device=device), torch.randn(BATCH, width, device=device)
    labels = torch.randint(0, 2, (BATCH,), device=device).float()

    def run(steps):
        for _ in range(steps):
            net.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(net(first, second), labels).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    run(3)
    _, seconds = timed(lambda: run(measured))
    return measured * BATCH / seconds


def bench_training(quick: bool, device: torch.device, label: str = "training") -> dict[str, float]:
    print(f"2. training pairs per second ({device.type})", flush=True)
    rooms = airbnb_like_rooms(631)
    images = torch.randint(0, 256, (631, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pairs = build_pairs(rooms, random_hashes(631))
    epoch = len(pairs)
    torch.manual_seed(0)
    net = SiameseNet(pretrained=False, dropouts=(0.306, 0.491, 0.562)).to(device).train()

    with tempfile.TemporaryDirectory() as folder:
        subset = 24 if quick else len(images)
        cache = features.FeatureCache(folder, net.trunk, device=device)
        cached_features, build_s = timed(lambda: cache.features(images[:subset]))
        build_full_s = build_s * len(images) / subset
        note = "" if subset == len(images) else f" (measured on {subset}, projected)"
        row(label, f"feature cache build, 631 photos x 8 variants{note}", f"{build_full_s:.0f} s")
    if subset < len(images):  # quick: the remaining photos get random features (speed is the same)
        cached_features = torch.cat([cached_features, torch.randn(len(images) - subset, N_VARIANTS, net.feature_dim)])

    cached_set = features.FeaturePairDataset(cached_features, pairs)
    cached_loader = torch.utils.data.DataLoader(
        cached_set, batch_size=BATCH, shuffle=True, collate_fn=features.collate_batch
    )
    # As in a trial: the optimizer step is compiled on the CPU (after 500 steps there; here at the
    # first step, so that the measurement is the steady state and the compilation is timed).
    cached, warmup_s = pairs_per_second(
        net, cached_loader, device, warmup=10, measured=100 if quick else 400, compile_after=0
    )
    row(label, "cached path warm-up: 10 steps, optimizer compilation included", f"{warmup_s:.1f} s")
    split = data.Split(photos=[], images=images, rooms=rooms, skipped=[])
    e2e_set, e2e_options = pair_dataset(
        split, pairs, DataSettings(feature_cache=False), net.trunk, device
    )  # the trial's end-to-end dataset and loader options (2 workers)
    e2e_loader = torch.utils.data.DataLoader(
        e2e_set, batch_size=BATCH, shuffle=True, persistent_workers=True, **e2e_options
    )
    e2e, _ = pairs_per_second(
        net,
        e2e_loader,
        device,
        warmup=1,
        compile_after=COMPILE_AFTER_STEPS,
        measured=(3 if quick else 10) if device.type == "cpu" else 30,
    )
    floor = floor_pairs_per_second(net, device, measured=100 if quick else 300)

    cached_h = (build_full_s + warmup_s + EPOCHS * epoch / cached) / 3600
    e2e_h = EPOCHS * epoch / e2e / 3600
    row(label, "end-to-end (trunk per pair, 2 loader workers)", f"{e2e:,.1f} pairs/s")
    row(label, "cached trunk features", f"{cached:,.0f} pairs/s")
    row(label, "floor: trainable layers' forward+backward only", f"{floor:,.0f} pairs/s")
    row(label, "cached over end-to-end", f"{cached / e2e:,.0f}x")
    row(label, "cached as a share of the floor", f"{cached / floor:.0%}")
    row(label, f"projected {EPOCHS}-epoch trial, {epoch:,} pairs/epoch: end-to-end", f"{e2e_h:,.0f} h")
    row(label, f"projected {EPOCHS}-epoch trial: cached, cache build and warm-up included", f"{cached_h:.2f} h")
    return {"cached": cached, "e2e": e2e, "floor": floor, "cached_h": cached_h, "e2e_h": e2e_h}


# --------------------------------------------------------------------------------------------
# 3. dedup


NOISE_RATIOS = (1.0, 1.5, 2.0)  # photo noise over the spread between rooms; the target uses 1.0


@functools.cache
def feature_dim() -> int:
    """The trunk's output width, read from the network (960 for MobileNetV3-Large)."""
    return SiameseNet(pretrained=False).feature_dim


def planted_trunk_features(n: int, noise_ratio: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Trunk-like features (non-negative, as wide as the network's trunk output) with planted
    duplicate clusters of Airbnb-like sizes: a base shared by all photos, a per-room offset, and
    per-photo noise ``noise_ratio`` times the offsets' spread. Returns the features and the room of
    each photo."""
    generator = torch.Generator().manual_seed(seed)
    rooms = airbnb_like_rooms(n, seed=seed)
    width = feature_dim()
    base = torch.rand(width, generator=generator) * 2
    offsets = 0.3 * torch.randn(int(rooms.max()) + 1, width, generator=generator)
    noise = 0.3 * noise_ratio * torch.randn(n, width, generator=generator)
    return (base + offsets[torch.from_numpy(rooms)] + noise).clamp_min(0), rooms


def kept_share(found: Dedup, rooms: np.ndarray) -> tuple[float, int]:
    """Share of the planted same-room pairs among the scored candidate pairs."""
    planted = {pair for room in np.unique(rooms) for pair in _pairs_of(np.flatnonzero(rooms == room))}
    return len(planted & set(zip(found.first.tolist(), found.second.tolist()))) / max(1, len(planted)), len(planted)


def bench_dedup(quick: bool, device: torch.device, label: str = "dedup") -> dict[int, dict[str, float]]:
    print(f"3. dedup, all pairs against candidate search ({device.type})", flush=True)
    torch.manual_seed(0)
    net = SiameseNet(pretrained=False, dropouts=(0.3, 0.5, 0.5)).to(device).eval()
    results: dict[int, dict[str, float]] = {}
    for n in (1_000, 10_000):
        for ratio in NOISE_RATIOS if n == 10_000 else NOISE_RATIOS[:1]:
            trunk_features, rooms = planted_trunk_features(n, ratio, seed=n)
            with torch.inference_mode():
                x = trunk_features.to(device)
                first, second = net.towers[0](x), net.towers[1](x)
            names = [f"photo_{i}.jpg" for i in range(n)]
            found, knn_s = timed(lambda: score_embeddings(first, second, net.head, names, search="knn", neighbours=20))
            kept, planted = kept_share(found, rooms)
            row(label, f"N={n:,} noise {ratio:g}x room spread: planted pairs kept (k=20)", f"{kept:.4f} of {planted:,}")
            if ratio != 1.0:
                continue
            results[n] = {"kept": kept, "reduction": n * (n - 1) / found.head_evaluations}
            results[n].update(_all_pairs_against(found, knn_s, first, second, net, names, quick, device, label))
            if n == 10_000:
                approximate, seconds = timed(
                    lambda: score_embeddings(first, second, net.head, names, search="knn", neighbours=20, index="faiss")
                )
                kept, _ = kept_share(approximate, rooms)
                row(label, f"N={n:,} faiss HNSW instead of exact search: kept, time", f"{kept:.4f}, {seconds:.1f} s")
    return results


def _all_pairs_against(found, knn_s, first, second, net, names, quick, device, label) -> dict[str, float]:
    n = len(names)
    all_evaluations = n * (n - 1)
    if n <= 1_000 or (not quick and device.type == "cuda"):
        every, all_s = timed(lambda: score_embeddings(first, second, net.head, names, search="all"))
        if n <= 1_000:  # the same pair scores the same, however it was found
            lookup = dict(zip(zip(every.first.tolist(), every.second.tolist()), every.scores.tolist()))
            pairs = zip(found.first.tolist(), found.second.tolist(), found.scores)
            worst = max(abs(lookup[(a, b)] - s) for a, b, s in pairs)
            row(label, f"N={n:,} candidate vs all-pairs score of the same pair, largest difference", f"{worst:.1e}")
        how = "measured"
    else:  # 10^8 head evaluations: time a sample of pairs and project
        sample = 500_000 if quick else 2_000_000
        a = np.random.default_rng(0).integers(0, n, sample)
        b = (a + 1 + np.random.default_rng(1).integers(0, n - 1, sample)) % n
        scorer = scoring.PairScorer(net.head, first, second)
        _, sample_s = timed(lambda: scorer.probabilities(a, b))
        all_s = sample_s * all_evaluations / (2 * sample)
        how = f"projected from {2 * sample:,}"
    reduction = all_evaluations / found.head_evaluations
    row(label, f"N={n:,} all pairs: {all_evaluations:,} head evaluations", f"{all_s:,.1f} s ({how})")
    row(label, f"N={n:,} candidates (k=20): {found.head_evaluations:,} head evaluations", f"{knn_s:,.1f} s")
    row(label, f"N={n:,} fewer head evaluations / speed-up", f"{reduction:,.0f}x / {all_s / knn_s:,.0f}x")
    return {"speedup": all_s / knn_s}


def bench_report_html(n: int = 10_000) -> None:
    """The dedup report of ``n`` photos with Airbnb-like duplicate groups (three quarters of the
    photos in a group): its size, and its load time in headless Chromium (navigation start to the
    page's load event, measured by a wrapper page that frames it). The photos are random crops of
    scikit-learn's two sample photographs, so thumbnails compress like real photos, not like flat
    synthetic ones."""
    import re
    import shutil
    import subprocess

    from PIL import Image
    from sklearn.datasets import load_sample_images

    from samespace.reports import write_dedup_html

    rng = np.random.default_rng(0)
    sources = [Image.fromarray(a) for a in load_sample_images().images]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        names = [f"listing_{i:05d}.jpg" for i in range(n)]
        for i, name in enumerate(names):
            source = sources[i % 2]
            scale = rng.uniform(0.4, 1.0)
            w, h = int(source.width * scale), int(source.height * scale)
            x, y = int(rng.integers(0, source.width - w + 1)), int(rng.integers(0, source.height - h + 1))
            source.crop((x, y, x + w, y + h)).resize((320, 214)).save(folder / name, quality=85)
        rooms = airbnb_like_rooms(n, seed=1)
        groups = [m.tolist() for m in np.split(np.arange(n), np.flatnonzero(np.diff(rooms)) + 1) if len(m) > 1]
        groups.sort(key=lambda m: (-len(m), m[0]))
        pairs = {pair: float(rng.uniform(0.5, 1)) for members in groups for pair in _pairs_of(np.array(members))}
        summary = {"checkpoint": "benchmark", "photos": n, "groups": len(groups), "duplicate pairs": len(pairs)}
        report = Path(tmp) / "report" / "report.html"
        report.parent.mkdir()
        _, seconds = timed(lambda: write_dedup_html(report, folder, names, groups, pairs, [], summary))
        megabytes = report.stat().st_size / 1e6
        in_groups = sum(map(len, groups))
        row(
            "dedup",
            f"report.html of {n:,} photos ({in_groups:,} in {len(groups):,} groups): size, write",
            f"{megabytes:.1f} MB, {seconds:.1f} s",
        )
        target("report_html_size", f"{megabytes:.1f} MB", "< 20 MB", megabytes < 20)
        chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if chromium is None:
            target("report_html_load", "not measured: no chromium on PATH", "< 3 s", False)
            return
        wrapper = report.parent / "load.html"
        wrapper.write_text(
            "<!doctype html><title>-</title><iframe src='report.html' "
            "onload='document.title=\"load \"+performance.now().toFixed(0)'></iframe>"
        )
        command = [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage"]
        command += [f"--user-data-dir={tmp}/profile", "--dump-dom", wrapper.as_uri()]
        loads = []
        for _ in range(3):
            dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
            found = re.search(r"<title>load (\d+)</title>", dom)
            if found:
                loads.append(int(found.group(1)) / 1000)
        if not loads:
            target("report_html_load", "not measured: chromium did not load the page", "< 3 s", False)
            return
        load = float(np.median(loads))
        row(
            "dedup", f"report.html of {n:,} photos: load in headless Chromium (median of {len(loads)})", f"{load:.2f} s"
        )
        target("report_html_load", f"{load:.2f} s", "< 3 s", load < 3)


COPIES_SCRIPT = """
import resource, sys, time
from pathlib import Path
import numpy as np, torch
from PIL import Image
from samespace import network
from samespace.dedup import find_duplicates, write_outputs
folder, out, n = Path(sys.argv[1]) / "photos", Path(sys.argv[1]) / "out", int(sys.argv[2])
folder.mkdir()
Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(folder / "c0.jpg")
for k in range(1, n):
    (folder / f"c{k}.jpg").write_bytes((folder / "c0.jpg").read_bytes())
net = network.SiameseNet(pretrained=False).eval()
started = time.perf_counter()
write_outputs(find_duplicates(net, folder, torch.device("cpu")), folder, out, False)
seconds = time.perf_counter() - started
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, sum(p.stat().st_size for p in out.iterdir()))
"""


def bench_identical_copies(n: int = 10_000) -> None:
    """Copies of one photo cost O(copies) (issue 15): dedup and its outputs in a subprocess, so
    that its peak RSS is its own (torch included)."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        env_root = str(Path(__file__).resolve().parents[1])
        done = subprocess.run(
            [sys.executable, "-c", COPIES_SCRIPT, tmp, str(n)], capture_output=True, text=True, cwd=env_root
        )
    if done.returncode != 0:
        target("dedup_10000_copies_seconds", "not measured: " + done.stderr.strip()[-200:], "< 60 s", False)
        return
    seconds, peak, written = (float(v) for v in done.stdout.split()[-3:])
    measured = f"{seconds:.1f} s, {peak / 2**30:.2f} GiB, {written / 1e6:.1f} MB"
    row("dedup", f"{n:,} copies of one photo: time, peak RSS, outputs", measured)
    target("dedup_10000_copies_seconds", f"{seconds:.1f} s", "< 60 s", seconds < 60)
    target("dedup_10000_copies_peak_rss", f"{peak / 2**30:.2f} GiB", "< 1 GiB", peak < 2**30)


def _pairs_of(members: np.ndarray):
    return [(int(a), int(b)) for i, a in enumerate(members) for b in members[i + 1 :]]


# --------------------------------------------------------------------------------------------
# 4. CPU speed: the trunk, and dedup of a folder against imagededup


def trunk_under_test() -> torch.nn.Module:
    """The MobileNetV3-Large trunk with seed-0 random weights (speed does not depend on them)."""
    torch.manual_seed(0)
    return SiameseNet(pretrained=False).trunk


def engine_start_up(folder: Path) -> tuple[Any, float, float]:
    """The onnxruntime trunk: (runner, seconds on a cold cache (export + session), seconds on the
    now warm cache (read, checksum, session))."""
    from samespace import engine

    trunk = trunk_under_test()
    fingerprint = features.trunk_fingerprint(trunk)
    _, cold = timed(lambda: engine.load(trunk, fingerprint, torch.device("cpu"), "onnx", folder=folder))
    runner, warm = timed(lambda: engine.load(trunk, fingerprint, torch.device("cpu"), "onnx", folder=folder))
    return runner, cold, warm


def openvino_trunk(threads: int) -> tuple[Any, str]:
    """The trunk's ONNX export compiled by OpenVINO with float32 forced (its default on AMX CPUs is
    bfloat16, which moved features by about a fifth of their size in issue 14), for the engine
    choice: (runner or None, why not). OpenVINO is a benchmark-only package (requirements-dev.txt)."""
    from samespace import engine

    try:
        import openvino
    except ImportError:
        return None, "not measured: openvino is not installed (pip install -r requirements-dev.txt)"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trunk.onnx"
        path.write_bytes(engine.export_bytes(trunk_under_test()))
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        compiled = openvino.Core().compile_model(str(path), "CPU", config)
    return (lambda x: torch.from_numpy(compiled(x.numpy())[0])), "measured"


def trunk_rates(
    device: torch.device, batches: int, autocast: bool = False, runner: Any = None, openvino: Any = None
) -> dict[str, float]:
    """Images per second of the trunk alone (float input ready on the device, NCHW and
    channels_last) and of our trunk path (``features.trunk_features``: uint8 photos in, copy and
    preprocessing included), batch 64 on the CPU and 256 on a GPU. The three are timed batch by
    batch in turn, so that a busy machine slows them alike; each rate is the median batch's.
    ``runner`` (``engine.load`` of this trunk) and ``openvino`` (``openvino_trunk``) add the trunk
    alone through them, in the same turns."""
    torch.manual_seed(0)
    trunk = trunk_under_test().to(device).eval()
    fast = features.inference_trunk(trunk, device)
    size = features.default_batch_size(device)
    images = torch.randint(0, 256, (size, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    nchw = transforms.model_input(images).to(device)
    channels_last = nchw.contiguous(memory_format=torch.channels_last)

    def alone(module, x):
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=autocast):
            module(x)

    runs = {
        "trunk alone, NCHW": lambda: alone(trunk, nchw),
        "trunk alone, channels_last": lambda: alone(fast, channels_last),
        "our trunk path": lambda: features.trunk_features(fast, images, 0, device, autocast=autocast),
    }
    if runner is not None:
        runs["trunk alone, onnxruntime"] = lambda: runner(nchw)
    if openvino is not None:
        runs["trunk alone, OpenVINO float32"] = lambda: openvino(nchw)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(batches + 1):
        for name, run in runs.items():
            _, took = timed(lambda: (run(), torch.cuda.synchronize() if device.type == "cuda" else None))
            if round_:  # the first round warms up (oneDNN primitive creation, cuDNN autotuning)
                seconds[name].append(took)
    return {name: size / float(np.median(values)) for name, values in seconds.items()}


def write_photo_folder(folder: Path, n: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> np.ndarray:
    """``n`` generated listing photos as JPEGs in one folder, rooms of Airbnb-like group sizes
    (several photos of a room: duplicates). Returns each photo's room."""
    from concurrent.futures import ThreadPoolExecutor

    import synthetic

    rooms = airbnb_like_rooms(n, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)

    def write_room(room: int) -> None:
        rng = np.random.default_rng([seed, room])
        scene = synthetic.room_scene(rng)
        for index in np.flatnonzero(rooms == room):
            synthetic.photograph(scene, rng, size).save(folder / f"photo_{index:05d}.jpg", quality=90)

    with ThreadPoolExecutor(max_workers=torch.get_num_threads()) as pool:
        list(pool.map(write_room, np.unique(rooms)))
    return rooms


IMAGEDEDUP_SCRIPT = """
import json, sys, time
import torch, torchvision
real = torchvision.models.mobilenet_v3_small
# imagededup's CNN downloads MobileNetV3-Small ImageNet weights; speed does not depend on them.
torchvision.models.mobilenet_v3_small = lambda *args, **kwargs: real(weights=None)
from imagededup.methods import CNN
cnn = CNN(verbose=False)
start = time.perf_counter()
found = cnn.find_duplicates(image_dir=sys.argv[1], num_enc_workers=2)
print(json.dumps({"seconds": time.perf_counter() - start, "photos": len(found)}))
"""


def imagededup_seconds(python: str | None, folder: Path) -> tuple[float | None, str]:
    """Seconds imagededup 0.3.3's ``CNN.find_duplicates`` takes on ``folder`` (model building and
    imports excluded), or None and one line saying why not."""
    import json
    import subprocess

    if not python:
        return None, "skipped: no --imagededup-python (a Python with imagededup==0.3.3 installed)"
    try:
        out = subprocess.run(
            [python, "-c", IMAGEDEDUP_SCRIPT, str(folder)], capture_output=True, text=True, timeout=1800
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"skipped: cannot run {python}: {type(exc).__name__}"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"skipped: imagededup failed in {python}: {last[:160]}"
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"]), "measured"


def cache_build_seconds(n: int, chunk: int = 64) -> dict[str, float] | None:
    """Seconds to build the training feature cache (8 variants a photo, files written) of ``n``
    photos by torch eager (channels_last, today's path) and by onnxruntime, in alternating chunks
    of ``chunk`` photos so that a busy machine slows both alike; None when the engine fell back."""
    cpu = torch.device("cpu")
    trunk = trunk_under_test()
    images = torch.randint(0, 256, (n, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    seconds = {"torch": 0.0, "onnx": 0.0}
    with tempfile.TemporaryDirectory() as folder:
        caches = {name: features.FeatureCache(Path(folder) / name, trunk, cpu, engine_name=name) for name in seconds}
        if caches["onnx"].engine != "onnx":
            return None
        for cache in caches.values():  # warm-up: oneDNN primitives, the session's first run
            cache.features(images[:8])
        for start in range(8, n, chunk):
            for name, cache in caches.items():
                seconds[name] += timed(lambda: cache.features(images[start : start + chunk]))[1]
    return seconds


def dedup_stages(net: SiameseNet, paths: list[Path]) -> dict[str, float]:
    """Seconds of each stage of dedup's CPU path, run one after another on the same photos: where
    the time goes once the trunk runs in the engine (the profile issue 14 asks for)."""
    cpu = torch.device("cpu")
    embedder = scoring.Embedder(net, cpu, engine_name="auto")
    (images, _, _), decode_s = timed(lambda: scoring.read_images(paths))
    trunk_features, trunk_s = timed(lambda: embedder.backbone(images))
    (first, second), towers_s = timed(lambda: embedder.embed(trunk_features))
    names = [path.name for path in paths]
    _, head_s = timed(lambda: score_embeddings(first, second, net.head, names))
    # thread_split's choice below 8 cores: decode between trunk passes with every core, rather
    # than one thread decoding the next chunk while the engine runs on the rest
    decoders = max(1, torch.get_num_threads() // 2)
    trunk_threads = max(1, torch.get_num_threads() - decoders)
    overlapping = scoring.Embedder(net, cpu, engine_name="auto", trunk_threads=trunk_threads)
    _, overlapped_s = timed(lambda: scoring.features_of_files(overlapping, paths, decode_threads=decoders))
    _, in_turn_s = timed(lambda: scoring.features_of_files(embedder, paths, decode_threads=0))
    return {
        "decode + resize (PIL, draft, all cores)": decode_s,
        f"preprocessing + trunk ({embedder.engine})": trunk_s,
        "towers": towers_s,
        "candidates + head": head_s,
        "decode and trunk in turn, all cores each (the default here)": in_turn_s,
        f"decode overlapped with the trunk ({decoders} decode thread(s), the rest the engine's)": overlapped_s,
    }


def default_imagededup_python() -> str | None:
    """This Python, when imagededup is importable in it (without importing it: that downloads)."""
    import importlib.util

    return sys.executable if importlib.util.find_spec("imagededup") is not None else None


def bench_cpu(quick: bool, imagededup_python: str | None) -> None:
    from samespace.dedup import find_duplicates

    cpu = torch.device("cpu")
    print(f"4. CPU speed ({torch.get_num_threads()} threads)", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        runner, cold_s, warm_s = engine_start_up(Path(folder))
    row("cpu", "engine start-up, cold cache (ONNX export + session)", f"{cold_s:.1f} s")
    row("cpu", "engine start-up, warm cache (read + checksum + session)", f"{warm_s:.2f} s")
    target("cpu_engine_start_up_warm_cache", f"{warm_s:.2f} s", "< 5 s", warm_s < 5)
    openvino, openvino_how = openvino_trunk(torch.get_num_threads())
    rates = trunk_rates(cpu, batches=3 if quick else 8, runner=runner, openvino=openvino)
    for name, rate in rates.items():
        row("cpu", f"{name} (batch 64, inference mode)", f"{rate:.1f} img/s")
    if openvino is None:
        row("cpu", "trunk alone, OpenVINO float32", openvino_how)
    elif runner is not None:  # the engine choice of issue 14: onnxruntime unless OpenVINO beats it here
        ratio = rates["trunk alone, OpenVINO float32"] / rates["trunk alone, onnxruntime"]
        row("cpu", "trunk through OpenVINO float32 over onnxruntime (> 1: OpenVINO faster)", f"{ratio:.2f}x")
    if runner is None:
        target("cpu_trunk_onnxruntime_over_torch_channels_last", "not measured: the engine fell back", ">= 3x", None)
    else:
        speedup = rates["trunk alone, onnxruntime"] / rates["trunk alone, channels_last"]
        row("cpu", "trunk through onnxruntime over torch eager channels_last", f"{speedup:.2f}x")
        target("cpu_trunk_onnxruntime_over_torch_channels_last", f"{speedup:.2f}x", ">= 3x", speedup >= 3)
    share = rates["our trunk path"] / rates["trunk alone, channels_last"]
    row("cpu", "our trunk path over the trunk alone in channels_last", f"{share:.2f}")
    target("cpu_trunk_path_over_trunk_alone_channels_last", f"{share:.2f}", ">= 0.8", share >= 0.8)

    photos = 136 if quick else 631  # 631: the Airbnb Training Data
    built = cache_build_seconds(photos)
    if built is None:
        target("cpu_cache_build_onnxruntime_over_torch", "not measured: the engine fell back", ">= 2.5x", None)
    else:
        for name, took in built.items():
            rate = (photos - 8) * N_VARIANTS / took
            what = f"feature cache build of {photos - 8} photos x 8 variants, {name}"
            row("cpu", what, f"{took:.1f} s ({rate:.1f} img/s)")
        speedup = built["torch"] / built["onnx"]
        target("cpu_cache_build_onnxruntime_over_torch", f"{speedup:.2f}x", ">= 2.5x", speedup >= 2.5)

    n = 1_000
    with tempfile.TemporaryDirectory() as folder:
        write_photo_folder(Path(folder), n)
        torch.manual_seed(0)
        net = SiameseNet(pretrained=False)
        found, ours_s = timed(lambda: find_duplicates(net, Path(folder), cpu, engine_name="auto"))
        assert len(found.names) == n
        row("cpu", f"dedup of {n:,} 640x480 JPEGs: ours (decode, trunk, candidates, head)", f"{ours_s:.1f} s")
        # dedup runs the CLI's default engine: compare with that engine's trunk-alone rate
        alone = "trunk alone, onnxruntime" if runner is not None else "trunk alone, channels_last"
        bound = n / ours_s / rates[alone]
        row("cpu", f"dedup photos/s over the {alone} img/s (1.0: trunk-bound)", f"{bound:.2f}")
        for stage, seconds in dedup_stages(net, sorted(Path(folder).iterdir())).items():
            row("cpu", f"dedup stage, run alone: {stage}", f"{seconds:.1f} s ({100 * seconds / ours_s:.0f}% of dedup)")
        theirs_s, how = imagededup_seconds(imagededup_python, Path(folder))
    if theirs_s is None:
        row("cpu", f"dedup of {n:,} 640x480 JPEGs: imagededup 0.3.3 CNN", how)
        target("cpu_dedup_1000_vs_imagededup_cnn", how, "<= 0.67x its time", None)
        return
    row("cpu", f"dedup of {n:,} 640x480 JPEGs: imagededup 0.3.3 CNN (num_enc_workers=2)", f"{theirs_s:.1f} s")
    row("cpu", "dedup: our time over imagededup's", f"{ours_s / theirs_s:.2f}")
    ratio = ours_s / theirs_s  # issue 14: 1.5x faster than imagededup (the moonshot: 2x)
    target("cpu_dedup_1000_vs_imagededup_cnn", f"{ratio:.2f}x its time", "<= 0.67x", ratio <= 0.67)


# --------------------------------------------------------------------------------------------
# 5. GPU


GPU_GOALS = {  # name: goal, for the target lines (not measured without a GPU)
    "gpu_cache_build_over_trunk_alone": ">= 0.5",
    "gpu_dedup_embedding_over_trunk_alone": ">= 0.5",
    "gpu_cached_training_via_determined_over_captured_step": ">= 0.6",
    "gpu_cached_training_pairs_per_second": ">= 52,800 (3x 17.6k)",
    "gpu_trial_30_epochs_airbnb_sizes": "< 150 s",
    "gpu_dedup_10000_photos": "< 5 s",
}


def gpu_target(name: str, measured: str, met: bool | None) -> None:
    target(name, measured, GPU_GOALS[name], met)


def bench_gpu(quick: bool) -> None:
    if not torch.cuda.is_available():
        print("5. GPU: none here, skipped", flush=True)
        row("gpu", "no CUDA device", "skipped")
        for name in GPU_GOALS:
            gpu_target(name, "no GPU here", None)
        return
    from samespace.dedup import find_duplicates

    device = torch.device("cuda")
    print(f"5. GPU: {torch.cuda.get_device_name(device)}", flush=True)
    exact = trunk_rates(device, batches=5 if quick else 20)
    rounded = trunk_rates(device, batches=5 if quick else 20, autocast=True)
    for name, rate in exact.items():
        row("gpu", f"{name} (batch 256, float32)", f"{rate:,.0f} img/s")
    for name, rate in rounded.items():
        row("gpu", f"{name} (batch 256, bfloat16 autocast)", f"{rate:,.0f} img/s")

    torch.manual_seed(0)
    net = SiameseNet(pretrained=False).to(device).eval()
    images = torch.randint(0, 256, (1024, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as folder:
        cache = features.FeatureCache(folder, net.trunk, device=device)
        cache.features(images[:256])  # warm-up: cuDNN autotuning
        _, build_s = timed(lambda: cache.features(images[256:]))
    build_rate = 768 * N_VARIANTS / build_s
    row("gpu", "feature cache build (8 variants, files written)", f"{build_rate:,.0f} img/s")
    share = build_rate / exact["trunk alone, channels_last"]
    gpu_target("gpu_cache_build_over_trunk_alone", f"{share:.2f}", share >= 0.5)

    n = 10_000 if not quick else 2_000
    with tempfile.TemporaryDirectory() as folder:
        write_photo_folder(Path(folder), n)
        find_duplicates(net, Path(folder), device)  # warm-up: page cache, cuDNN autotuning
        found, dedup_s = timed(lambda: find_duplicates(net, Path(folder), device))
        paths = sorted(Path(folder).iterdir())
        embedder = scoring.Embedder(net, device, autocast=True)
        _, embed_s = timed(lambda: scoring.features_of_files(embedder, paths))
    row("gpu", f"dedup of {n:,} 640x480 JPEGs", f"{dedup_s:.1f} s")
    embed_rate = n / embed_s
    row("gpu", "dedup embedding (decode and trunk, bfloat16 when the guard allows)", f"{embed_rate:,.0f} img/s")
    ceiling = rounded["trunk alone, channels_last"] if embedder.autocast else exact["trunk alone, channels_last"]
    share = embed_rate / ceiling
    gpu_target("gpu_dedup_embedding_over_trunk_alone", f"{share:.2f}", share >= 0.5)
    if n == 10_000:
        gpu_target("gpu_dedup_10000_photos", f"{dedup_s:.1f} s", dedup_s < 5)
    else:
        gpu_target("gpu_dedup_10000_photos", f"quick: {n:,} photos in {dedup_s:.1f} s", None)

    training = bench_training(quick, device, label="gpu")
    row("gpu", "cached over end-to-end on the GPU", f"{training['cached'] / training['e2e']:,.0f}x")
    measured = f"{training['cached']:,.0f} (plain torch loop, not Determined's)"
    gpu_target("gpu_cached_training_pairs_per_second", measured, None)
    for name in ("gpu_cached_training_via_determined_over_captured_step", "gpu_trial_30_epochs_airbnb_sizes"):
        gpu_target(name, "not implemented yet (needs a GPU session)", None)
    dedup = bench_dedup(quick, device, label="gpu")
    row("gpu", "dedup N=10,000 candidate speed-up on the GPU", f"{dedup[10_000]['speedup']:,.0f}x")


# --------------------------------------------------------------------------------------------


def smooth_photos(rooms: np.ndarray, seed: int = 0) -> torch.Tensor:
    """One uint8 256x256 photo per entry: a room's smooth random scene, lightly varied per photo."""
    generator = torch.Generator().manual_seed(seed)
    scenes = torch.rand(int(rooms.max()) + 1, 3, 8, 8, generator=generator)
    noise = torch.rand(len(rooms), 3, 8, 8, generator=generator) * 0.2
    small = (scenes[torch.from_numpy(rooms)] + noise).clamp(0, 1)
    return F.interpolate(small, size=(256, 256), mode="bicubic", align_corners=False).clamp(0, 1).mul(255).byte()


def bench_baselines(quick: bool) -> dict[str, float]:
    """Training minutes of each trained baseline on 631 photos (quick: one epoch, projected)."""
    from samespace.baselines import trained

    rooms = airbnb_like_rooms(631)
    images = smooth_photos(rooms)
    minutes = {}
    for method, settings in (("autoencoder-kmeans", trained.AUTOENCODER), ("siamese-resnet", trained.SIAMESE)):
        epochs = settings["epochs"]
        if quick:
            settings["epochs"] = 1
        try:
            _, seconds = timed(lambda: trained.fit(method, images, rooms, 0))
        finally:
            settings["epochs"] = epochs
        projected = seconds * (epochs if quick else 1)
        minutes[method] = projected / 60
        how = f"1 epoch x {epochs}" if quick else f"{epochs} epochs"
        row("baselines", f"{method} training, 631 photos, CPU ({how})", f"{projected / 60:.1f} min")
    return minutes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="fewer batches and projections (the short run; --sections picks parts)"
    )
    parser.add_argument(
        "--sections", default="sampling,training,dedup,cpu,gpu,baselines", help="comma-separated subset to run"
    )
    parser.add_argument(
        "--imagededup-python",
        metavar="PATH",
        help="a Python with imagededup==0.3.3, for the CPU dedup comparison (default: this one, if it has it)",
    )
    args = parser.parse_args(argv)
    args.imagededup_python = args.imagededup_python or default_imagededup_python()
    sections = set(args.sections.split(","))
    known = {"sampling", "training", "dedup", "cpu", "gpu", "baselines", "scale"}
    known |= {"scale-index", "scale-against", "scale-memory"}  # the scale section's parts
    for name in sorted(sections - known):  # a typo would run nothing and print an empty table
        parser.error(f"unknown section {name!r} (known: {', '.join(sorted(known))})")
    print(
        f"SameSpace benchmarks ({'quick' if args.quick else 'full'}): torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    cpu = torch.device("cpu")
    if "sampling" in sections:
        bench_sampling(args.quick)
    if "training" in sections:
        training = bench_training(args.quick, cpu)
        ratio = training["cached"] / training["e2e"]
        target("cached_over_end_to_end_cpu", f"{ratio:,.0f}x", ">= 100x", ratio >= 100)
        target("trial_30_epochs_cached_cpu", f"{training['cached_h']:.2f} h", "< 2 h", training["cached_h"] < 2)
    if "dedup" in sections:
        dedup = bench_dedup(args.quick, cpu)
        target(
            "dedup_n10000_fewer_head_evaluations",
            f"{dedup[10_000]['reduction']:,.0f}x",
            ">= 50x",
            dedup[10_000]["reduction"] >= 50,
        )
        target(
            "dedup_n10000_duplicate_pairs_kept",
            f"{dedup[10_000]['kept']:.4f}",
            ">= 0.99",
            dedup[10_000]["kept"] >= 0.99,
        )
        bench_report_html()
        bench_identical_copies()
    if "cpu" in sections:
        bench_cpu(args.quick, args.imagededup_python)
    if "gpu" in sections:
        bench_gpu(args.quick)
    if "baselines" in sections:
        for method, minutes in bench_baselines(args.quick).items():
            target(f"{method}_training_631_photos_cpu", f"{minutes:.1f} min", "< 30 min", minutes < 30)
    # not in the default list (long): "scale" runs the three parts, each can run alone
    if sections & {"scale", "scale-index"}:
        from benchmarks.scale import bench_scale

        bench_scale(args.quick, row, target)
    if sections & {"scale", "scale-against"}:
        from benchmarks.scale import bench_against

        bench_against(args.quick, row, target, write_photo_folder)
    if sections & {"scale", "scale-memory"}:
        from benchmarks.scale import bench_memory

        bench_memory(args.quick, row, target, write_photo_folder)

    print("\n| section | measurement | value |\n|---|---|---|")
    for section, what, value in ROWS:
        print(f"| {section} | {what} | {value} |")
    print()
    for name, measured, goal, met in TARGETS:
        status = "not measured" if met is None else "met" if met else "missed"
        print(f"target {name}: {measured} (goal {goal}) {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
