"""Shared fixtures: small datasets written straight in the feature-spec format (no Beam), seeded."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

import mdcns_tf  # noqa: F401
from mdcns_tf import features
from mdcns_tf.samplers import SamplingContext

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")


@pytest.fixture(autouse=True)
def default_keras_random_layers():
    """Every test starts and ends with Keras's default dropout RNG.

    `train.run` switches random layers to `tf.random.Generator`s for the whole process (their state is then a variable
    that checkpoints and exports carry); a test that trains must not change what a later test's model holds.
    """
    from tf_keras import backend  # the Keras the models use (TF_USE_LEGACY_KERAS)

    backend.experimental.disable_tf_random_generator()
    yield
    backend.experimental.disable_tf_random_generator()


def shared_file(*parts: str) -> str:
    """Path of a file in ../shared/data, or skip the test with the reason when it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real data not available: {path} is absent (it lives beside the repo, never inside it)")
    return path


def synthetic_sequences(n_users: int, n_items: int, seed: int, min_len: int = 5, max_len: int = 15) -> list[list[int]]:
    """Sequences that walk a fixed item cycle with some noise: next item = (item + step) mod n, learnable."""
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(n_users):
        length = int(rng.integers(min_len, max_len + 1))
        item = int(rng.integers(1, n_items + 1))
        sequence = []
        for _ in range(length):
            sequence.append(item)
            item = item % n_items + 1 if rng.random() < 0.85 else int(rng.integers(1, n_items + 1))
        sequences.append(sequence)
    return sequences


def write_loo_dataset(data_dir: str, sequences: list[list[int]], n_items: int) -> features.Metadata:
    """Leave-one-out records and metadata for ``sequences`` (user u = index u + 1)."""
    for split in features.SPLITS:
        os.makedirs(os.path.join(data_dir, split), exist_ok=True)
    item_counts = [0] * (n_items + 1)
    writers = {
        split: tf.io.TFRecordWriter(os.path.join(data_dir, split, f"part-0{features.TFRECORD_SUFFIX}"), options="GZIP")
        for split in features.SPLITS
    }
    for user, sequence in enumerate(sequences, start=1):
        writers["train"].write(features.make_example(user, sequence[:-2]))
        writers["valid"].write(features.make_example(user, sequence[:-2], sequence[-2]))
        writers["test"].write(features.make_example(user, sequence[:-1], sequence[-1]))
        for item in sequence[:-2]:
            item_counts[item] += 1
    for writer in writers.values():
        writer.close()
    n = len(sequences)
    total = sum(len(s) for s in sequences)
    metadata = features.Metadata(
        schema_version=features.SCHEMA_VERSION,
        n_users=n,
        n_items=n_items,
        item_counts=item_counts,
        split={"protocol": "loo", "seed": 0},
        counts={"rows_read": total, "rows_written": total, "rows_rejected": 0, "rows_filtered": 0},
        records={"train": n, "valid": n, "test": n},
    )
    metadata.save(data_dir)
    return metadata


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> str:
    """300 users over 60 items with a learnable next-item cycle, leave-one-out."""
    data_dir = str(tmp_path_factory.mktemp("tiny_dataset"))
    write_loo_dataset(data_dir, synthetic_sequences(300, 60, seed=0), 60)
    return data_dir


def scored_context(item_scores, states, target_ids, exclusion_ids, user_index=None) -> SamplingContext:
    """A sampler context whose score(l, j) = states[b, l] * item_scores[j] (1-d embeddings)."""
    target_ids = tf.constant(target_ids, tf.int32)
    batch = target_ids.shape[0]
    return SamplingContext(
        input_ids=tf.ones_like(target_ids),
        target_ids=target_ids,
        exclusion_ids=tf.constant(exclusion_ids, tf.int32),
        user_index=tf.constant(user_index if user_index is not None else np.arange(1, batch + 1), tf.int32),
        states=tf.constant(np.asarray(states, np.float32)[..., None]),
        item_embeddings=tf.constant(np.asarray(item_scores, np.float32)[:, None]),
    )
