"""The training batches of a run, in an order a resumed run reproduces."""

from __future__ import annotations

import tensorflow as tf

from mdcns_tf import data
from mdcns_tf.config import Config
from mdcns_tf.training.distribution import shard_by_data

# TensorFlow reduces seeds modulo 2^31 - 1.
_TF_SEED_MODULUS = 2**31 - 1


def seed_process(seed: int) -> None:
    """Seeds Python, NumPy and TensorFlow with ``seed`` (`keras.utils.set_random_seed`).

    `tf.random.get_seed` compares (global seed, op seed) with (0, 0); the epoch-seeded shuffle's op seed is a tensor,
    so with a global seed of 0 (mod 2^31 - 1) that comparison raises inside tf.data. Such seeds give TensorFlow the
    global seed 2^31 - 2 instead (Python and NumPy keep ``seed``).
    """
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    if seed % _TF_SEED_MODULUS == 0:
        tf.random.set_seed(_TF_SEED_MODULUS - 1)


def train_input(config: Config, first_epoch: int) -> tuple[tf.data.Dataset, int, tf.Variable | None]:
    """(training batches, steps an epoch, the epoch variable that seeds the shuffle or None).

    One pass per epoch: the shuffle is seeded with the epoch (``first_epoch`` after a resume), so a resumed run reads
    the data in the uninterrupted order; with train.steps_per_epoch the data repeats and epochs do not align with
    passes, so the order after a resume is not the uninterrupted one.
    """
    if config.train.steps_per_epoch:
        return shard_by_data(data.train_dataset(config.data, config.seed).repeat()), config.train.steps_per_epoch, None
    shuffle_epoch = tf.Variable(first_epoch, dtype=tf.int64, trainable=False, name="shuffle_epoch")
    train_ds = data.train_dataset(config.data, config.seed, epoch=shuffle_epoch)
    # Tell Keras the exact number of batches an epoch yields. With an unknown count Keras runs each process's first
    # epoch until the input raises end-of-data inside one more train step, and that aborted step still runs its
    # data-independent updates (optimizer iterations + 1, a decay of the sparse embedding moments): harmless once,
    # but a resumed run would do it again and drift from an uninterrupted one. Length buckets make the count differ
    # from ceil(samples / batch) (one partial batch a bucket), but not from epoch to epoch (bucket sizes do not
    # depend on the order), so one unshuffled pass (a shuffle buffer of 1) counts it.
    counting = data.train_dataset(config.data, config.seed, shuffle_buffer=1)
    steps_per_epoch = int(counting.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    train_ds = train_ds.apply(tf.data.experimental.assert_cardinality(steps_per_epoch))
    return shard_by_data(train_ds), steps_per_epoch, shuffle_epoch
