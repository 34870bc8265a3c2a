"""Config -> fit -> evaluate -> export.

    python -m mdcns_tf.train --config configs/quickstart.yaml [--set train.epochs=3 --set seed=1 ...]

Writes ``<output_dir>/metrics.json``, ``<output_dir>/config.yaml`` (the resolved config), TensorBoard logs in
``<output_dir>/tensorboard``, a resumable backup in ``<output_dir>/backup`` and the SavedModel in
``<output_dir>/export/<model_name>/<version>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from typing import Any

import tensorflow as tf
import tf_keras as keras
import yaml

import mdcns_tf  # noqa: F401
from mdcns_tf import data, export, metrics
from mdcns_tf.config import Config, ConfigError, load_config
from mdcns_tf.factory import build_model, eval_split, evaluate, resolved_reduction
from mdcns_tf.features import Metadata

log = logging.getLogger("mdcns_tf.train")


def check_data(config: Config, metadata: Metadata) -> None:
    """Fails early, with the fix, when the config and the dataset do not fit together."""
    for split in ("train", "valid"):
        if not data.has_split(config.data.dir, split):
            raise ConfigError(f"data.dir {config.data.dir!r} has no {split} TFRecords; run the pipeline first")
    if config.eval.test and not data.has_split(config.data.dir, "test"):
        raise ConfigError(f"data.dir {config.data.dir!r} has no test TFRecords; set eval.test=false or re-run")
    if metadata.n_items < 2:
        raise ConfigError(f"the dataset has {metadata.n_items} items; at least 2 are needed")
    if config.export.top_k > metadata.n_items:
        raise ConfigError(f"export.top_k ({config.export.top_k}) exceeds the number of items ({metadata.n_items})")
    if config.trainer == "mdcns" and config.mdcns.pool_size >= metadata.n_items:
        raise ConfigError(f"mdcns.pool_size ({config.mdcns.pool_size}) must be below n_items ({metadata.n_items})")


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


def resumed_epoch(backup_dir: str) -> int:
    """The epoch `BackupAndRestore` will resume at (0 without a backup): the epoch-level backup in
    ``<backup_dir>/chief`` records the last completed epoch as ``ckpt_saved_epoch``."""
    latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if not latest:
        return 0
    try:
        saved = int(tf.train.load_variable(latest, "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    except (tf.errors.NotFoundError, ValueError):
        log.warning("backup %s has no ckpt_saved_epoch: resumed data order differs from an uninterrupted run", latest)
        return 0
    return saved + 1 if saved >= 0 else 0


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Workers in the cluster (1 without a cluster resolver: default and mirrored strategies)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    return max(1, len(resolver.cluster_spec().as_dict().get("worker", [])))


class WorkerMeanLogs(keras.callbacks.Callback):
    """Corrects the epoch logs of a multi-worker run before the other callbacks read them.

    Keras reduces what a custom ``train_step``/``test_step`` returns with its "auto" reduction, a SUM over workers
    under `MultiWorkerMirroredStrategy`, so a mean comes out multiplied by the number of workers (Keras replaces the
    logs with the cross-worker metric results only when a step returns every metric of the model, which ours do not).
    Validation values are re-read from the ranking trackers, which outside the replicas aggregate totals and counts
    over all workers (exact); training means are divided by the worker count (exact for equal shards).
    """

    def __init__(self, workers: int) -> None:
        super().__init__()
        self.workers = workers

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        trackers = {"val_" + t.name: t for t in getattr(self.model, "ranking_trackers", {}).values()}
        for key in list(logs):
            if key in trackers:
                logs[key] = float(trackers[key].result())
            elif not key.startswith("val_"):
                logs[key] = float(logs[key]) / self.workers


class ShuffleEpoch(keras.callbacks.Callback):
    """Keeps the epoch variable that seeds the training shuffle (`data.train_dataset`) at the epoch about to run.

    Keras creates an epoch's data iterator after the previous epoch's ``on_epoch_end`` and before its own
    ``on_epoch_begin``, so the next epoch is set at the end of each epoch; the first one is set before `fit`.
    """

    def __init__(self, variable: tf.Variable) -> None:
        super().__init__()
        self.variable = variable

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.variable.assign(epoch + 1)


class ModelSelection(keras.callbacks.Callback):
    """Early stopping on a validation metric with the best weights kept on disk.

    Unlike `keras.callbacks.EarlyStopping`, its state (best value, best epoch, epochs without improvement) and the
    best weights survive a killed run, so a run resumed by `BackupAndRestore` selects the same model.
    """

    def __init__(self, monitor: str, patience: int, directory: str) -> None:
        super().__init__()
        self.monitor = "val_" + metrics.keras_name(monitor)
        self.patience = patience
        self.directory = directory
        self.state_path = os.path.join(directory, "state.json")
        self.weights_path = os.path.join(directory, "weights")
        self.best = -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.history: list[dict[str, float]] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        os.makedirs(self.directory, exist_ok=True)
        if os.path.exists(self.state_path):
            with open(self.state_path) as f:
                state = json.load(f)
            self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
            self.history = state.get("history", [])
        self.resuming = True

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        # A run killed after this callback saved epoch e but before `BackupAndRestore` did resumes at epoch e
        # again: forget what was recorded for it and later epochs, and replay the selection state.
        if getattr(self, "resuming", False):
            self.resuming = False
            self.history = [h for h in self.history if h["epoch"] <= epoch]
            self.best, self.best_epoch, self.wait = -math.inf, 0, 0
            for h in self.history:
                value = h.get(self.monitor)
                if value is None:
                    continue
                if value > self.best:
                    self.best, self.best_epoch, self.wait = value, h["epoch"], 0
                else:
                    self.wait += 1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        # wall_time (unix seconds at the epoch's end, validation included): time-to-quality curves measure from
        # the moment a benchmark launched the process, start-up included.
        self.history.append({"epoch": epoch + 1, "wall_time": time.time(), **{k: float(v) for k, v in logs.items()}})
        value = logs.get(self.monitor)
        if value is not None:
            if value > self.best:
                self.best, self.best_epoch, self.wait = float(value), epoch + 1, 0
                self.model.save_weights(self.weights_path)
            else:
                self.wait += 1
                if self.wait >= self.patience:
                    log.info("early stop: no %s improvement for %d evaluations", self.monitor, self.wait)
                    self.model.stop_training = True
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "history": self.history}, f)
        os.replace(tmp, self.state_path)

    def restore_best(self) -> None:
        if os.path.exists(self.weights_path + ".index"):
            self.model.load_weights(self.weights_path).expect_partial()


class ProgressLog(keras.callbacks.Callback):
    """One log line an epoch with the epoch time and an ETA, and the sampler's end-of-epoch hook."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.epoch_seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self.started
        self.epoch_seconds.append(seconds)
        remaining = (self.epochs - epoch - 1) * sum(self.epoch_seconds) / len(self.epoch_seconds)
        monitored = {k: round(float(v), 4) for k, v in (logs or {}).items() if k in ("loss", "val_ndcg_20")}
        log.info("epoch %d/%d took %.1fs, ETA %.0fs at most; %s", epoch + 1, self.epochs, seconds, remaining, monitored)
        for hook in getattr(self.model, "epoch_end_hooks", lambda: [])():
            hook(epoch)


