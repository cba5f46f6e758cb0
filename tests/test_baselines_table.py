"""Method rows on every distinct Test Data pair: AUCs as sklearn computes them from the method's
scores, P/R/F1 at the best-F1 threshold chosen on Training Data (not Test Data), failures and
undefined figures as null with a reason, strict JSON, and bad names in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm

from samespace import metrics, photos
from samespace.baselines import hashes, table
from samespace.errors import DataError


def rooms_of_photos(folder, rooms: int = 3, per_room: int = 3, seed: int = 11):
    """Photos of ``rooms`` smooth random scenes; the room's photos are a copy and resized copies,
    plus an exact copy of the first photo (last)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for room in range(rooms):
        scene = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((160, 120), Image.BICUBIC)
        for shot in range(per_room):
            paths.append(folder / f"r{room}-{shot}.png")
            scene.resize((160 - 8 * shot, 120 - 6 * shot), Image.BILINEAR).save(paths[-1])
            labels.append(room)
    shutil.copyfile(paths[0], folder / "r0-copy.png")
    return [*paths, folder / "r0-copy.png"], np.array([*labels, 0])


def split_of(folder, name: str, **kwargs) -> table.SplitPhotos:
    paths, rooms = rooms_of_photos(folder, **kwargs)
    array, kept, skipped = photos.read_photos(paths)
    assert not skipped and kept == list(range(len(paths)))
    return table.SplitPhotos(name, paths, photos.as_tensor(array), rooms)


def context_of(tmp_path, train_seed: int = 5, **kwargs) -> table.Context:
    return table.Context(
        train=split_of(tmp_path / "train", "Training Data", seed=train_seed, **kwargs),
        test=split_of(tmp_path / "test", "Test Data", **kwargs),
        device=torch.device("cpu"),
        cache_root=tmp_path / "cache",
    )


