"""The single-model trainer: loss reduction over positions, evaluation on length-bucketed batches."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import synthetic_sequences, write_loo_dataset

import mdcns_tf  # noqa: F401
from mdcns_tf import data
from mdcns_tf.batch import INPUT_IDS
from mdcns_tf.config_loader import load_config
from mdcns_tf.features import Metadata
from mdcns_tf.training.factory import build_model, resolved_reduction
from mdcns_tf.training.retrieval_model import position_loss

VALUES = tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
TRAINED = tf.constant([[False, True, True], [False, False, True]])


def test_batch_reduction_is_the_mean_over_trained_positions():
    assert float(position_loss(VALUES, TRAINED, None)) == pytest.approx((2 + 3 + 6) / 3)


def test_epoch_reduction_divides_the_sum_by_the_mean_positions_of_a_batch():
    assert float(position_loss(VALUES, TRAINED, 4.0)) == pytest.approx((2 + 3 + 6) / 4)


def test_epoch_reduction_weighs_every_position_alike_across_batches():
    # Two length buckets: a batch with 1 trained position and one with 4, each position's loss 1.
    short_batch = (tf.ones([1, 2]), tf.constant([[False, True]]))
    long_batch = (tf.ones([2, 2]), tf.constant([[True, True], [True, True]]))
    # Per-batch means give the lone short position the weight of all four long ones together ...
    means = [float(position_loss(v, m, None)) for v, m in (short_batch, long_batch)]
    np.testing.assert_allclose(means, [1.0, 1.0])
    # ... the epoch reduction (2.5 trained positions a batch on average) gives each position 1 / 2.5.
    sums = [float(position_loss(v, m, 2.5)) for v, m in (short_batch, long_batch)]
    np.testing.assert_allclose(sums, [1 / 2.5, 4 / 2.5])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], "batch"),
        (["data.bucket_by_length=true"], "epoch"),
        (["data.bucket_by_length=true", "loss.reduction=batch"], "batch"),
        (["loss.reduction=epoch"], "epoch"),
    ],
)
def test_auto_reduction_follows_length_buckets(overrides, expected):
    assert resolved_reduction(load_config(None, overrides)) == expected


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec", "fmlprec", "linrec", "mamba4rec"])
def test_length_bucketed_evaluation_gives_the_same_metrics(tmp_path, backbone):
    # Histories of 3 to 38 items against max_len 40: bucketed batches are trimmed to 4 .. 40 columns.
    sequences = synthetic_sequences(n_users=60, n_items=50, seed=3, min_len=5, max_len=40)
    write_loo_dataset(str(tmp_path), sequences, n_items=50)
    config = load_config(None, [f"model.backbone={backbone}", "model.dim=16", "data.max_len=40"])
    model = build_model(config, Metadata.load(str(tmp_path)))
    model.build_for_input(40)
    model.compile()
    results = {}
    for bucketed in (False, True):
        dataset = data.eval_dataset(str(tmp_path), "test", 40, batch_size=16, bucket_by_length=bucketed)
        if bucketed:
            assert min(int(batch[INPUT_IDS].shape[1]) for batch in dataset) < 40
        results[bucketed] = model.evaluate(dataset, return_dict=True, verbose=0)
    for name, value in results[False].items():
        assert results[True][name] == pytest.approx(value, abs=1e-6), name
    assert results[False]["mrr"] > 0
