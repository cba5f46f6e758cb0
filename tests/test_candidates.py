"""candidates.py: neighbour search against brute force, and the candidate pair set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samespace import candidates


@pytest.fixture()
def vectors():
    torch.manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(300, 32), dim=1)


def test_exact_search_equals_brute_force(vectors):
    found = candidates.knn_exact(vectors, 5, block=64)
    similarity = vectors @ vectors.T
    similarity.fill_diagonal_(-np.inf)
    expected = similarity.topk(5, dim=1).indices.numpy()
    assert np.array_equal(np.sort(found, axis=1), np.sort(expected, axis=1))
    assert not np.any(found == np.arange(300)[:, None])


def test_identical_vectors_still_find_each_other():
    vectors = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0.6, 0.8]]), dim=1)
    found = candidates.knn_exact(vectors, 1)
    assert found[0, 0] == 1 and found[1, 0] == 0


def test_faiss_finds_nearly_all_exact_neighbours(vectors):
    exact = candidates.knn_exact(vectors, 10)
    approximate = candidates.knn_faiss(vectors, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approximate)])
    assert overlap > 0.95 and not np.any(approximate == np.arange(300)[:, None])


def test_candidate_pairs_are_unique_and_unordered():
    table = np.array([[1, 2], [0, 2], [0, 1], [3, 0]])  # row 3 lists itself: dropped
    a, b = candidates.candidate_pairs(table)
    assert list(zip(a.tolist(), b.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2)]


def test_small_inputs_and_bad_methods(vectors):
    assert candidates.nearest_neighbours(vectors[:1], 5).shape == (1, 0)
    assert candidates.nearest_neighbours(vectors[:4], 10).shape == (4, 3)  # k capped at n - 1
    with pytest.raises(ValueError):
        candidates.nearest_neighbours(vectors, 3, method="annoy")


def test_search_vectors_are_unit_length():
    out = candidates.search_vectors(torch.randn(5, 8) * 10, torch.randn(5, 8))
    assert torch.allclose(out.norm(dim=1), torch.ones(5), rtol=0, atol=16 * 2**-24)  # float32, 8-term sums


def planted_duplicates(n: int = 10_000, dim: int = 128, share: float = 0.05, seed: int = 0):
    """Look-alike unit vectors (200 themes) with near-copies of some rows: (vectors, planted pairs)."""
    rng = np.random.default_rng(seed)
    themes = rng.standard_normal((200, dim)).astype(np.float32)
    x = themes[rng.integers(0, 200, n)] + rng.standard_normal((n, dim)).astype(np.float32)
    copies = int(n * share)
    sources = rng.choice(n - copies, copies, replace=False)
    x[n - copies :] = x[sources] + 0.25 * rng.standard_normal((copies, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return torch.from_numpy(x), set(zip(sources.tolist(), range(n - copies, n)))


def found_share(planted: set, table: np.ndarray) -> tuple[float, int]:
    """Share of the planted pairs that a neighbour table's candidate pairs contain."""
    pairs = set(zip(*(side.tolist() for side in candidates.candidate_pairs(table))))
    return len(planted & pairs) / len(planted), len(planted)


def test_ivfpq_recalls_planted_duplicates_like_exact_search_in_few_bytes():
    vectors, planted = planted_duplicates()
    exact_share, _ = found_share(planted, candidates.knn_exact(vectors, 10))
    table = candidates.nearest_neighbours(vectors, 10, method="ivfpq")
    approximate_share, _ = found_share(planted, table)
    assert exact_share > 0.99  # the planted copies are real nearest neighbours
    assert approximate_share >= 0.99 * exact_share
    assert not np.any(table == np.arange(len(vectors))[:, None])
    assert np.array_equal(table, candidates.nearest_neighbours(vectors, 10, method="ivfpq"))  # seeded


def test_ivfpq_index_costs_at_most_300_bytes_a_photo():
    vectors, _ = planted_duplicates()
    array = vectors.numpy()
    index = candidates.compressed_index(array.shape[1], len(array), array)
    candidates.add_blocks(index, [array[:4000], array[4000:]])
    assert index.ntotal == len(array)
    assert candidates.index_bytes(index) / index.ntotal <= 300


