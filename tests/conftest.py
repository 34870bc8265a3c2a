"""Shared fixtures: small datasets written straight in the feature-spec format (no Beam), seeded."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import tensorflow as tf

import mdcns_tf  # noqa: F401
from mdcns_tf import features
from mdcns_tf.samplers import SamplingContext

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")


@pytest.fixture(autouse=True)
def root_logging_handlers_of_this_test_only():
    """The entry points install logging handlers on the root logger (`cli.setup_logging`); one that a test left
    behind would write to that test's captured, closed stream in every later test ("--- Logging error ---")."""
    import logging

    before = list(logging.root.handlers)
    yield
    logging.root.handlers[:] = before


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


def training_batch(n_items: int, max_len: int, batch: int = 4, seed: int = 0) -> dict[str, tf.Tensor]:
    """A training element (`mdcns_tf.batch` keys) of ``batch`` full-length random sequences of ids in
    ``[1, n_items]``: inputs `(batch, max_len)`, next-item targets, the whole sequence as exclusions, users 1..batch."""
    from mdcns_tf.batch import EXCLUSION_IDS, INPUT_IDS, TARGET_IDS, USER_INDEX

    sequences = np.random.default_rng(seed).integers(1, n_items + 1, size=(batch, max_len + 1))
    return {
        INPUT_IDS: tf.constant(sequences[:, :-1], tf.int32),
        TARGET_IDS: tf.constant(sequences[:, 1:], tf.int32),
        EXCLUSION_IDS: tf.constant(sequences, tf.int32),
        USER_INDEX: tf.constant(np.arange(1, batch + 1), tf.int32),
    }


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


# A child process counts as working while its CPU time or its log grows: on a loaded machine (load 5-7 on 2 cores) a
# worker may take many times its usual wall time, but a hung one (a collective that never completes) stops both.
STALL_SECONDS = 180.0
# The bound for CI even when a process keeps spinning.
PROCESS_LIMIT_SECONDS = 1800.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux ``/proc``); 0.0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_while_progressing(
    processes: Sequence[subprocess.Popen],
    logs: Sequence[str] = (),
    stall_seconds: float = STALL_SECONDS,
    limit_seconds: float = PROCESS_LIMIT_SECONDS,
) -> list[int]:
    """Waits until every process has exited and returns their exit codes. Raises `TimeoutError` when none of them
    used CPU time and no log grew for ``stall_seconds`` (hung, not slow), or after ``limit_seconds`` in all."""
    started = last_progress = time.monotonic()
    seen: tuple = ()
    while any(p.poll() is None for p in processes):
        now = time.monotonic()
        sizes = tuple(os.path.getsize(log) if os.path.exists(log) else 0 for log in logs)
        state = (round(sum(cpu_seconds(p.pid) for p in processes if p.poll() is None), 1), sizes)
        if state != seen:
            seen, last_progress = state, now
        if now - last_progress > stall_seconds:
            raise TimeoutError(f"no progress (CPU time or log output) for {stall_seconds:.0f}s")
        if now - started > limit_seconds:
            raise TimeoutError(f"still running after {limit_seconds:.0f}s")
        time.sleep(1.0)
    return [p.returncode for p in processes]


@pytest.fixture(scope="session")
def dask_cluster_address() -> Iterator[str]:
    """One scheduler and 2 single-threaded worker processes on 127.0.0.1 for every Dask test of the session
    (spawned: they import the repo's code, hence PYTHONPATH); skipped where dask[distributed] is not installed."""
    distributed = pytest.importorskip(
        "distributed", reason="dask[distributed] is not installed (pip install -e '.[dask]'): no Dask cluster to run on"
    )
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, saved]))
    try:
        with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster:
            yield cluster.scheduler_address
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
