"""Joint re-learning: Eq. (6) gating, Eq. (7) loss, Eq. (8) weights, residual over the base, determinism."""

import math

import numpy as np
import pytest
import torch

from relearn_core.errors import RelearnError
from relearn_core.relearning.joint import (
    JointConfig,
    JointRelearner,
    PairBatch,
    boosting_weights,
    final_loss,
    predict_joint,
    soft_f_measure,
    split_groups,
    train_joint,
)


def test_boosting_weights_follow_eq8_and_stay_positive():
    alpha = boosting_weights(torch.tensor([0.25, 0.0, 0.7]), (0.02, 0.48))
    assert alpha[0].item() == pytest.approx(0.5 * math.log(3))
    assert alpha[1].item() == pytest.approx(0.5 * math.log(0.98 / 0.02))
    assert 0 < alpha[2].item() < 0.1


def synthetic_pairs(rng, n=1500, m=5, dim=8):
    """Targets whose saliency is what their trusted aligned instances say; the base prior is right 70% of the time."""
    z = (rng.random(n) < 0.5).astype(np.float32)
    cf = rng.normal(size=(n, m, dim)).astype(np.float32)
    keep = rng.random((n, m)) < 0.6
    keep[:, 0] = True
    cf[:, :, 0] += np.where(keep, 2.5 * (2 * z[:, None] - 1), 0.0)  # kept pairs carry the answer
    similarity = rng.uniform(0.3, 1.0, size=(n, m)).astype(np.float32)
    base_right = rng.random(n) < 0.7
    prior = np.where(base_right == (z > 0.5), 1.0, -1.0).astype(np.float32)
    return PairBatch(cf, similarity, keep, prior), z


def test_joint_model_beats_the_base_prior_and_is_deterministic(rng):
    pairs, z = synthetic_pairs(rng)
    train = PairBatch(pairs.cf[:1000], pairs.similarity[:1000], pairs.keep[:1000], pairs.prior[:1000])
    test = PairBatch(pairs.cf[1000:], pairs.similarity[1000:], pairs.keep[1000:], pairs.prior[1000:])
    config = JointConfig(hidden=(32, 16), epochs=15, batch_size=32, seed=1)
    model, history = train_joint(train, z[:1000], config)
    p = predict_joint(model, test)
    base_accuracy = ((test.prior > 0) == (z[1000:] > 0.5)).mean()
    accuracy = ((p > 0.5) == (z[1000:] > 0.5)).mean()
    assert accuracy > base_accuracy + 0.15, (accuracy, base_accuracy)
    assert len(history) == 15 and all(len(errors) == 5 for errors in history)
    assert history[-1][0] < history[0][0]  # classifier 1 learned: its error fell
    again, _ = train_joint(train, z[:1000], config)
    np.testing.assert_array_equal(p, predict_joint(again, test))


def test_rejected_pairs_have_no_effect_and_no_kept_pair_means_the_base_prior(rng):
    pairs, _ = synthetic_pairs(rng, n=50)
    model = JointRelearner(pairs.cf.shape[2], JointConfig(hidden=(16, 8)))
    model.eval()
    scrambled = pairs.cf.copy()
    scrambled[~pairs.keep] = rng.normal(size=scrambled[~pairs.keep].shape) * 100
    before = predict_joint(model, pairs)
    after = predict_joint(model, PairBatch(scrambled, pairs.similarity, pairs.keep, pairs.prior))
    np.testing.assert_allclose(before, after, rtol=1e-5)
    nothing = PairBatch(pairs.cf, pairs.similarity, np.zeros_like(pairs.keep), pairs.prior)
    np.testing.assert_allclose(predict_joint(model, nothing), 1 / (1 + np.exp(-pairs.prior)), rtol=1e-5)