def write_metrics(out_dir: str, result: dict[str, Any]) -> None:
    """Writes ``metrics.json`` atomically (a reader never sees half a file)."""
    path = os.path.join(out_dir, "metrics.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)


def run(config: Config) -> dict[str, Any]:
    """Trains, evaluates and exports as ``config`` says; returns what ``metrics.json`` holds."""
    metadata = Metadata.load(config.data.dir)
    check_data(config, metadata)
    strategy = make_strategy(config.train.distribute)
    out_dir = worker_dir(config.output_dir, strategy)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
    keras.utils.set_random_seed(config.seed)
    # Layers' dropout draws from `tf.random.Generator`s (variables in the checkpoint, a distinct stream per replica)
    # instead of TF1 stateful ops, whose state restarts with the process: a resumed run then drops the same units.
    keras.backend.experimental.enable_tf_random_generator()

    cfg = config.data
    steps = data.count_train_examples(cfg.dir, cfg.train_positions, cfg.max_train_sequences)
    steps_per_epoch = config.train.steps_per_epoch  # or, below, the exact count of one pass
    backup_dir = os.path.join(config.output_dir, "backup")
    # One pass per epoch: the shuffle is seeded with the epoch (resumable); with train.steps_per_epoch the data
    # repeats and epochs do not align with passes, so the order after a resume is not the uninterrupted one.
    shuffle_epoch = None
    if not config.train.steps_per_epoch:
        first_epoch = resumed_epoch(backup_dir) if config.train.backup_and_restore else 0
        shuffle_epoch = tf.Variable(first_epoch, dtype=tf.int64, trainable=False, name="shuffle_epoch")
    train_ds = data.train_dataset(
        cfg.dir,
        cfg.max_len,
        cfg.batch_size,
        cfg.train_positions,
        config.seed,
        cfg.shuffle_buffer,
        cfg.max_train_sequences,
        cfg.bucket_by_length,
        epoch=shuffle_epoch,
    )
    if config.train.steps_per_epoch:
        train_ds = train_ds.repeat()
    else:
        # Tell Keras the exact number of batches an epoch yields. With an unknown count Keras runs each process's
        # first epoch until the input raises end-of-data inside one more train step, and that aborted step still
        # runs its data-independent updates (optimizer iterations + 1, a decay of the sparse embedding moments):
        # harmless once, but a resumed run would do it again and drift from an uninterrupted one. Length buckets
        # make the count differ from ceil(samples / batch) (one partial batch a bucket), but not from epoch to
        # epoch (bucket sizes do not depend on the order), so one unshuffled pass counts it.
        counting = data.train_dataset(
            cfg.dir,
            cfg.max_len,
            cfg.batch_size,
            cfg.train_positions,
            config.seed,
            1,
            cfg.max_train_sequences,
            cfg.bucket_by_length,
        )
        steps_per_epoch = int(counting.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
        train_ds = train_ds.apply(tf.data.experimental.assert_cardinality(steps_per_epoch))
    train_ds = shard_by_data(train_ds)
    valid_ds = shard_by_data(eval_split(config, "valid"))

    with strategy.scope():
        model = build_model(config, metadata)
        model.build_for_input(cfg.max_len)
        model.compile(
            optimizer=keras.optimizers.Adam(config.train.learning_rate, weight_decay=config.train.weight_decay or None),
            jit_compile=config.train.jit_compile,
        )

    if resolved_reduction(config) == "epoch":
        positions = data.count_trained_positions(cfg.dir, cfg.train_positions, cfg.max_len, cfg.max_train_sequences)
        # The mean trained positions of a full batch: every trained position then has weight 1 / this in its step.
        model.positions_per_batch = positions / max(steps, 1) * cfg.batch_size
        log.info("loss.reduction epoch: a step's loss is its positions' sum / %.1f", model.positions_per_batch)

    selection = ModelSelection(config.train.monitor, config.train.patience, os.path.join(out_dir, "best"))
    progress = ProgressLog(config.train.epochs)
    callbacks: list[keras.callbacks.Callback] = [progress, selection]
    if num_workers(strategy) > 1:
        callbacks.insert(0, WorkerMeanLogs(num_workers(strategy)))
    if shuffle_epoch is not None:
        callbacks.append(ShuffleEpoch(shuffle_epoch))
    if config.train.backup_and_restore:
        # Epoch-level: a run killed mid-epoch redoes that epoch from its start (Keras handles the chief/worker dirs).
        callbacks.append(keras.callbacks.BackupAndRestore(backup_dir))
    if config.train.tensorboard:
        callbacks.append(
            keras.callbacks.TensorBoard(os.path.join(config.output_dir, "tensorboard"), update_freq="epoch")
        )

    log.info(
        "training %s (%s, sampler %s, loss %s): %d samples, %d steps/epoch, up to %d epochs",
        config.trainer,
        config.model.backbone,
        config.sampler.name,
        config.loss.name,
        steps,
        steps_per_epoch,
        config.train.epochs,
    )
    started = time.perf_counter()
    history = model.fit(
        train_ds,
        validation_data=valid_ds,
        epochs=config.train.epochs,
        steps_per_epoch=steps_per_epoch if config.train.steps_per_epoch else None,
        validation_freq=config.train.validation_freq,
        callbacks=callbacks,
        verbose=config.train.verbose,
    )
    train_seconds = time.perf_counter() - started
    selection.restore_best()

    result: dict[str, Any] = {
        "metric_version": metrics.METRIC_VERSION,
        "valid": evaluate(model, valid_ds),
        "best_epoch": selection.best_epoch,
        "epochs_run": len(selection.history),
        "train_seconds": round(train_seconds, 2),
        "seconds_per_epoch": [round(s, 2) for s in progress.epoch_seconds],
        "steps_per_epoch": steps_per_epoch,
        "history": selection.history or [{"epoch": i + 1} for i in range(len(history.epoch))],
        "dataset": {"dir": cfg.dir, "n_users": metadata.n_users, "n_items": metadata.n_items, "split": metadata.split},
    }
    if config.eval.test:
        test_ds = shard_by_data(eval_split(config, "test"))
        result["test"] = evaluate(model, test_ds)
    # Metrics are on disk before the export starts, so a failed export never costs the training run's results.
    write_metrics(out_dir, result)
    if config.export.enabled:
        # data_dir: its items.txt becomes the vocabulary of the serve_keys signature (raw item keys in and out).
        result["export_path"] = export.export_saved_model(
            model.encoder,
            os.path.join(out_dir, "export"),
            config.export.model_name,
            cfg.max_len,
            config.export.top_k,
            config.export.version,
            data_dir=cfg.dir,
        )
        write_metrics(out_dir, result)
    if out_dir != config.output_dir:  # a non-chief worker: its copies were only written to keep in step
        shutil.rmtree(out_dir, ignore_errors=True)
    log.info("valid %s", json.dumps(result["valid"]))
    if "test" in result:
        log.info("test %s", json.dumps(result["test"]))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (may name parents with `base:`)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = load_config(args.config, args.set)
        run(config)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
