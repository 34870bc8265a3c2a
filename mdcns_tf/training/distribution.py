"""`tf.distribute` for training: the strategy of ``train.distribute``, where each worker writes, input sharding."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from mdcns_tf.config import ConfigError


def check_cluster(name: str) -> None:
    """``multi_worker`` needs a usable ``TF_CONFIG``; says what is missing before TensorFlow tries to connect."""
    if name != "multi_worker":
        return
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        raise ConfigError(
            "train.distribute=multi_worker needs the TF_CONFIG environment variable on every worker, e.g. "
            '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}} '
            "(see docs/distributed.md); use train.distribute=mirrored for the devices of one machine"
        )
    try:
        tf_config = json.loads(raw)
        workers = tf_config["cluster"]["worker"]
        task = tf_config["task"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"TF_CONFIG is not a cluster spec with cluster.worker and task.type/index: {e!r}") from None
    if task.get("type") == "worker" and not 0 <= index < len(workers):
        raise ConfigError(f"TF_CONFIG task.index {index} is outside cluster.worker ({len(workers)} workers)")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy of ``train.distribute``. Call it before any other TensorFlow op: a
    `MultiWorkerMirroredStrategy` configures the collective ops of the process and must come first."""
    check_cluster(name)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def worker_dir(directory: str, strategy: tf.distribute.Strategy) -> str:
    """Where this worker writes what would otherwise go to ``directory``.

    The chief (and a single-worker run) writes to ``directory`` itself; the other workers of a multi-worker run
    write to ``directory/workertemp_<task>``, deleted when the run ends. As in the TF multi-worker Keras guide every
    worker must still save (saving reads variables that are synchronised across workers), but only the chief's copy
    is kept, so two workers never write the same file.
    """
    if strategy.extended.should_checkpoint:
        return directory
    return os.path.join(directory, f"workertemp_{strategy.cluster_resolver.task_id}")


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Auto-shard by element, not by file: a dataset usually has a single TFRecord file per split, and FILE
    sharding needs at least one file per worker (with fewer, workers would read nothing or TF falls back with a
    warning). Each worker reads all files and keeps every n-th element; a no-op on one worker."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Workers in the cluster (1 without a cluster resolver: default and mirrored strategies)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    return max(1, len(resolver.cluster_spec().as_dict().get("worker", [])))