@pytest.mark.parametrize("method", hashes.METHODS)
def test_hash_rows_are_the_figures_of_the_hash_similarities(method, tmp_path):
    context = context_of(tmp_path)
    block, curves = table.methods_block([method], context)
    row = block[method]
    similarity = {}
    for split in (context.train, context.test):
        values = hashes.as_integers([hashes.file_hash(p, method) for p in split.paths])
        a, b, labels = split.pairs()
        similarity[split.name] = (labels, 1 - hashes.hamming(values, a, b) / 64)
    labels, scores = similarity["Test Data"]
    assert row["pairs"] == len(labels) == 45 and row["positives"] == int(labels.sum())
    assert row["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert row["pr_auc"] == pytest.approx(skm.average_precision_score(labels, scores), abs=1e-12)
    chosen = metrics.best_f1_threshold(*similarity["Training Data"])
    assert row["at_training_best_f1"] == metrics.threshold_metrics(labels, scores, chosen)
    assert row["at_published_default"]["threshold"] == 1 - 10 / 64  # imagededup's default, fixed
    assert (
        row["photos_per_s"] > 0
        and row["trained_on"] == "nothing (fixed hash)"
        and "Training Data" in row["threshold_chosen_on"]
    )
    np.testing.assert_array_equal(curves[method][1], scores)
    a, b, _ = context.test.pairs()
    copy = (a == 0) & (b == len(context.test.paths) - 1)  # the first photo and its exact copy
    assert scores[copy].item() == scores.max() == 1.0


def test_the_threshold_comes_from_training_data_and_a_test_data_choice_would_differ(tmp_path):
    """The same scores rule on both splits, but their best-F1 cut points differ: the row must use
    the Training Data one, and report F1 at it on Test Data (lower than the Test Data optimum)."""
    context = context_of(tmp_path)
    _, _, train_labels = context.train.pairs()
    _, _, test_labels = context.test.pairs()
    rng = np.random.default_rng(0)
    train_scores = np.where(train_labels == 1, 0.8, 0.3) + rng.normal(0, 0.01, len(train_labels))
    test_scores = np.where(test_labels == 1, 0.45, 0.2) + rng.normal(0, 0.01, len(test_labels))
    row = table.row_of(table.Scored(train_scores, test_scores, 1.0, "nothing"), context)
    on_training = metrics.best_f1_threshold(train_labels, train_scores)
    on_test = metrics.best_f1_threshold(test_labels, test_scores)
    assert row["at_training_best_f1"]["threshold"] == on_training > 0.6 > 0.5 > on_test
    assert row["at_training_best_f1"]["f1"] == 0.0  # the test positives (0.45) fall below it
    assert (
        metrics.threshold_metrics(test_labels, test_scores, on_test)["f1"] == 1.0
    )  # what choosing on Test Data would claim
    assert row["roc_auc"] == 1.0  # threshold-free figures are unaffected


def test_a_method_that_cannot_run_says_why_and_the_others_still_run(tmp_path, monkeypatch):
    context = context_of(tmp_path)

    def broken(context, name):
        raise RuntimeError("out of memory\nsecond line")

    monkeypatch.setitem(table.SCORERS, "dhash", broken)
    monkeypatch.setitem(table.SCORERS, "whash", lambda c, n: table.Scored(np.zeros(45), np.full(45, np.nan), 1.0, "x"))
    block, curves = table.methods_block(["samespace", "phash", "dhash", "whash"], context)
    assert block["samespace"]["why_null"] == "could not run: samespace needs a checkpoint"
    assert block["dhash"]["why_null"] == "could not run: RuntimeError: out of memory"
    assert block["whash"]["why_null"] == "could not run: 45 of its Test Data pair scores are not finite"
    assert block["phash"]["roc_auc"] is not None and list(curves) == ["phash"]
    json.dumps(block, allow_nan=False)  # strict JSON: no NaN anywhere
    assert block["dhash"]["roc_auc"] is None and block["dhash"]["at_training_best_f1"] is None


def test_one_room_gives_null_figures_with_a_reason(tmp_path):
    context = context_of(tmp_path, rooms=1)
    row = table.methods_block(["phash"], context)[0]["phash"]
    assert row["roc_auc"] is None and row["pr_auc"] is None and row["at_training_best_f1"] is None
    assert "at least two rooms" in row["why_null"] and "no Training Data threshold" in row["why_null"]
    json.dumps(row, allow_nan=False)


def test_names_and_unknown_names():
    assert table.parse_names("all") == list(table.NAMES)
    assert table.parse_names("dhash, phash,dhash") == ["samespace", "dhash", "phash"]  # samespace first, the reference
    with pytest.raises(DataError) as error:
        table.parse_names("phash,vgg99")
    assert str(error.value) == f"unknown method vgg99: choose from {', '.join(table.NAMES)} or all"
    assert "\n" not in str(error.value)


def test_table_lines_follow_the_block_and_say_where_thresholds_come_from():
    block = {
        "samespace": {"roc_auc": 0.9, "pr_auc": None, "at_training_best_f1": {"f1": 0.5, "threshold": 0.7},
                      "photos_per_s": 12.0, "trained_on": "Training Data pairs", "weights": "random weights",
                      "balanced": {"roc_auc": 0.8, "pr_auc": 0.7}},
        "phash": {"roc_auc": 0.75, "pr_auc": 0.5, "photos_per_s": 120.0, "trained_on": "nothing"},
        "ahash": {"roc_auc": None, "balanced": None, "why_null": "could not run: x.jpg: gone"},
    }  # fmt: skip
    lines = table.table_lines(block)
    assert "balanced ROC-AUC" in lines[0] and "balanced" in lines[1]
    assert [line.split()[6] for line in lines[2:]] == ["0.8000", "n/a", "n/a"]
    assert "chosen on every distinct Training Data pair, then applied to Test Data" in lines[1]
    assert [line.split()[0] for line in lines[2:]] == ["samespace", "phash", "ahash"]
    assert lines[2].split()[1:6] == ["0.9000", "n/a", "0.5000", "0.7000", "12"] and "random weights" in lines[2]
    assert "120" in lines[3].split() and "(could not run: x.jpg: gone)" in lines[4]


@pytest.mark.parametrize("trunk_per_side", [False, True])
def test_samespace_and_trunk_cosine_rows_score_as_the_evaluation_does(trunk_per_side, small_net, tmp_path):
    """samespace: the head's P(same space) of the unaltered photos, as evaluation.evaluate scores
    all distinct pairs (also for the original's layout, a trunk per side); trunk-cosine: cosine of
    the (first) trunk's features. The small trunk stands in for random MobileNetV3 (see conftest)."""
    from conftest import small_trunk
    from samespace import evaluation, features, pairs

    if trunk_per_side:
        small_net.second_trunk = small_trunk(seed=1)
    context = context_of(tmp_path)
    context.net = small_net
    split = context.test
    per_variant, _ = features.network_features(tmp_path / "fc", small_net, split.images)
    balanced = pairs.build_pairs(split.rooms, pairs.wavelet_hashes(split.images))
    outcome = evaluation.evaluate(small_net, per_variant, balanced, split.rooms, torch.device("cpu"))
    _, expected = outcome["curves"]["all distinct pairs"]
    scored = table.score_checkpoint(context, "samespace")
    # the same layers on the same features, embedded in other batches: float32 rounding apart
    np.testing.assert_allclose(scored.test, expected, rtol=0, atol=1e-6)
    a, b, _ = split.pairs()
    trunk = per_variant[:, 0, 0] if trunk_per_side else per_variant[:, 0]
    unit = torch.nn.functional.normalize(trunk.double(), dim=1).numpy()
    cosine = table.score_checkpoint(context, "trunk-cosine")
    np.testing.assert_allclose(cosine.test, np.sum(unit[a] * unit[b], axis=1), rtol=0, atol=1e-12)
    assert cosine.trained_on == "nothing (ImageNet trunk)" and scored.seconds > 0


def with_balanced_pairs(context: table.Context):
    """The Test Data's balanced pairs as the evaluation builds them (data.load_pairs' build_pairs)."""
    from samespace import pairs

    split = context.test
    balanced = pairs.build_pairs(split.rooms, pairs.wavelet_hashes(split.images))
    context.balanced = table.Balanced.of(balanced)
    return balanced


@pytest.mark.parametrize("trunk_per_side", [False, True])
def test_samespace_balanced_figures_are_the_evaluations_balanced_block(trunk_per_side, small_net, tmp_path):
    """On the evaluation's own features, samespace's balanced sub-block is its balanced block (the
    same layers on the same inputs: equal); trunk-cosine's is the cosine of each side's
    (photo, variant) trunk features, computed here pair by pair."""
    from conftest import small_trunk
    from samespace import evaluation, features, transforms

    if trunk_per_side:
        small_net.second_trunk = small_trunk(seed=1)
    context = context_of(tmp_path)
    context.net = small_net
    balanced = with_balanced_pairs(context)
    per_variant, _ = features.network_features(tmp_path / "fc", small_net, context.test.images)
    context.memo[("checkpoint", "Test Data")] = (per_variant, 0.0)  # as run_evaluate hands them over
    expected = evaluation.evaluate(small_net, per_variant, balanced, context.test.rooms, torch.device("cpu"))
    block, _ = table.methods_block(["samespace", "trunk-cosine"], context)
    figures = block["samespace"]["balanced"]
    for key in ("pairs", "positives", "roc_auc", "pr_auc"):
        assert figures[key] == expected["report"]["balanced"][key], key
    assert figures["pairs"] == len(balanced) > 0 and 0 < figures["positives"] < figures["pairs"]
    trunk = per_variant[:, :, 0] if trunk_per_side else per_variant
    side = [torch.as_tensor(np.asarray(v, np.int64)) for v in (balanced.first_variant, balanced.second_variant)]
    first = trunk[torch.as_tensor(balanced.first), side[0]].double()
    second = trunk[torch.as_tensor(balanced.second), side[1]].double()
    cosine = torch.nn.functional.cosine_similarity(first, second, dim=1).clamp(-1, 1).numpy()
    cosine_row = block["trunk-cosine"]["balanced"]
    assert cosine_row["roc_auc"] == pytest.approx(skm.roc_auc_score(balanced.label, cosine), abs=1e-9)
    assert cosine_row["pr_auc"] == pytest.approx(skm.average_precision_score(balanced.label, cosine), abs=1e-9)
    assert transforms.N_VARIANTS == 8
    json.dumps(block, allow_nan=False)


def test_a_hash_and_a_feature_method_on_the_balanced_pairs_as_computed_by_hand(tmp_path, monkeypatch):
    """phash of each side's decoded 256x256 pixels in its variant (apply_variant, then PIL), and
    vgg16-cosine of the small input-dependent network's features (see test_baselines_features) of
    each side in its variant, all variants in one batch here: float32 batch effects, so 1e-6."""
    from samespace import transforms
    from samespace.baselines import features
    from tests.test_baselines_features import small_network

    monkeypatch.setitem(features.BUILDERS, "vgg16", small_network)
    context = context_of(tmp_path)
    balanced = with_balanced_pairs(context)
    block, _ = table.methods_block(["phash", "vgg16-cosine"], context)
    images = context.test.images

    def variant_pixels(photo: int, variant: int) -> Image.Image:
        return Image.fromarray(transforms.apply_variant(images[photo], variant).permute(1, 2, 0).numpy())

    sides = [
        [(int(p), int(v)) for p, v in zip(photo, variant)]
        for photo, variant in ((balanced.first, balanced.first_variant), (balanced.second, balanced.second_variant))
    ]
    bits = {key: int(hashes.image_hash(variant_pixels(*key), "phash"), 16) for key in {*sides[0], *sides[1]}}
    phash = np.array([1 - bin(bits[x] ^ bits[y]).count("1") / 64 for x, y in zip(*sides)])
    row = block["phash"]["balanced"]
    assert row["roc_auc"] == skm.roc_auc_score(balanced.label, phash)
    assert row["pr_auc"] == skm.average_precision_score(balanced.label, phash)
    assert table.BALANCED_HASH_NOTE in block["phash"]["notes"]

    network = features.Network("vgg16", torch.device("cpu"))
    every = torch.cat([transforms.apply_variant(images, v) for v in range(transforms.N_VARIANTS)])
    x = network.features(every).double().reshape(transforms.N_VARIANTS, len(images), -1)
    side = [torch.as_tensor(np.asarray(v, np.int64)) for v in (balanced.first_variant, balanced.second_variant)]
    first, second = x[side[0], torch.as_tensor(balanced.first)], x[side[1], torch.as_tensor(balanced.second)]
    cosine = torch.nn.functional.cosine_similarity(first, second, dim=1).clamp(-1, 1).numpy()
    scored = table.score_features(context, "vgg16-cosine")
    np.testing.assert_allclose(scored.balanced, cosine, rtol=0, atol=1e-6)
    row = block["vgg16-cosine"]["balanced"]
    assert row["roc_auc"] == skm.roc_auc_score(balanced.label, scored.balanced)
    assert row["pr_auc"] == skm.average_precision_score(balanced.label, scored.balanced)
    # scores 1e-6 apart can swap near-tied positives' order, moving PR-AUC by ~1e-6 (seen 5e-7)
    assert row["roc_auc"] == pytest.approx(skm.roc_auc_score(balanced.label, cosine), abs=1e-4)
    assert row["pr_auc"] == pytest.approx(skm.average_precision_score(balanced.label, cosine), abs=1e-4)
    json.dumps(block, allow_nan=False)
