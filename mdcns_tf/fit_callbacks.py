"""The callbacks of a training run's `fit`, chosen from the config and put in the order they must run."""

from __future__ import annotations

import os

import tensorflow as tf
import tf_keras as keras

from mdcns_tf.callbacks import ModelSelection, ProgressLog, ShuffleEpoch, WorkerMeanLogs
from mdcns_tf.config import Config
from mdcns_tf.distribution import num_workers


def make_callbacks(
    config: Config,
    strategy: tf.distribute.Strategy,
    selection: ModelSelection,
    progress: ProgressLog,
    shuffle_epoch: tf.Variable | None,
) -> list[keras.callbacks.Callback]:
    """The fit callbacks, in the order their ``on_epoch_end`` must run (logs fixed first, backup last)."""
    callbacks: list[keras.callbacks.Callback] = [progress, selection]
    if num_workers(strategy) > 1:
        callbacks.insert(0, WorkerMeanLogs(num_workers(strategy)))
    if shuffle_epoch is not None:
        callbacks.append(ShuffleEpoch(shuffle_epoch))
    if config.train.backup_and_restore:
        # Epoch-level: a run killed mid-epoch redoes that epoch from its start (Keras handles the chief/worker dirs).
        callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(config.output_dir, "backup")))
    if config.train.tensorboard:
        callbacks.append(
            keras.callbacks.TensorBoard(os.path.join(config.output_dir, "tensorboard"), update_freq="epoch")
        )
    return callbacks
