"""Candidate pairs for dedup: each photo's k nearest neighbours on the tower embeddings.

Scoring all N^2 pairs with the head grows quadratically (10,000 photos: 10^8 head evaluations).
Duplicates sit close together in embedding space, so dedup retrieves each photo's k nearest
neighbours by cosine similarity and scores only those pairs with the head.

Search method: exact blockwise cosine top-k in torch up to ``EXACT_LIMIT`` photos. It is exact,
runs on the GPU when there is one, and at 50,000 photos costs one 50k x 50k x 2560 matrix product
(seconds on a GPU, a couple of minutes on two CPU cores). Beyond that (``auto``), or with
``--index ivfpq``, a compressed faiss index, ``PCA192,IVF{K},SQ8`` on inner product: each photo
costs 192 bytes of 8-bit code plus an 8-byte id (200 bytes) instead of 10 KB of float32 (HNSW,
``--index faiss``, keeps the float32 vectors and its graph), plus a fixed part (the PCA projection,
2560 x 192 floats = 2 MB, the training-only full PCA matrix dropped; K x 192 float centroids)
that divides away as the folder grows. (PQ64 codes would be 72 bytes, but faiss-cpu 1.15.1's PQ
training did not finish in minutes on this shared machine, so SQ8 it is.)
``index_bytes(index) / index.ntotal`` is the serialised size per photo. ``NPROBE`` cells are
searched per query: recall of planted duplicate pairs against exact search is at least 0.99 on
128-d look-alike vectors (tests/test_candidates.py) and on 100,000 and 1,000,000 synthetic 2,560-d
ones (``benchmarks/run.py [--quick] --sections scale-index``; 205 B a photo at 1,000,000). The index
is trained on a seeded sample, filled and searched blockwise (``compressed_index``, ``add_blocks``,
``search_blocks``), so a caller never needs all float32 vectors in memory at once. Past one
machine, workers fill ``shard``s (copies of one trained index, global ids) and ``merge_shards``
joins them on disk with faiss's ``merge_ondisk``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samespace import console

logger = logging.getLogger("samespace.candidates")

EXACT_LIMIT = 50_000
METHODS = ("auto", "exact", "faiss", "ivfpq")
NPROBE = 16  # IVF cells searched per query: duplicate-pair recall >= 0.99 (tests at 128-d, benchmarks at 2,560-d)
COMPRESSED_MIN = 5_000  # fewer photos than this train a poor coarse quantizer: exact search instead
TRAIN_PER_CELL = 40  # faiss warns below 39 training vectors per IVF cell


def search_vectors(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Unit vectors from both towers' embeddings (each normalised, so neither dominates)."""
    joined = torch.cat(
        [torch.nn.functional.normalize(first, dim=1), torch.nn.functional.normalize(second, dim=1)], dim=1
    )
    return torch.nn.functional.normalize(joined, dim=1)


@torch.inference_mode()
def knn_exact(vectors: torch.Tensor, k: int, block: int = 2048) -> np.ndarray:
    """Indices (N, k) of each row's k most cosine-similar other rows, exactly."""
    n = len(vectors)
    k = min(k, n - 1)
    out = np.empty((n, k), np.int64)
    for start in console.progress(range(0, n, block), desc="nearest neighbours"):
        stop = min(n, start + block)
        similarity = vectors[start:stop] @ vectors.T
        rows = torch.arange(stop - start, device=similarity.device)
        similarity[rows, rows + start] = -torch.inf  # never one's own neighbour
        out[start:stop] = similarity.topk(k, dim=1).indices.cpu().numpy()
    return out


