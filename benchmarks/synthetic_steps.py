"""Synthetic training steps that the speed benchmarks share: a batch shape, stub metadata with Zipf-like counts,
uniform random full-length batches (no padding: the worst case for a dense backbone) and a loop of steps."""

from __future__ import annotations

import dataclasses
from typing import Any

from mdcns_tf.batch import EXCLUSION_IDS, HISTORY_IDS, INPUT_IDS, TARGET, TARGET_IDS, USER_INDEX


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int = 256
    max_len: int = 50
    dim: int = 64
    n_items: int = 12_101
    n_users: int = 22_363
    eval_batch: int = 512


def stub_metadata(shape: Shape) -> Any:
    """A `Metadata` with Zipf-like item counts, so the popularity sampler draws from a realistic distribution."""
    from mdcns_tf.features import SCHEMA_VERSION, Metadata

    counts = [0] + [max(1, int(1000 / (rank**0.8))) for rank in range(1, shape.n_items + 1)]
    return Metadata(
        schema_version=SCHEMA_VERSION,
        n_users=shape.n_users,
        n_items=shape.n_items,
        item_counts=counts,
        split={"protocol": "user", "seed": 0},
        counts={},
        records={},
    )


def synthetic_batches(shape: Shape, count: int, seed: int) -> tuple[list[dict], dict]:
    """``count`` training batches (full-length sequences: with dense backbones padding costs what a real token
    costs, so tokens/s = batch x max_len / step time) and one evaluation batch."""
    import tensorflow as tf

    rng = tf.random.Generator.from_seed(seed)

    def ids(*dims: int) -> tf.Tensor:
        return rng.uniform(dims, 1, shape.n_items + 1, dtype=tf.int32)

    train = []
    for _ in range(count):
        sequence = ids(shape.batch, shape.max_len + 1)
        train.append(
            {
                INPUT_IDS: sequence[:, :-1],
                TARGET_IDS: sequence[:, 1:],
                EXCLUSION_IDS: sequence,
                USER_INDEX: rng.uniform([shape.batch], 1, shape.n_users + 1, dtype=tf.int32),
            }
        )
    history = ids(shape.eval_batch, shape.max_len)
    evaluation = {
        INPUT_IDS: history,
        HISTORY_IDS: history,
        TARGET: ids(shape.eval_batch),
        USER_INDEX: rng.uniform([shape.eval_batch], 1, shape.n_users + 1, dtype=tf.int32),
    }
    return train, evaluation


def run_steps(fn: Any, batches: list, steps: int) -> None:
    """``steps`` calls of ``fn`` over ``batches``; the last output is read back so the work is finished."""
    out = None
    for i in range(steps):
        out = fn(batches[i % len(batches)])
    if out is not None:
        next(iter(out.values())).numpy()