def test_final_loss_counts_only_kept_pairs_of_each_classifier():
    joint = torch.zeros(2)
    branch = torch.tensor([[5.0, -50.0], [5.0, -50.0]])
    target = torch.ones(2)
    keep = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    alpha = torch.tensor([1.0, 1.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(joint, target) + bce(torch.tensor(5.0), torch.tensor(1.0))
    assert final_loss(joint, branch, keep, target, alpha).item() == pytest.approx(expected.item(), rel=1e-6)


def test_soft_f_measure_on_hard_maps_is_the_fields_f_measure_counted_in_pixels(rng):
    """Binary predictions: the soft F-measure of superpixels weighted by their pixels is the pixel F-measure of the
    map they paint (beta^2 = 0.3)."""
    pixels = rng.integers(20, 200, 40)
    predicted = rng.random(40) < 0.5
    truth = rng.random(40) < 0.5
    map_, mask = np.repeat(predicted, pixels), np.repeat(truth, pixels)
    precision = (map_ & mask).sum() / map_.sum()
    recall = (map_ & mask).sum() / mask.sum()
    expected = 1.3 * precision * recall / (0.3 * precision + recall)
    as_tensors = (torch.tensor(v, dtype=torch.float32) for v in (predicted, truth, pixels))
    assert soft_f_measure(*as_tensors).item() == pytest.approx(expected, rel=1e-5)


def test_f_mae_loss_weighs_superpixels_by_their_pixels():
    """One large superpixel wrong costs more than one small one wrong; the loss is 0 for a perfect prediction."""
    target = torch.tensor([1.0, 1.0, 0.0])
    keep, branch, alpha = torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(1)
    pixels = torch.tensor([1000.0, 10.0, 500.0])

    def loss(joint):
        return final_loss(torch.tensor(joint), branch, keep, target, alpha, "f-mae", pixels).item()

    assert loss([30.0, 30.0, -30.0]) == pytest.approx(0.0, abs=1e-6)
    assert loss([-30.0, 30.0, -30.0]) > loss([30.0, -30.0, -30.0]) > 0.0
    with pytest.raises(RelearnError, match="f-mae"):
        final_loss(torch.zeros(3), branch, keep, target, alpha, "hinge")


def test_the_f_mae_loss_trains_a_re_learner_that_beats_the_base_prior(rng):
    pairs, z = synthetic_pairs(rng)
    config = JointConfig(hidden=(32, 16), epochs=15, batch_size=64, seed=1, loss="f-mae")
    pixels = rng.integers(50, 400, len(z))
    model, _ = train_joint(pairs.take(slice(0, 1000)), z[:1000], config, pixels=pixels[:1000])
    test, truth = pairs.take(slice(1000, None)), z[1000:]
    accuracy = ((predict_joint(model, test) > 0.5) == (truth > 0.5)).mean()
    assert accuracy > ((test.prior > 0) == (truth > 0.5)).mean() + 0.15


def test_shapes_are_checked(rng):
    with pytest.raises(RelearnError, match="shapes disagree"):
        PairBatch(np.zeros((3, 5, 2), np.float32), np.zeros((3, 4)), np.zeros((3, 5), bool), np.zeros(3))
    pairs, z = synthetic_pairs(rng, n=20, m=3)
    with pytest.raises(RelearnError, match="M=5"):
        train_joint(pairs, z, JointConfig())


def test_with_nothing_to_learn_validation_keeps_the_base_prior(rng):
    """Targets unrelated to the features: the held-out images never favour a trained epoch over epoch 0 (the base)."""
    n = 800
    pairs = PairBatch(
        rng.normal(size=(n, 5, 6)).astype(np.float32),
        np.ones((n, 5), np.float32),
        np.ones((n, 5), bool),
        np.where(rng.random(n) < 0.5, 2.0, -2.0).astype(np.float32),
    )
    z = (pairs.prior > 0).astype(np.float32)  # the base is right on every superpixel
    config = JointConfig(hidden=(16, 8), epochs=5, batch_size=64, validation_share=0.25)
    held_out = split_groups(np.repeat(np.arange(20), n // 20), config.validation_share, config.seed)
    held = pairs.take(held_out)
    scored = []

    def held_out_error(model):
        scored.append(float(np.abs(predict_joint(model, held) - z[held_out]).mean()))
        return scored[-1]

    model, _ = train_joint(pairs, z, config, held_out=held_out, held_out_error=held_out_error)
    assert len(scored) == config.epochs + 1 and held_out.sum() == n // 4
    p = predict_joint(model, pairs)
    base = 1 / (1 + np.exp(-pairs.prior))
    assert np.abs(p - z).mean() <= np.abs(base - z).mean() + 1e-6
    np.testing.assert_allclose(held_out_error(model), min(scored[:-1]))


def test_held_out_rows_need_an_error_to_be_scored_by(rng):
    pairs, z = synthetic_pairs(rng, n=40, m=5)
    with pytest.raises(RelearnError, match="held_out_error"):
        train_joint(pairs, z, JointConfig(epochs=1), held_out=np.arange(40) < 10)
