"""tf.data input: padding, training positions and evaluation elements match the records."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_loo_dataset

import mdcns_tf  # noqa: F401
from mdcns_tf import data
from mdcns_tf.batch import EVAL_KEYS, EXCLUSION_IDS, HISTORY_IDS, INPUT_IDS, TARGET, TARGET_IDS, TRAIN_KEYS
from mdcns_tf.config import ConfigError, DataConfig


def train_batches(data_dir: str, **data_config: Any) -> list[dict[str, tf.Tensor]]:
    """Every training batch of one pass over ``data_dir`` with ``DataConfig(**data_config)``, seed 0."""
    return list(data.train_dataset(DataConfig(dir=data_dir, **data_config), seed=0))


def test_left_pad_keeps_the_most_recent_items():
    np.testing.assert_array_equal(data.left_pad(tf.constant([1, 2, 3]), 5).numpy(), [0, 0, 1, 2, 3])
    np.testing.assert_array_equal(data.left_pad(tf.constant([1, 2, 3, 4, 5, 6]), 4).numpy(), [3, 4, 5, 6])


def test_all_positions_and_prefix_augmentation(tmp_path):
    # User 1's training sequence is [5, 6, 7, 8] (the last two of [5..10] are valid/test targets).
    write_loo_dataset(str(tmp_path), [[5, 6, 7, 8, 9, 10]], n_items=10)
    (batch,) = train_batches(str(tmp_path), max_len=4, batch_size=8, train_positions="all")
    assert sorted(batch) == sorted(TRAIN_KEYS)
    np.testing.assert_array_equal(batch[INPUT_IDS].numpy(), [[0, 5, 6, 7]])
    np.testing.assert_array_equal(batch[TARGET_IDS].numpy(), [[0, 6, 7, 8]])
    np.testing.assert_array_equal(batch[EXCLUSION_IDS].numpy(), [[5, 6, 7, 8]])

    (batch,) = train_batches(str(tmp_path), max_len=4, batch_size=8, train_positions="last")
    assert sorted(batch) == sorted(TRAIN_KEYS)
    order = np.argsort(batch[TARGET_IDS].numpy()[:, -1])
    np.testing.assert_array_equal(batch[INPUT_IDS].numpy()[order], [[0, 0, 0, 5], [0, 0, 5, 6], [0, 5, 6, 7]])
    np.testing.assert_array_equal(batch[TARGET_IDS].numpy()[order], [[0, 0, 0, 6], [0, 0, 0, 7], [0, 0, 0, 8]])
    assert data.count_train_examples(str(tmp_path), "last") == 3
    assert data.count_train_examples(str(tmp_path), "all") == 1


def test_eval_elements(tmp_path):
    write_loo_dataset(str(tmp_path), [[5, 6, 7, 8, 9, 10], [1, 2, 3]], n_items=10)
    (batch,) = list(data.eval_dataset(str(tmp_path), "test", max_len=3, batch_size=8))
    assert sorted(batch) == sorted(EVAL_KEYS)
    np.testing.assert_array_equal(batch[INPUT_IDS].numpy(), [[7, 8, 9], [0, 1, 2]])
    np.testing.assert_array_equal(batch[HISTORY_IDS].numpy(), [[5, 6, 7, 8, 9], [1, 2, 0, 0, 0]])
    np.testing.assert_array_equal(batch[TARGET].numpy(), [10, 3])


def test_length_buckets_trim_padding_without_losing_samples(tmp_path):
    sequences = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [1, 3, 5, 7, 9, 11]]
    write_loo_dataset(str(tmp_path), sequences, n_items=17)
    batches = train_batches(str(tmp_path), max_len=12, batch_size=2, bucket_by_length=True)
    seen = []
    for batch in batches:
        inputs = batch[INPUT_IDS].numpy()
        # Trimmed: some row uses the first column, and the last column is always a real item.
        assert (inputs[:, 0] != 0).any() and (inputs[:, -1] != 0).all()
        seen.extend(batch[TARGET_IDS].numpy()[:, -1].tolist())
    assert sorted(seen) == sorted(s[-3] for s in sequences)


def test_trained_positions_are_counted_per_protocol(tmp_path):
    # Training sequences [5, 6, 7, 8] (3 targets) and [1, 2, 3, 4, 5, 6] (5 targets, 4 of them within max_len 4).
    write_loo_dataset(str(tmp_path), [[5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6, 7, 8]], n_items=10)
    assert data.count_trained_positions(str(tmp_path), "all", max_len=4) == 3 + 4
    assert data.count_trained_positions(str(tmp_path), "last", max_len=4) == 3 + 5
    # The count is what the training input really marks as trained (target_ids != 0).
    (batch,) = train_batches(str(tmp_path), max_len=4, batch_size=8, train_positions="all")
    assert int(tf.math.count_nonzero(batch[TARGET_IDS])) == 7


@pytest.mark.parametrize("seed", [0, 1, 2**31 - 1])
def test_the_epoch_seeded_shuffle_works_for_every_process_seed(tmp_path, seed):
    from mdcns_tf.training.batches import seed_process

    write_loo_dataset(str(tmp_path), [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [2, 4, 6, 8, 10]], n_items=10)
    epoch = tf.Variable(0, dtype=tf.int64)
    seed_process(seed)  # TF's seed check raised inside tf.data for a global seed of 0 (mod 2^31 - 1)
    try:
        orders = []
        for _ in range(2):
            config = DataConfig(dir=str(tmp_path), max_len=4, batch_size=8)
            (batch,) = list(data.train_dataset(config, seed, epoch=epoch))
            orders.append(batch["target_ids"].numpy()[:, -1].tolist())
        assert sorted(orders[0]) == sorted(orders[1]) == [3, 6, 8]
    finally:
        tf.random.set_seed(None)


@pytest.mark.parametrize("bucket_by_length", [False, True])
def test_autotune_is_off_unless_asked_and_batches_are_the_same(tmp_path, bucket_by_length):
    # Off by default: ending a pass over an autotuned pipeline can wait for tf.data's autotune thread (DataConfig).
    # It only tunes speed: the batches, in order, are the same either way.
    write_loo_dataset(str(tmp_path), [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [1, 3, 5, 7, 9]], n_items=12)
    config = {"max_len": 6, "batch_size": 2, "bucket_by_length": bucket_by_length}
    default = data.train_dataset(DataConfig(dir=str(tmp_path), **config), seed=0)
    tuned = data.train_dataset(DataConfig(dir=str(tmp_path), autotune=True, **config), seed=0)
    assert default.options().autotune.enabled is False and tuned.options().autotune.enabled is True
    for a, b in zip(default, tuned, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    evaluation = data.eval_dataset(str(tmp_path), "test", 6, 8, bucket_by_length=bucket_by_length)
    assert evaluation.options().autotune.enabled is False
    assert data.eval_dataset(str(tmp_path), "test", 6, 8, autotune=True).options().autotune.enabled is True


def test_train_users_restrict_training_to_the_listed_keys(tmp_path):
    # Users 1..3 ("ann", "bob", "cy"): training sequences [5, 6, 7, 8], [1, 2, 3, 4, 5, 6], [2, 3, 4].
    write_loo_dataset(str(tmp_path), [[5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6, 7, 8], [2, 3, 4, 5, 6]], n_items=10)
    (tmp_path / "users.txt").write_text("ann\nbob\ncy\n")
    (tmp_path / "grew.txt").write_text("cy\nann\nzed\n")  # zed: no user of this data (skipped)
    cfg = DataConfig(dir=str(tmp_path), max_len=4, batch_size=8, train_users=str(tmp_path / "grew.txt"))
    users = data.train_user_indices(cfg)
    np.testing.assert_array_equal(users, [1, 3])
    (batch,) = list(data.train_dataset(cfg, seed=0))
    assert sorted(batch[TARGET_IDS].numpy()[:, -1].tolist()) == [4, 8]  # ann's and cy's last training targets
    assert data.count_train_examples(str(tmp_path), "all", users=users) == 2
    assert data.count_trained_positions(str(tmp_path), "all", 4, users=users) == 3 + 2
    assert data.count_trained_positions(str(tmp_path), "all", 4) == 3 + 4 + 2  # everyone without the list
    record = data.train_users_record(cfg, users)["train_users"]
    assert record["users"] == 2 and len(record["sha256"]) == 64
    assert data.train_user_indices(DataConfig(dir=str(tmp_path))) is None
    (tmp_path / "none.txt").write_text("zed\n")
    with pytest.raises(ConfigError, match="none of the 1 keys of .* is a user of"):
        data.train_user_indices(DataConfig(dir=str(tmp_path), train_users=str(tmp_path / "none.txt")))
    with pytest.raises(ConfigError, match="data.train_users: .*No such file"):
        data.train_user_indices(DataConfig(dir=str(tmp_path), train_users=str(tmp_path / "missing.txt")))
