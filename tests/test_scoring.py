"""scoring.py: the split-layer pair scorer equals the head, pair enumeration, backbone counting."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import float32_atol, summed_terms
from samespace import scoring
from samespace.network import SiameseNet


def test_pair_scorer_equals_the_head_on_concatenated_embeddings(small_net):
    torch.manual_seed(1)
    first, second = torch.randn(7, 1280), torch.randn(7, 1280)
    scorer = scoring.PairScorer(small_net.head, first, second, batch_size=5)
    a, b = np.array([0, 3, 6, 2, 2, 5]), np.array([1, 3, 0, 4, 6, 5])
    # The first head layer split in two halves sums in another order: float32 rounding only.
    atol = float32_atol(summed_terms(small_net.head))
    assert torch.allclose(scorer.logits(a, b), small_net.score(first[a], second[b]), rtol=0, atol=atol)
    assert scorer.evaluations == 6


def test_probabilities_are_the_mean_of_both_orders(small_net):
    torch.manual_seed(2)
    first, second = torch.randn(4, 1280), torch.randn(4, 1280)
    scorer = scoring.PairScorer(small_net.head, first, second)
    a, b = np.array([0, 1]), np.array([2, 3])
    forward, backward = torch.sigmoid(scorer.logits(a, b)), torch.sigmoid(scorer.logits(b, a))
    # The same batches through the same code on one device; a tolerance only because BLAS may
    # pick its kernel by memory alignment (sigmoid's slope is at most 1/4).
    atol = float32_atol(summed_terms(small_net.head)) / 4
    assert np.allclose(scorer.probabilities(a, b), ((forward + backward) / 2).numpy(), rtol=0, atol=atol)
    assert np.allclose(scorer.probabilities(a, b), scorer.probabilities(b, a), rtol=0, atol=atol)


def test_upper_pairs_enumerates_each_unordered_pair_once():
    a, b = scoring.all_upper_pairs(37)
    assert len(a) == 37 * 36 // 2 and np.all(a < b)
    assert len(set(zip(a.tolist(), b.tolist()))) == len(a)
    assert [len(x) for x in scoring.all_upper_pairs(1)] == [0, 0]


def test_embedder_counts_backbone_passes(small_net):
    embedder = scoring.Embedder(small_net, torch.device("cpu"), batch_size=4)
    features = embedder.backbone(torch.randint(0, 256, (10, 3, 256, 256), dtype=torch.uint8))
    assert features.shape == (10, 960) and embedder.trunk_images == 10
    first, second = embedder.embed(features)
    assert first.shape == second.shape == (10, 1280)
    assert torch.equal(first, second)  # both towers start as copies of one classifier, as in the original


def test_files_are_embedded_chunk_by_chunk_with_failures_listed(small_net, tmp_path):
    from PIL import Image

    paths = []
    for i in range(7):
        path = tmp_path / f"p{i}.png"
        if i in (2, 3, 4):
            path.write_text("not a photo")  # chunk [3, 4, 5) is then mostly unreadable
        else:
            Image.new("RGB", (20, 20), (30 * i, 10, 200 - 20 * i)).save(path)
        paths.append(path)
    chunked = scoring.Embedder(small_net, torch.device("cpu"))
    features, kept, skipped = scoring.features_of_files(chunked, paths, chunk=3)
    assert kept == [0, 1, 5, 6] and {s.path.name for s in skipped} == {"p2.png", "p3.png", "p4.png"}
    whole = scoring.Embedder(small_net, torch.device("cpu"))
    expected, _, _ = scoring.features_of_files(whole, paths, chunk=100)
    # Batch size changes the BLAS kernel's summation order: float32 sums of 768 products may then
    # differ by a few ulps per term, ~768 * 2**-24 of the terms' magnitude (<= 1 here) at worst.
    assert torch.allclose(features, expected, rtol=1e-5, atol=768 * 2**-24) and chunked.trunk_images == 4
    nothing, kept, _ = scoring.features_of_files(whole, paths[2:5], chunk=2)
    assert nothing.shape == (0, 960) and kept == []


def test_thread_split_never_oversubscribes_the_cores():
    for budget in range(1, 33):
        decoders, trunk = scoring.thread_split(torch.device("cpu"), budget)
        assert trunk >= 1 and decoders + trunk == budget
        assert decoders == 0 if budget < scoring.CORES_PER_DECODE_THREAD else decoders >= 1
        decoders, trunk = scoring.thread_split(torch.device("cuda"), budget)
        assert trunk == 1 and decoders == max(1, budget - 1)  # the GPU runs the trunk; the CPU decodes


def photo_files(folder, n: int, unreadable: int, suffix: str) -> list:
    """``n`` small photo files p0.. (random pixels), the one at ``unreadable`` not a photo."""
    from PIL import Image

    paths = []
    for i in range(n):
        path = folder / f"p{i}{suffix}"
        if i == unreadable:
            path.write_text("not a photo")
        else:
            pixels = np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def test_decoding_in_the_background_gives_what_decoding_in_turn_gives(small_net, tmp_path):
    paths = photo_files(tmp_path, 8, unreadable=4, suffix=".jpg")
    threads = torch.get_num_threads()
    in_turn = scoring.features_of_files(scoring.Embedder(small_net, torch.device("cpu")), paths, 3, decode_threads=0)
    overlapped = scoring.features_of_files(scoring.Embedder(small_net, torch.device("cpu")), paths, 3, decode_threads=1)
    assert torch.get_num_threads() == threads  # restored after the trunk ran on fewer threads
    assert overlapped[1] == in_turn[1] == [0, 1, 2, 3, 5, 6, 7]
    assert [s.path for s in overlapped[2]] == [s.path for s in in_turn[2]] == [paths[4]]
    # The same decoded pixels and batches; only the thread count of the projection's matrix
    # product may differ, which can change its float32 summation order (see above).
    assert torch.allclose(overlapped[0], in_turn[0], rtol=1e-5, atol=768 * 2**-24)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bfloat16 autocast of the trunk is for CUDA only")
def test_bf16_dedup_embedding_stays_within_1e3_of_float32():
    from test_features import input_dependent_mobilenet

    torch.manual_seed(0)
    net = SiameseNet(pretrained=False, dropouts=(0.3, 0.4, 0.5))
    net.trunk = input_dependent_mobilenet()
    images = torch.randint(0, 256, (24, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # a random head behind ReLUs scores nearly alike: steepen it around p = 0.5
        net.head[-1].weight.mul_(1000)
        exact = scoring.Embedder(net, torch.device("cpu"))
        net.head[-1].bias.sub_(net.score(*exact.embed(exact.backbone(images))).mean())
    a, b = scoring.all_upper_pairs(len(images))
    probabilities = {}
    for autocast in (False, True):
        embedder = scoring.Embedder(copy.deepcopy(net), torch.device("cuda"), autocast=autocast)
        scorer = scoring.PairScorer(net.head.cuda(), *embedder.embed(embedder.backbone(images)))
        probabilities[autocast] = scorer.probabilities(a, b)
    assert np.abs(probabilities[True] - probabilities[False]).max() <= 1e-3
    assert np.ptp(probabilities[False]) > 1e-2  # scores that differ between pairs, beyond the tolerance


@pytest.mark.parametrize("rounding, kept", [(1e-6, True), (3.0, False)])
def test_bf16_stays_on_only_if_the_first_batch_scores_alike(small_net, monkeypatch, rounding, kept):
    """The guard behind ``autocast``, with bfloat16 rounding stood in for by a relative error of
    the trunk features (CPU bfloat16 convolutions are too slow for a test without native support)."""
    exact_features = scoring.features.trunk_features

    def trunk_features(trunk, images, variant=0, device="cpu", *, autocast=False, preprocessing="ours", runner=None):
        found = exact_features(trunk, images, variant, device, preprocessing=preprocessing, runner=runner)
        if not autocast:
            return found
        return found * (1 + rounding * torch.randn(found.shape, generator=torch.Generator().manual_seed(0)))

    images = torch.randint(0, 256, (6, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # a random head behind ReLUs scores nearly alike: steepen it around p = 0.5
        small_net.head[-1].weight.mul_(1000)
        exact = scoring.Embedder(small_net, torch.device("cpu"))
        small_net.head[-1].bias.sub_(small_net.score(*exact.embed(exact.backbone(images))).mean())
    monkeypatch.setattr(scoring.features, "trunk_features", trunk_features)
    guarded = scoring.Embedder(small_net, torch.device("cpu"), batch_size=4)
    guarded.autocast = True  # what autocast=True gives on CUDA
    found = guarded.backbone(images)
    assert guarded.autocast_checked and guarded.autocast == kept and guarded.trunk_images == 6
    assert torch.equal(found[:4], exact_features(guarded.trunk, images[:4]))  # the checked batch: float32
    assert torch.equal(found[4:], exact_features(guarded.trunk, images[4:])) != kept  # the rest: as decided


def all_at_once_logits(head, first, second, a, b) -> torch.Tensor:
    """The scorer before it worked block by block: every item's first-layer share at once."""
    layer, width = head[0], first.shape[1]
    with torch.inference_mode():
        first_share = first @ layer.weight[:, :width].T
        second_share = second @ layer.weight[:, width:].T + layer.bias
        return head[1:](first_share[a] + second_share[b]).squeeze(1)