@torch.inference_mode()
def knn_exact_towers(first: torch.Tensor, second: torch.Tensor, k: int, block: int = 2048) -> np.ndarray:
    """``knn_exact`` of ``search_vectors(first, second)`` without that (N, 2560) copy: each block
    of rows and of columns is normalised as it is needed (``search_vectors`` is row by row, so the
    values are the same), and each row's running top k is merged tile by tile, so memory holds a
    block x block similarity tile beside the embeddings, whatever N."""
    n = len(first)
    k = min(k, n - 1)
    out = np.empty((n, k), np.int64)
    for start in console.progress(range(0, n, block), desc="nearest neighbours"):
        stop = min(n, start + block)
        queries = search_vectors(first[start:stop], second[start:stop])
        best = torch.full((stop - start, k), -torch.inf, device=queries.device)
        found = torch.zeros((stop - start, k), dtype=torch.int64, device=queries.device)
        for column in range(0, n, block):
            end = min(n, column + block)
            similarity = queries @ search_vectors(first[column:end], second[column:end]).T
            if column < stop and start < end:  # never one's own neighbour
                rows = torch.arange(max(start, column), min(stop, end), device=similarity.device)
                similarity[rows - start, rows - column] = -torch.inf
            top = similarity.topk(min(k, end - column), dim=1)
            merged = torch.cat([best, top.values], dim=1).topk(k, dim=1)
            found = torch.cat([found, top.indices + column], dim=1).gather(1, merged.indices)
            best = merged.values
        out[start:stop] = found.cpu().numpy()
    return out