def test_a_projected_index_keeps_only_its_projection_and_answers_the_same_after_a_round_trip():
    """Above 192-d the index holds codes, the 192 x dim projection and the centroids, not the
    dim x dim PCA matrix of training (at the towers' 2,560-d: 26 MB, ~260 B a photo at 100,000
    photos). 640-d here: the same code path, and training takes seconds, not minutes."""
    import faiss

    dim = 640
    vectors, _ = planted_duplicates(n=6_000, dim=dim)
    array = vectors.numpy()
    index = candidates.compressed_index(dim, len(array), array)
    candidates.add_blocks(index, [array])
    cells = faiss.extract_index_ivf(index).nlist
    fixed = candidates.index_bytes(index) - 200 * len(array)  # 192 B of code and an 8 B id a photo
    assert fixed <= 4 * (192 * dim + cells * 192 + dim) + 20_000 < 4 * dim * dim  # projection, centroids, mean
    back = faiss.deserialize_index(faiss.serialize_index(index))
    assert np.array_equal(back.search(array[:50], 5)[1], index.search(array[:50], 5)[1])


def test_ivfpq_below_its_training_minimum_searches_exactly(vectors):
    assert np.array_equal(candidates.nearest_neighbours(vectors, 5, method="ivfpq"), candidates.knn_exact(vectors, 5))


def test_auto_searches_the_compressed_index_above_the_exact_limit(vectors, monkeypatch):
    calls = []
    monkeypatch.setattr(candidates, "EXACT_LIMIT", len(vectors) - 1)
    monkeypatch.setattr(candidates, "COMPRESSED_MIN", 1)
    monkeypatch.setattr(candidates, "knn_ivfpq", lambda v, k: calls.append(len(v)) or candidates.knn_exact(v, k))
    candidates.nearest_neighbours(vectors, 5)
    assert calls == [len(vectors)]
    monkeypatch.setattr(candidates, "EXACT_LIMIT", len(vectors))
    candidates.nearest_neighbours(vectors, 5)
    assert calls == [len(vectors)]  # at the limit: exact