def test_blockwise_shares_give_the_all_at_once_logits_in_bounded_memory(small_net, monkeypatch):
    """Buckets of 16-item blocks over 100 items: every share a bucket computes is for at most a
    block of items, never for all of them, and the logits equal the all-at-once scorer's (a
    share is a row of a matrix product either way: float32 rounding of the summation order only)."""
    torch.manual_seed(3)
    first, second = torch.randn(100, 1280), torch.randn(100, 1280)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 100, 700), rng.integers(0, 100, 700)  # knn-like: scattered partners
    scorer = scoring.PairScorer(small_net.head, first, second, batch_size=64, block=16)
    rows = []
    shares = scorer.shares
    monkeypatch.setattr(scorer, "shares", lambda items, side: rows.append(len(items)) or shares(items, side))
    atol = float32_atol(summed_terms(small_net.head))
    expected = all_at_once_logits(small_net.head, first, second, torch.from_numpy(a), torch.from_numpy(b))
    assert torch.allclose(scorer.logits(a, b), expected, rtol=0, atol=atol)
    assert max(rows) <= 16 and sum(rows) > 100 and scorer.evaluations == 700
    whole = scoring.PairScorer(small_net.head, first, second)  # one bucket: each item's shares once
    assert torch.allclose(whole.logits(a, b), expected, rtol=0, atol=atol)


def test_files_embedded_through_the_towers_chunk_by_chunk_equal_the_towers_on_all_features(small_net, tmp_path):
    paths = photo_files(tmp_path, 7, unreadable=3, suffix=".png")
    embedder = scoring.Embedder(small_net, torch.device("cpu"))
    (first, second), kept, skipped = scoring.features_of_files(embedder, paths, chunk=3, towers=True)
    features, same_kept, _ = scoring.features_of_files(embedder, paths, chunk=100)
    expected = embedder.embed(features)
    assert kept == same_kept == [0, 1, 2, 4, 5, 6] and [s.path.name for s in skipped] == ["p3.png"]
    # Another batch size: the trunk's and the towers' sums in another order (float32 rounding).
    atol = float32_atol(summed_terms(small_net.trunk, small_net.towers[0]))
    assert first.shape == second.shape == (6, 1280)
    assert torch.allclose(first, expected[0], rtol=0, atol=atol)
    assert torch.allclose(second, expected[1], rtol=0, atol=atol)
    nothing, kept, _ = scoring.features_of_files(embedder, paths[3:4], towers=True)
    assert [t.shape for t in nothing] == [(0, 1280), (0, 1280)] and kept == []