def knn_faiss(vectors: torch.Tensor, k: int, m: int = 32, ef_search: int = 128) -> np.ndarray:
    """Approximate neighbours from a faiss HNSW index on inner product (= cosine for unit vectors)."""
    import faiss

    array = np.ascontiguousarray(vectors.detach().float().cpu().numpy())
    index = faiss.IndexHNSWFlat(array.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = max(ef_search, 2 * m)
    index.hnsw.efSearch = max(ef_search, k + 1)
    index.add(array)
    _, found = index.search(array, min(k + 1, len(array)))
    return without_self(found, 0, min(k, len(array) - 1))


def without_self(found: np.ndarray, start: int, k: int) -> np.ndarray:
    """k neighbours per row of a faiss result for rows start.., own row and -1 (no hit) dropped."""
    out = np.empty((len(found), k), np.int64)
    for offset, hits in enumerate(found):
        row = start + offset
        hits = hits[(hits != row) & (hits >= 0)]
        out[offset] = np.concatenate([hits, np.full(k, row)])[:k]  # rare short lists: padded with self
    return out


def cells_for(n: int) -> int:
    """IVF cells for n photos: a power of two near 4 sqrt(n) (faiss's guidance), at least 64."""
    return max(64, 1 << int(round(np.log2(4 * np.sqrt(max(n, 1))))))


def compressed_index(dim: int, n: int, sample: np.ndarray, nprobe: int = NPROBE):
    """A trained, empty ``PCA192,IVF{K},SQ8`` inner-product index for about n vectors of dim."""
    import faiss

    reduced = min(192, dim)
    pca = f"PCA{reduced}," if dim > reduced else ""
    index = faiss.index_factory(dim, f"{pca}IVF{cells_for(n)},SQ8", faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    faiss.extract_index_ivf(index).nprobe = nprobe
    if pca:  # the trained projection is A (192 x dim); the full dim x dim PCA matrix (26 MB at
        # 2,560-d) and eigenvalues serve only training, and would cost ~260 B a photo at 100,000
        transform = faiss.downcast_VectorTransform(index.chain.at(0))
        transform.PCAMat.clear()
        transform.eigenvalues.clear()
    return index


def training_size(n: int) -> int:
    """Vectors to train on: TRAIN_PER_CELL per IVF cell (at least 10,000), at most n."""
    return min(n, max(TRAIN_PER_CELL * cells_for(n), 10_000))


def add_blocks(index, blocks: Iterable[np.ndarray]) -> None:
    """Add float32 blocks in order (ids are running row numbers)."""
    for block in blocks:
        index.add(np.ascontiguousarray(block, dtype=np.float32))


def search_blocks(index, blocks: Iterable[np.ndarray], k: int) -> Iterator[np.ndarray]:
    """Each block's neighbour table (rows numbered across blocks, own row dropped)."""
    start = 0
    for block in blocks:
        _, found = index.search(np.ascontiguousarray(block, dtype=np.float32), k + 1)
        yield without_self(found, start, k)
        start += len(block)


def index_bytes(index) -> int:
    """Serialised size of a faiss index in bytes (what it costs on disk and, near enough, in memory)."""
    import faiss

    return int(faiss.serialize_index(index).size)


def shard(trained, blocks: Iterable[np.ndarray], first_id: int):
    """A worker's shard: a copy of the one trained, empty index filled with its blocks under the
    global ids first_id, first_id + 1, ... (the rows of the worker's vectors in the whole list)."""
    import faiss

    index = faiss.clone_index(trained)
    start = first_id
    for block in blocks:
        index.add_with_ids(np.ascontiguousarray(block, dtype=np.float32), np.arange(start, start + len(block)))
        start += len(block)
    return index


def trained_parts(index) -> list[np.ndarray]:
    """What training fixed in a compressed index: its projection, coarse centroids and SQ ranges."""
    import faiss

    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    centroids = faiss.downcast_index(ivf.quantizer).reconstruct_n(0, ivf.nlist)
    parts = [np.array([ivf.nlist, ivf.code_size, ivf.metric_type]), centroids]
    if hasattr(ivf, "sq"):
        parts.append(faiss.vector_to_array(ivf.sq.trained))
    steps = index.chain.size() if isinstance(index, faiss.IndexPreTransform) else 0
    for step in (faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(steps)):
        parts += [faiss.vector_to_array(step.A), faiss.vector_to_array(step.b)]
    return parts


def shard_ids(index) -> np.ndarray:
    """Every id an IVF index holds (its inverted lists' ids, 8 bytes a vector), read without its codes."""
    import faiss

    lists = faiss.extract_index_ivf(index).invlists
    out = [np.zeros(0, np.int64)]
    for cell in range(lists.nlist):
        size = lists.list_size(cell)
        if size:
            ids = lists.get_ids(cell)
            out.append(faiss.rev_swig_ptr(ids, size).copy())
            lists.release_ids(cell, ids)
    return np.concatenate(out)


def check_disjoint(shard_ids_by_path: dict[str, np.ndarray]) -> None:
    """Refuse, in one line, shards that hold one id twice: merged, a photo would be found twice and
    another photo's id lost (ids are rows of the whole photo list)."""
    ids = np.concatenate(list(shard_ids_by_path.values()))
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) == len(ids):
        return
    twice = int(unique[counts > 1][0])
    holders = [path for path, held in shard_ids_by_path.items() if np.isin(twice, held)]
    where = f"shards {holders[0]} and {holders[1]}" if len(holders) > 1 else f"shard {holders[0]}"
    raise ValueError(
        f"{where} hold id {twice} twice ({int((counts > 1).sum())} ids in all): fill each shard from its own rows"
    )


def merge_shards(trained, shard_paths: list[str], data_path: str):
    """One index over the shards written by ``faiss.write_index`` (each from ``shard`` on a copy of
    ``trained``): their inverted lists are merged into the on-disk file ``data_path`` by faiss's
    ``merge_ondisk`` (shards read memory-mapped), and it searches as one index filled with every
    shard's vectors. A shard trained apart is refused: its cells would mean other things; so are
    shards that hold one id twice (``check_disjoint``). No shards, or a ``data_path`` faiss cannot
    write, is one line (``ValueError``, ``OSError``), a partly written file removed."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    if trained.ntotal:
        raise ValueError(f"the trained index to merge into holds {trained.ntotal} vectors: give the empty trained one")
    if not shard_paths:
        raise ValueError("no shards to merge: give at least one shard file")
    expected = trained_parts(trained)
    held = {}
    for path in shard_paths:
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
            parts = trained_parts(index)
        except RuntimeError as error:
            raise ValueError(f"shard {path} is not a readable faiss index ({str(error).splitlines()[0]})") from None
        if len(parts) != len(expected) or any(not np.array_equal(a, b) for a, b in zip(parts, expected)):
            raise ValueError(f"shard {path} was not filled from this trained index: fill each from a copy of one")
        held[str(path)] = shard_ids(index)
    check_disjoint(held)
    merged = faiss.clone_index(trained)
    try:
        merge_ondisk(merged, [str(path) for path in shard_paths], str(data_path))
    except RuntimeError as error:  # faiss's C++ message: the failing line is its last
        if Path(data_path).is_file():
            Path(data_path).unlink()  # whole or absent
        why = (str(error).strip().splitlines() or ["faiss failed"])[-1].split(" failed: ")[-1]
        raise OSError(f"cannot write the merged inverted lists to {data_path}: {why}") from None
    return merged


def knn_ivfpq(vectors: torch.Tensor, k: int, nprobe: int = NPROBE, block: int = 20_000, seed: int = 0) -> np.ndarray:
    """Approximate neighbours from a compressed IVF-SQ8 index trained on a seeded sample."""
    array = np.ascontiguousarray(vectors.detach().float().cpu().numpy())
    return knn_ivfpq_of(len(array), array.shape[1], lambda rows: array[rows], k, nprobe, block, seed)


def knn_ivfpq_of(
    n: int,
    dim: int,
    rows_of: Callable[[Any], np.ndarray],
    k: int,
    nprobe: int = NPROBE,
    block: int = 20_000,
    seed: int = 0,
) -> np.ndarray:
    """``knn_ivfpq`` of n vectors that ``rows_of(rows)`` gives a slice or sorted index array at a
    time, so that they need never all be held at once."""
    k = min(k, n - 1)
    sample = rows_of(np.sort(np.random.default_rng(seed).choice(n, training_size(n), replace=False)))
    index = compressed_index(dim, n, sample, nprobe)
    del sample
    starts = range(0, n, block)
    add_blocks(index, (rows_of(slice(start, start + block)) for start in starts))
    blocks = (rows_of(slice(start, start + block)) for start in console.progress(starts, desc="nearest neighbours"))
    return np.concatenate(list(search_blocks(index, blocks, k)))


def nearest_neighbours(vectors: torch.Tensor, k: int, method: str = "auto") -> np.ndarray:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    if len(vectors) < 2 or k < 1:
        return np.empty((len(vectors), 0), np.int64)
    if method == "faiss":
        return knn_faiss(vectors, k)
    if method == "ivfpq" or (method == "auto" and len(vectors) > EXACT_LIMIT):
        if len(vectors) >= COMPRESSED_MIN:
            return knn_ivfpq(vectors, k)
        logger.info("ivfpq needs at least %d photos to train; exact search for %d", COMPRESSED_MIN, len(vectors))
    return knn_exact(vectors, k)


def tower_neighbours(first: torch.Tensor, second: torch.Tensor, k: int, method: str = "auto") -> np.ndarray:
    """``nearest_neighbours(search_vectors(first, second), k, method)`` from the towers'
    embeddings, the unit vectors made block by block (exact, ivfpq), so that their (N, 2560) copy
    is never held (HNSW, ``faiss``, keeps its own copy of them anyway)."""
    n = len(first)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    if n < 2 or k < 1:
        return np.empty((n, 0), np.int64)
    if method == "faiss":
        return knn_faiss(search_vectors(first, second), k)
    if method == "ivfpq" or (method == "auto" and n > EXACT_LIMIT):
        if n >= COMPRESSED_MIN:

            def rows_of(rows: Any) -> np.ndarray:
                return search_vectors(first[rows], second[rows]).detach().float().cpu().numpy()

            return knn_ivfpq_of(n, first.shape[1] + second.shape[1], rows_of, k)
        logger.info("ivfpq needs at least %d photos to train; exact search for %d", COMPRESSED_MIN, n)
    return knn_exact_towers(first, second, k)


def candidate_pairs(neighbours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unordered pairs (a < b) from a neighbour table, each once, self-pairs dropped."""
    rows = np.repeat(np.arange(len(neighbours)), neighbours.shape[1])
    cols = neighbours.reshape(-1)
    a, b = np.minimum(rows, cols), np.maximum(rows, cols)
    keep = a != b
    flat = np.unique(a[keep] * len(neighbours) + b[keep])
    return flat // len(neighbours), flat % len(neighbours)
