"""Benchmark section 6 (``--sections scale``): the candidate stage at archive size.

1,000,000 (``--quick``: 100,000) synthetic 2,560-d search vectors, as ``candidates.search_vectors``
gives them (unit length), generated block by block from a seed so that no step holds them all:
look-alike photos (200 themes, each photo its theme plus as much noise, cosine about 0.5 between
photos of a theme) and, in each block, 5 % planted near-copies of earlier photos (noise 0.5 of the
photo's scale, cosine about 0.9). The compressed index (``candidates.compressed_index``: PCA192,
IVF, SQ8) is trained on a seeded sample, filled and searched blockwise; exact search of a sample of
queries against every vector (regenerated block by block) is the reference. Recall is of planted
duplicate pairs: of the planted partners exact top-k search finds for the sampled queries, the
share the index finds too.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from samespace import candidates

DIM = 2 * 1280
BLOCK = 20_000
THEMES = 200
COPY_SHARE = 0.05
K = 20
SAMPLE_QUERIES = 500
GENERATING = [0.0]  # seconds spent generating synthetic vectors (counted apart from the index's work)


def themes(seed: int = 0) -> np.ndarray:
    return np.random.default_rng([seed, 0]).standard_normal((THEMES, DIM)).astype(np.float32)


def block(number: int, size: int, centres: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Block ``number``'s unit vectors and its planted pairs (rows within the block)."""
    started = time.perf_counter()
    rng = np.random.default_rng([seed, 1 + number])
    x = centres[rng.integers(0, THEMES, size)] + rng.standard_normal((size, DIM), dtype=np.float32)
    copies = int(size * COPY_SHARE)
    sources = rng.choice(size - copies, copies, replace=False)
    x[size - copies :] = x[sources] + 0.5 * rng.standard_normal((copies, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    GENERATING[0] += time.perf_counter() - started
    return x, np.stack([sources, np.arange(size - copies, size)], axis=1)


def blocks(n: int, centres: np.ndarray) -> Iterator[np.ndarray]:
    for number, start in enumerate(range(0, n, BLOCK)):
        yield block(number, min(BLOCK, n - start), centres)[0]


def pick(rows: np.ndarray, n: int, centres: np.ndarray) -> np.ndarray:
    """The vectors of sorted global ``rows``, regenerated block by block (filled in place: at
    1,000,000 the 163,840 training vectors are 1.7 GB, a list of parts plus its join would be twice)."""
    out = np.empty((len(rows), DIM), np.float32)
    for start, x in zip(range(0, n, BLOCK), blocks(n, centres)):
        within = (rows >= start) & (rows < start + len(x))
        out[within] = x[rows[within] - start]
    return out


def reported(items: Iterable[np.ndarray], what: str, n: int, every: int = 10) -> Iterator[np.ndarray]:
    """``items`` passed through, with a line on stderr every ``every`` blocks (runs go to log files)."""
    started, done = time.perf_counter(), 0
    for number, x in enumerate(items, 1):
        yield x
        done += len(x)
        if number % every == 0 or done == n:
            seconds = time.perf_counter() - started
            print(f"  scale-index: {what} {done:,} / {n:,} ({seconds:.0f} s)", file=sys.stderr, flush=True)


def peak_rss_gb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def exact_top_k(queries: np.ndarray, rows: np.ndarray, n: int, centres: np.ndarray) -> np.ndarray:
    """Exact top-k (own row excluded) of ``queries`` over all n vectors, block by block."""
    best_s = np.full((len(queries), K), -np.inf, np.float32)
    best_i = np.zeros((len(queries), K), np.int64)
    q = torch.from_numpy(queries)
    for number, x in enumerate(reported(blocks(n, centres), "exact reference over", n)):
        start = number * BLOCK
        s = (q @ torch.from_numpy(x).T).numpy()
        s[(rows[:, None] - start) == np.arange(len(x))[None, :]] = -np.inf
        both_s = np.concatenate([best_s, s], axis=1)
        both_i = np.concatenate([best_i, start + np.broadcast_to(np.arange(len(x)), s.shape)], axis=1)
        keep = np.argsort(-both_s, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(both_s, keep, 1), np.take_along_axis(both_i, keep, 1)
    return best_i


def bench_scale(quick: bool, row: Callable[..., None], target: Callable[..., None], n: int | None = None) -> None:
    n = n or (100_000 if quick else 1_000_000)
    centres = themes()
    rng = np.random.default_rng(1)
    train_rows = np.sort(rng.choice(n, candidates.training_size(n), replace=False))
    GENERATING[0] = 0.0
    started = time.perf_counter()
    index = candidates.compressed_index(DIM, n, pick(train_rows, n, centres))
    trained, generated = time.perf_counter(), [GENERATING[0]]
    print(f"  scale-index: trained on {len(train_rows):,} ({trained - started:.0f} s)", file=sys.stderr, flush=True)
    pairs = []

    def filled() -> Iterator[np.ndarray]:
        for number, start in enumerate(range(0, n, BLOCK)):
            x, planted = block(number, min(BLOCK, n - start), centres)
            pairs.append(start + planted)
            yield x

    candidates.add_blocks(index, reported(filled(), "added", n))
    built, generated = time.perf_counter(), generated + [GENERATING[0] - sum(generated)]
    table = np.concatenate(list(candidates.search_blocks(index, reported(blocks(n, centres), "searched", n), K)))
    searched, generated = time.perf_counter(), generated + [GENERATING[0] - sum(generated)]
    per_photo = candidates.index_bytes(index) / index.ntotal
    planted_pairs = np.concatenate(pairs)
    queries = np.sort(rng.choice(planted_pairs[:, 1], SAMPLE_QUERIES, replace=False))  # copies: each has a partner
    partner = dict(zip(planted_pairs[:, 1].tolist(), planted_pairs[:, 0].tolist()))
    exact = exact_top_k(pick(queries, n, centres), queries, n, centres)
    found_exact = [partner[q] in set(exact[i].tolist()) for i, q in enumerate(queries)]
    found_index = [partner[q] in set(table[q].tolist()) for q in queries]
    both = sum(e and f for e, f in zip(found_exact, found_index))
    recall = both / max(1, sum(found_exact))
    label = f"N={n:,}"
    row("scale", f"{label} index {index.__class__.__name__}, nprobe {candidates.NPROBE}", f"{per_photo:.0f} B/photo")
    row("scale", f"{label} IVF cells / training vectors", f"{candidates.cells_for(n):,} / {len(train_rows):,}")
    seconds = f"{trained - started:.0f} / {built - trained:.0f} / {searched - built:.0f} s"
    row("scale", f"{label} train / add / search (k={K}), wall", seconds)
    spent = " / ".join(f"{g:.0f}" for g in generated)
    row("scale", f"{label}   of which generating the synthetic vectors", f"{spent} s")
    row("scale", f"{label} planted partners exact finds (of {SAMPLE_QUERIES})", f"{sum(found_exact)}")
    row("scale", f"{label} duplicate-pair recall against exact", f"{recall:.4f}")
    row("scale", f"{label} peak RSS of the process (index, training sample, tables)", f"{peak_rss_gb():.2f} GB")
    target(f"scale_n{n}_duplicate_pair_recall", f"{recall:.4f}", ">= 0.99", recall >= 0.99)
    target(f"scale_n{n}_index_bytes_per_photo", f"{per_photo:.0f} B", "<= 300 B", per_photo <= 300)


def input_dependent(net):
    """``net`` with a trunk that tells photos apart (random MobileNetV3-Large weights give nearly
    the same features for every photo, which ties every neighbour search): convs re-initialised
    (kaiming, fan-in), BatchNorm statistics re-estimated on random images. Same work per photo."""
    from torch import nn

    torch.manual_seed(0)
    for module in net.trunk.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the batches below
    net.trunk.train()
    with torch.no_grad():
        for _ in range(2):
            net.trunk(torch.randn(8, 3, 128, 128))
    return net.eval()


def part_of(embedded, folder):
    """The photos of ``embedded`` (no byte copies among them) in ``folder``, as embedding that
    folder alone gives them: the same trunk on the same files."""
    from samespace import dedup

    assert not embedded.copies, "generated photos are all different"
    inside = [i for i, path in enumerate(embedded.paths) if path.parent == folder]
    paths = [embedded.paths[i] for i in inside]
    names = [path.relative_to(folder).as_posix() for path in paths]
    rows = torch.as_tensor(inside)  # no copies: scored rows are the photos in listing order
    return dedup.Embedded(
        folder, paths, names, list(range(len(paths))), {}, embedded.first[rows], embedded.second[rows], [],
        len(paths), embedded.engine,
    )  # fmt: skip


def scored_with(result, root, new) -> dict[tuple[str, str], float]:
    """Scores of the pairs involving a photo in ``new``, by path (``root`` / name; catalogue
    photos are named by their absolute path)."""
    full = [str(root / name) for name in result.names]
    pairs = {tuple(sorted((full[a], full[b]))): s for a, b, s in zip(result.first, result.second, result.scores)}
    return {pair: s for pair, s in pairs.items() if any(name.startswith(f"{new}/") for name in pair)}


class RssPeak:
    """The process's resident set at most, sampled every 2 ms from /proc while the block runs,
    beyond what it was before (``ru_maxrss`` would keep an earlier stage's peak)."""

    def __enter__(self) -> RssPeak:
        import gc
        import threading

        gc.collect()
        self.before = self.peak = self.now()
        self.running = True
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize()

    def watch(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.now())
            time.sleep(0.002)

    @property
    def grown(self) -> int:
        return self.peak - self.before


QUERY_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, ".")
import torch
from benchmarks.scale import RssPeak
from samespace import catalogue, dedup
from samespace.network import SiameseNet
folder, net_file, new_file = sys.argv[1:4]
net = SiameseNet(pretrained=False)
net.load_state_dict(torch.load(net_file))
new = torch.load(new_file)
paths = [Path(p) for p in new["paths"]]
n = len(paths)
first, second = new["first"], new["second"]
embedded = dedup.Embedded(paths[0].parent, paths, new["names"], list(range(n)), {}, first, second, [], n, "")
with RssPeak() as peak:
    catalogue.against(catalogue.load(Path(folder)), embedded, net.eval().head)
print("grown-bytes", peak.grown, file=sys.stderr)
"""


def query_memory(kept, net, new, sizes: tuple[int, int]) -> dict[int, int]:
    """Peak RSS growth (bytes) of loading a catalogue and querying ``new`` (embedded, without copies)
    against it, for the catalogue ``kept`` cut to each of ``sizes`` photos (its first rows, saved
    anew): the slope between the two is what the query holds per catalogue photo. Each query runs
    in a fresh process that never ran the trunk, so memory an earlier stage freed cannot hide it."""
    from samespace import catalogue, dedup

    whole = catalogue.load(kept)
    torch.save(net.state_dict(), kept.parent / "net.pt")
    paths, names = [str(new.paths[i]) for i in new.scored], [new.names[i] for i in new.scored]  # copies left out
    fresh = {"paths": paths, "names": names, "first": new.first, "second": new.second}
    torch.save(fresh, kept.parent / "new.pt")
    grown = {}
    for n in sizes:
        folder = kept.parent / f"cut{n}"
        paths = [Path(row.path) for row in whole.rows[:n]]
        first, second = (torch.from_numpy(side[:n].copy()) for side in (whole.first, whole.second))
        cut = dedup.Embedded(
            paths[0].parent, paths, [p.name for p in paths], list(range(n)), {}, first, second, [], n, ""
        )
        catalogue.save(folder, net, cut)
        command = [
            sys.executable,
            "-c",
            QUERY_SCRIPT,
            str(folder),
            str(kept.parent / "net.pt"),
            str(kept.parent / "new.pt"),
        ]
        grown[n] = marked_run(command, "grown-bytes", f"the query of {folder}")[0]
    return grown


def bench_against(quick: bool, row: Callable[..., None], target: Callable[..., None], write_photos) -> None:
    """``--against`` with 100 new photos against a catalogue of 10,000 (``--quick``: 1,000), against
    re-running dedup on the union, both with their default search (k = 20 nearest, exact: the
    union is above ``dedup.ALL_PAIRS_LIMIT``), engine and device: the real MobileNetV3-Large trunk
    (input-dependent random weights: speed only; ``auto``: onnxruntime on the CPU) on generated
    640x480 JPEGs. The catalogue is built from the union run's embeddings of its photos (a build
    of its own would embed them again for nothing). The pairs involving new photos must be the
    same set, and their scores agree. Afterwards, untimed: the query's memory (``query_memory``) at a
    fifth of the catalogue and at all of it."""
    import shutil
    import tempfile

    from samespace import catalogue, dedup
    from samespace.network import SiameseNet

    size, new = (1_000, 100) if quick else (10_000, 100)
    cpu = torch.device("cpu")
    net = input_dependent(SiameseNet(pretrained=False))
    with tempfile.TemporaryDirectory(prefix="samespace-against-") as tmp:
        union, kept = Path(tmp).resolve() / "union", Path(tmp).resolve() / "catalogue"
        write_photos(union / "kept", size + new)
        (union / "new").mkdir()
        for path in sorted((union / "kept").iterdir())[size:]:  # rooms spill over: duplicates across
            shutil.move(path, union / "new" / path.name)
        (Path(tmp) / "warm").mkdir()  # the engine's one-off ONNX export, outside both timings
        shutil.copy(sorted((union / "new").iterdir())[0], Path(tmp) / "warm")
        dedup.embed_photos(net, Path(tmp) / "warm", cpu, engine_name="auto")

        start = time.perf_counter()
        embedded = dedup.embed_photos(net, union, cpu, recursive=True, engine_name="auto")
        whole = dedup.dedup_embedded(embedded, net.head)
        middle = time.perf_counter()
        catalogue.save(kept, net, part_of(embedded, union / "kept"))
        restart = time.perf_counter()
        loaded = catalogue.load(kept)
        query, addition = catalogue.against(
            loaded, dedup.embed_photos(net, union / "new", cpu, engine_name="auto"), net.head
        )
        end = time.perf_counter()
        catalogue.append(kept, net, addition, loaded)
        added = time.perf_counter()
        sizes = (size // 5, size)
        grown = query_memory(kept, net, dedup.embed_photos(net, union / "new", cpu, engine_name="auto"), sizes)
    ratio = (middle - start) / (end - restart)
    expected, found = scored_with(whole, union, union / "new"), scored_with(query, union / "new", union / "new")
    same = bool(expected) and set(found) == set(expected)
    gap = max((abs(expected[pair] - s) for pair, s in found.items() if pair in expected), default=float("nan"))
    label = f"{new} new against {size:,}"
    row("scale", f"--against, {label}: engine; search of each", f"{embedded.engine}; {whole.search} / {query.search}")
    row(
        "scale",
        f"--against, {label}: time vs dedup of the union",
        f"{end - restart:.1f} s vs {middle - start:.1f} s: {ratio:.0f}x",
    )
    row(
        "scale",
        f"--against, {label}: same pairs with new photos ({len(expected):,}); largest score gap",
        f"{same} ({len(found):,} found); {gap:.1e}",
    )
    row("scale", f"--against, {label}: --add afterwards (segment + nearest similarities)", f"{added - end:.1f} s")
    slope = (grown[sizes[1]] - grown[sizes[0]]) / (sizes[1] - sizes[0])
    row(
        "scale",
        f"--against, {new} new: memory of load + query at {sizes[0]:,} / {sizes[1]:,} catalogue photos; per photo",
        f"+{grown[sizes[0]] / 2**20:.0f} / +{grown[sizes[1]] / 2**20:.0f} MiB; {slope / 1e3:.1f} KB",
    )
    measured = f"{ratio:.0f}x, same pairs {same}"
    if quick:
        target("against_10000_speedup", f"{measured} at {size:,} (--quick)", ">= 50x and same pairs at 10,000", None)
    else:
        target("against_10000_speedup", measured, ">= 50x and same pairs", ratio >= 50 and same)


MEMORY_SIZES = {True: (1_000, 5_000), False: (5_000, 30_000)}  # photos: --quick, full

# The peak is the process's own high-water mark (VmHWM, of the memory map exec made), not
# ru_maxrss: Linux carries the parent's resident size at the fork into the child's ru_maxrss, so
# a child of a large benchmark process would report the parent's size (0 KB a photo, seen once).
PEAK_SCRIPT = """
import runpy, sys
sys.argv = sys.argv[1:]
sys.path.insert(0, ".")
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print("peak-rss-bytes", peak * 1024, file=sys.stderr)
"""


def random_checkpoint(folder) -> None:
    """A SameSpace checkpoint folder with seed-0 random weights (``pretrained: false``): memory and
    speed do not depend on the weights (its scores are meaningless, so nearly every candidate
    pair is a duplicate: the outputs are as large as they can be)."""
    import json

    from samespace.network import SiameseNet

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"models_state_dict": [SiameseNet(pretrained=False).state_dict()]}, folder / "state_dict.pth")
    hparams = dict(global_batch_size=64, epochs=1, learning_rate=1e-3, alpha=0.7, pretrained=False)
    hparams.update(dropout1=0.3, dropout2=0.5, dropout3=0.4)
    meta = {"trial_cls_spec": "model_def:SiameseTrial", "hparams": hparams, "experiment_config": {}}
    (folder / "load_data.json").write_text(json.dumps(meta))


def marked_run(command: list[str], marker: str, what: str, env: dict | None = None) -> tuple[int, float]:
    """Run a measuring child process from the project folder: the number it prints after
    ``marker`` on stderr, and its seconds; a failure is one line naming ``what`` failed."""
    import subprocess

    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1])
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed: {done.stderr.strip()[-300:]}")
    return int(done.stderr.split(marker)[-1].split()[0]), seconds


def dedup_peak(checkpoint, folder, output, env: dict) -> tuple[int, float]:
    """Peak RSS (bytes) and seconds of ``python model_inference.py dedup`` in a process of its own."""
    command = [sys.executable, "-c", PEAK_SCRIPT, "model_inference.py", "dedup", str(checkpoint), str(folder)]
    return marked_run(command + ["--output", str(output)], "peak-rss-bytes", f"dedup of {folder}", env)


def bench_memory(quick: bool, row: Callable[..., None], target: Callable[..., None], write_photos) -> None:
    """Local dedup's memory per photo beyond a fixed base: peak RSS of the real command (random
    checkpoint, MobileNetV3-Large trunk through the default engine) on 5,000 and 30,000 generated
    photos (``--quick``: 1,000 and 5,000), (peak_big - peak_small) / (big - small). The photos are
    320x240 JPEGs: decoding is streamed a chunk at a time, so their size changes the base, not the
    slope. The small folder is hard links to the big one's first photos; a 20-photo run first
    fills the engine's export cache, so neither measured run pays for the export."""
    import os
    import tempfile

    small, big = MEMORY_SIZES[quick]
    with tempfile.TemporaryDirectory(prefix="samespace-memory-") as tmp:
        root = Path(tmp)
        env = dict(os.environ, XDG_CACHE_HOME=str(root / "cache"))
        random_checkpoint(root / "checkpoint")
        write_photos(root / f"photos{big}", big, size=(320, 240))
        photos = sorted((root / f"photos{big}").iterdir())
        for n in (20, small):
            (root / f"photos{n}").mkdir()
            for path in photos[:n]:
                os.link(path, root / f"photos{n}" / path.name)
        dedup_peak(root / "checkpoint", root / "photos20", root / "out20", env)  # the engine's export
        peaks = {n: dedup_peak(root / "checkpoint", root / f"photos{n}", root / f"out{n}", env) for n in (small, big)}
    for n, (peak, seconds) in peaks.items():
        row("scale", f"dedup of {n:,} photos (320x240): peak RSS, time", f"{peak / 2**30:.2f} GiB, {seconds:.0f} s")
    per_photo = (peaks[big][0] - peaks[small][0]) / (big - small)
    base = peaks[small][0] - per_photo * small
    measured = f"{per_photo / 1e3:.1f} KB"
    row("scale", f"dedup memory per photo ({small:,} -> {big:,}); fixed base", f"{measured}; {base / 2**30:.2f} GiB")
    if quick:
        quick_line = f"{measured} ({small:,} -> {big:,}, --quick)"
        target("dedup_memory_per_photo", quick_line, "<= 12 KB at 5,000 -> 30,000", None)
    else:
        target("dedup_memory_per_photo", measured, "<= 12 KB", per_photo <= 12_000)
