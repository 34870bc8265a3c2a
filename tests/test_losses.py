"""Losses by hand: gBCE's calibration exponent and its loss, sampled softmax, against gSASRec's formulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

import mdcns_tf  # noqa: F401
from mdcns_tf import losses


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_gbce_beta_by_hand() -> None:
    # k = 100 uniform negatives out of 12,101 items: alpha = 100 / 12,100.
    alpha = 100 / 12_100
    assert losses.gbce_beta(100, 12_101, t=0.75) == pytest.approx(alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))
    assert losses.gbce_beta(100, 12_101, t=0.75) == pytest.approx(0.25 + 0.75 * alpha)
    assert losses.gbce_beta(100, 12_101, t=0.0) == pytest.approx(1.0)  # plain BCE
    assert losses.gbce_beta(100, 12_101, t=1.0) == pytest.approx(alpha)  # fully calibrated


def test_gbce_equals_gsasrec_transformed_positive_logit() -> None:
    positive, negative = 0.7, [1.5, -2.0, 0.1]
    beta = losses.gbce_beta(3, 50, t=0.75)
    # gSASRec: BCE-with-logits on logit(p^beta) for the positive, plain BCE for the negatives.
    p_beta = sigmoid(positive) ** beta
    expected = -math.log(p_beta) - sum(math.log(1 - sigmoid(s)) for s in negative)
    got = losses.pairwise_loss("gbce", tf.constant([positive]), tf.constant([negative]), n_items=50, gbce_t=0.75)
    np.testing.assert_allclose(got.numpy(), [expected], rtol=1e-5)
    # t = 0 is BCE exactly.
    plain = losses.pairwise_loss("gbce", tf.constant([positive]), tf.constant([negative]), n_items=50, gbce_t=0.0)
    np.testing.assert_allclose(plain.numpy(), losses.bce(tf.constant([positive]), tf.constant([negative])).numpy())


def test_gbce_needs_the_catalogue_size() -> None:
    with pytest.raises(ValueError, match="n_items"):
        losses.pairwise_loss("gbce", tf.constant([0.0]), tf.constant([[0.0]]))


def test_sampled_softmax_by_hand() -> None:
    positive, negative = 1.0, [0.5, 2.0]
    expected = math.log(math.exp(1.0) + math.exp(0.5) + math.exp(2.0)) - 1.0
    got = losses.sampled_softmax(tf.constant([positive]), tf.constant([negative]))
    np.testing.assert_allclose(got.numpy(), [expected], rtol=1e-6)
