"""Trained baselines: the published parameter counts, the contrastive loss's sign, repeatable
seeded training cached per Training Data content (a damaged cache trains again), KMeans clamped
for a small split, and an exact copy as the top-scoring pair."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from samespace.baselines import table, trained
from tests.test_baselines_table import context_of


def test_parameter_counts_are_the_published_ones():
    encoder, decoder = trained.autoencoder()
    counts = [sum(p.numel() for p in part.parameters()) for part in (encoder, decoder)]
    assert counts == [1576, 6003] and sum(counts) == 7579
    tower = trained.siamese_tower()
    assert trained.keras_parameters(tower) == 300_560  # Keras counts BatchNorm's moving mean and variance
    assert sum(p.numel() for p in tower.parameters()) == 299_408


def test_shapes_code_and_reconstruction():
    encoder, decoder = trained.autoencoder()
    x = trained.autoencoder_input(torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8))
    assert x.shape == (2, 3, 32, 32) and float(x.amax()) == 1.0  # divided by the photo's own maximum
    code = encoder(x)
    assert code.shape == (2, 16, 4, 4) and decoder(code).shape == (2, 3, 32, 32)
    assert trained.siamese_tower().eval()(torch.rand(2, 3, 64, 64)).shape == (2, 16)


def test_a_black_photo_gives_zeros_not_nan():
    x = trained.autoencoder_input(torch.zeros(1, 3, 256, 256, dtype=torch.uint8))
    assert torch.equal(x, torch.zeros(1, 3, 32, 32))


def test_contrastive_loss_pulls_similar_pairs_and_pushes_others():
    similar, different = torch.tensor([True]), torch.tensor([False])
    zero, far = torch.tensor([0.0]), torch.tensor([2.0])
    assert trained.contrastive_loss(zero, similar, 1.0).item() == 0.0  # same room, same place: no loss
    assert trained.contrastive_loss(far, similar, 1.0).item() == 4.0  # same room far apart: d^2
    assert trained.contrastive_loss(zero, different, 1.0).item() == 1.0  # other rooms together: margin^2
    assert trained.contrastive_loss(far, different, 1.0).item() == 0.0  # beyond the margin: nothing


def test_room_batches_keep_rooms_together_and_cover_every_photo():
    rooms = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 5])
    batches = trained.room_batches(rooms, 4, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    for room in np.unique(rooms):  # each room's photos in one batch, so its pairs are seen
        assert sum(np.isin(np.flatnonzero(rooms == room), batch).any() for batch in batches) == 1


@pytest.fixture()
def short_siamese(monkeypatch):
    """2 epochs at 32x32: the test is about caching and seeding, not about how well it learns."""
    monkeypatch.setitem(trained.SIAMESE, "epochs", 2)
    monkeypatch.setitem(trained.SIAMESE, "size", 32)


@pytest.mark.parametrize("method", trained.METHODS)
def test_training_is_cached_repeatable_and_an_exact_copy_scores_top(
    method, tmp_path, monkeypatch, caplog, short_siamese
):
    context = context_of(tmp_path)
    first = table.score_trained(context, method)
    assert first.training_s > 0 and np.all(np.isfinite(first.test))
    a, b, _ = context.test.pairs()
    copy = (a == 0) & (b == len(context.test.paths) - 1)
    assert first.test[copy].item() == first.test.max() > first.test[~copy].max()
    # distance 0 up to float32 rounding: the two copies sit at different places of one batch
    assert first.test[copy].item() == pytest.approx(0.0, abs=1e-5)
    (saved,) = (tmp_path / "cache" / "baselines").glob(f"{method}-*.pt")

    with monkeypatch.context() as patch:
        patch.setattr(trained, "fit", lambda *args: pytest.fail("trained again despite the cache"))
        again = table.score_trained(context, method)
    np.testing.assert_array_equal(again.test, first.test)
    assert again.training_s == first.training_s  # the cached training's time, not a new one

    saved.write_bytes(saved.read_bytes()[:-10])  # damaged: trained again, with one warning
    with caplog.at_level(logging.WARNING, logger="samespace.baselines"):
        retrained = table.score_trained(context, method)
    assert any("damaged" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(retrained.test, first.test)  # seeded: the same model again


def test_another_seed_or_other_photos_is_another_cache_entry():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rooms = np.array([0, 0, 1, 2])
    key = trained.cache_key(images, rooms, "autoencoder", 0)
    assert key != trained.cache_key(images, rooms, "autoencoder", 1)
    assert key != trained.cache_key(images, rooms, "siamese-resnet", 0)
    assert key != trained.cache_key(images, np.array([0, 1, 1, 2]), "autoencoder", 0)
    changed = images.clone()
    changed[0, 0, 0, 0] ^= 1
    assert key != trained.cache_key(changed, rooms, "autoencoder", 0)


def test_kmeans_is_clamped_for_a_small_split_and_says_so(tmp_path, caplog):
    context = context_of(tmp_path)  # 10 Training Data photos
    with caplog.at_level(logging.WARNING, logger="samespace.baselines"):
        scored = table.score_trained(context, "autoencoder-kmeans")
    assert scored.notes == ["KMeans k = 10, not 20: Training Data has only 10 photos"]
    assert any("k = 10, not 20" in r.getMessage() for r in caplog.records)


def test_kmeans_gating_puts_pairs_across_clusters_below_all_others():
    codes = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.2, 5.0]])
    model = trained.Fitted("autoencoder-kmeans", torch.nn.Identity(), centres=np.array([[0.0, 0.0], [5.0, 5.0]]))
    a, b = np.triu_indices(4, 1)
    scores = trained.pair_scores("autoencoder-kmeans", model, codes, a, b)
    inside = np.array([(i, j) in {(0, 1), (2, 3)} for i, j in zip(a, b)])
    assert scores[inside].min() > scores[~inside].max()
    np.testing.assert_allclose(scores[inside], [-0.1, -0.2], atol=1e-6)  # float32 codes near 5: steps of 4.8e-7