def test_merging_no_shards_or_into_an_unwritable_place_is_refused_in_one_line(tmp_path):
    import faiss

    vectors, _ = planted_duplicates(n=6_000, dim=256)
    array = vectors.numpy()
    trained = candidates.compressed_index(256, len(array), array)
    with pytest.raises(ValueError, match="no shards to merge") as refused:
        candidates.merge_shards(trained, [], tmp_path / "m.ivfdata")
    assert "\n" not in str(refused.value) and not (tmp_path / "m.ivfdata").exists()
    faiss.write_index(candidates.shard(trained, [array[:3_000]], 0), str(tmp_path / "a.index"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "m.ivfdata").mkdir()  # faiss cannot open a folder to write its lists
    with pytest.raises(OSError, match="cannot write the merged inverted lists to .*m.ivfdata") as refused:
        candidates.merge_shards(trained, [str(tmp_path / "a.index")], tmp_path / "full" / "m.ivfdata")
    assert "\n" not in str(refused.value)


def tower_embeddings(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Both towers' embeddings of unequal norms (each tower normalised on its own by search_vectors)."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.rand(n, 1, generator=generator) * 5 + 0.1
    return torch.randn(n, 1280, generator=generator) * scale, torch.randn(n, 1280, generator=generator) * 2


def test_neighbours_from_the_towers_tile_by_tile_equal_those_of_the_joined_unit_vectors():
    """Tiles of 64 rows and columns (blocks that straddle the own-row diagonal, a last short tile)
    give the neighbours of search_vectors' whole (N, 2560) copy. Random embeddings: no two
    similarities within float32 rounding of each other at the k-th place, so the sets are equal."""
    first, second = tower_embeddings(300)
    expected = candidates.knn_exact(candidates.search_vectors(first, second), 7)
    found = candidates.knn_exact_towers(first, second, 7, block=64)
    assert np.array_equal(np.sort(found, axis=1), np.sort(expected, axis=1))
    assert np.array_equal(np.sort(candidates.tower_neighbours(first, second, 7), 1), np.sort(expected, 1))
    assert candidates.knn_exact_towers(first[:3], second[:3], 7).shape == (3, 2)
    assert candidates.tower_neighbours(first[:1], second[:1], 7).shape == (1, 0)


def test_tower_neighbours_search_the_compressed_index_from_blocks_like_the_whole_copy(monkeypatch):
    vectors, planted = planted_duplicates(n=6_000, dim=640)
    first, second = vectors[:, :320] * 3, vectors[:, 320:]  # search_vectors renormalises each half
    joined = candidates.search_vectors(first, second)
    monkeypatch.setattr(candidates, "COMPRESSED_MIN", 1)
    expected = candidates.knn_ivfpq(joined, 10)
    found = candidates.tower_neighbours(first, second, 10, method="ivfpq")
    assert np.array_equal(found, expected)  # the same seeded sample and blocks: bit for bit


def test_shards_filled_from_one_trained_index_merge_on_disk_into_one_index(tmp_path):
    import faiss

    vectors, _ = planted_duplicates(n=6_000, dim=256)  # above 192-d: the PCA step is merged too
    array = vectors.numpy()
    trained = candidates.compressed_index(256, len(array), array)
    parts = [(0, 1_000), (1_000, 3_700), (3_700, 6_000)]
    # one index filled in the shards' blocks: the projection's float32 rounding depends on the block
    # and can move an 8-bit code by a step (distances by ~3e-4), so blocks are kept alike
    whole = candidates.shard(trained, [array[start:stop] for start, stop in parts], 0)
    paths = []
    for number, (start, stop) in enumerate(parts):
        paths.append(str(tmp_path / f"shard-{number}.index"))
        faiss.write_index(candidates.shard(trained, [array[start:stop]], start), paths[-1])
    merged = candidates.merge_shards(trained, paths, tmp_path / "merged.ivfdata")
    faiss.write_index(merged, str(tmp_path / "merged.index"))
    again = faiss.read_index(str(tmp_path / "merged.index"))  # plain read: 1.15.1's mmap read crashes on search
    assert trained.ntotal == 0 and merged.ntotal == again.ntotal == 6_000
    expected = whole.search(array[::7], 11)
    for index in (merged, again):  # the same codes in the same order in every cell: equal bit for bit
        found = index.search(array[::7], 11)
        assert np.array_equal(found[1], expected[1]) and np.array_equal(found[0], expected[0])


def test_a_shard_trained_apart_or_unreadable_is_refused_in_one_line(tmp_path):
    import faiss

    vectors, _ = planted_duplicates(n=6_000, dim=256)
    array = vectors.numpy()
    trained = candidates.compressed_index(256, len(array), array)
    other = candidates.compressed_index(256, len(array), array[::-1].copy())
    faiss.write_index(candidates.shard(trained, [array[:3_000]], 0), str(tmp_path / "a.index"))
    faiss.write_index(candidates.shard(other, [array[3_000:]], 3_000), str(tmp_path / "b.index"))
    (tmp_path / "c.index").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="b.index was not filled from this trained index") as refused:
        candidates.merge_shards(trained, [str(tmp_path / "a.index"), str(tmp_path / "b.index")], tmp_path / "m")
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="c.index is not a readable faiss index") as refused:
        candidates.merge_shards(trained, [str(tmp_path / "c.index")], tmp_path / "m")
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="holds 3000 vectors"):
        candidates.merge_shards(candidates.shard(trained, [array[:3_000]], 0), [], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_shards_that_hold_one_id_twice_are_refused_in_one_line(tmp_path):
    import faiss

    vectors, _ = planted_duplicates(n=6_000, dim=256)
    array = vectors.numpy()
    trained = candidates.compressed_index(256, len(array), array)
    faiss.write_index(candidates.shard(trained, [array[:3_000]], 0), str(tmp_path / "a.index"))
    faiss.write_index(candidates.shard(trained, [array[3_000:]], 2_990), str(tmp_path / "b.index"))  # 10 rows early
    assert np.array_equal(np.sort(candidates.shard_ids(faiss.read_index(str(tmp_path / "a.index")))), np.arange(3_000))
    paths = [str(tmp_path / "a.index"), str(tmp_path / "b.index")]
    with pytest.raises(
        ValueError, match=r"shards .*a.index and .*b.index hold id 2990 twice \(10 ids in all\)"
    ) as refused:
        candidates.merge_shards(trained, paths, tmp_path / "m.ivfdata")
    assert "\n" not in str(refused.value) and not (tmp_path / "m.ivfdata").exists()
