"""Config -> fit -> evaluate -> export.

    python -m mdcns_tf.train --config configs/quickstart.yaml [--set train.epochs=3 --set seed=1 ...]

Writes ``<output_dir>/metrics.json``, ``<output_dir>/config.yaml`` (the resolved config), TensorBoard logs in
``<output_dir>/tensorboard``, a resumable backup in ``<output_dir>/backup``, the best weights in
``<output_dir>/best`` and the SavedModel in ``<output_dir>/export/<model_name>/<version>``.

An interrupted run is resumed from its backup by the same config only (`mdcns_tf.run_state`); ``--restart``
deletes the backup and the best weights and trains from scratch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from typing import Any

import tensorflow as tf
import tf_keras as keras
import yaml

import mdcns_tf  # noqa: F401
from mdcns_tf import data, export, metrics, run_state
from mdcns_tf.callbacks import ModelSelection, ProgressLog, ShuffleEpoch, WorkerMeanLogs
from mdcns_tf.config import Config, ConfigError, load_config
from mdcns_tf.factory import build_model, eval_split, evaluate, resolved_reduction
from mdcns_tf.features import Metadata, check_record_ids, verify_records

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


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Workers in the cluster (1 without a cluster resolver: default and mirrored strategies)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    return max(1, len(resolver.cluster_spec().as_dict().get("worker", [])))


def write_metrics(out_dir: str, result: dict[str, Any]) -> None:
    """Writes ``metrics.json`` atomically (a reader never sees half a file)."""
    path = os.path.join(out_dir, "metrics.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)


def check_export(config: Config, out_dir: str) -> None:
    """Fails before the first step, not after training, when the export could not be written."""
    if not config.export.enabled:
        return
    base = os.path.join(out_dir, "export")
    taken = os.path.join(base, config.export.model_name, str(config.export.version))
    if config.export.version and os.path.lexists(taken):
        raise ConfigError(
            f"export.version: {taken} exists and versions are immutable; pick another number, or 0 for the next one"
        )
    try:
        export.check_target(base, config.export.model_name)
    except (ValueError, OSError) as e:
        raise ConfigError(f"export: cannot write under {base} ({e}); fix it or set export.enabled=false") from None


def train_input(config: Config, first_epoch: int) -> tuple[tf.data.Dataset, int, tf.Variable | None]:
    """(training batches, steps an epoch, the epoch variable that seeds the shuffle or None).

    One pass per epoch: the shuffle is seeded with the epoch (``first_epoch`` after a resume), so a resumed run reads
    the data in the uninterrupted order; with train.steps_per_epoch the data repeats and epochs do not align with
    passes, so the order after a resume is not the uninterrupted one.
    """
    cfg = config.data

    def batches(shuffle_buffer: int, epoch: tf.Variable | None = None) -> tf.data.Dataset:
        return data.train_dataset(
            cfg.dir,
            cfg.max_len,
            cfg.batch_size,
            cfg.train_positions,
            config.seed,
            shuffle_buffer,
            cfg.max_train_sequences,
            cfg.bucket_by_length,
            epoch=epoch,
        )

    if config.train.steps_per_epoch:
        return shard_by_data(batches(cfg.shuffle_buffer).repeat()), config.train.steps_per_epoch, None
    shuffle_epoch = tf.Variable(first_epoch, dtype=tf.int64, trainable=False, name="shuffle_epoch")
    train_ds = batches(cfg.shuffle_buffer, shuffle_epoch)
    # Tell Keras the exact number of batches an epoch yields. With an unknown count Keras runs each process's first
    # epoch until the input raises end-of-data inside one more train step, and that aborted step still runs its
    # data-independent updates (optimizer iterations + 1, a decay of the sparse embedding moments): harmless once,
    # but a resumed run would do it again and drift from an uninterrupted one. Length buckets make the count differ
    # from ceil(samples / batch) (one partial batch a bucket), but not from epoch to epoch (bucket sizes do not
    # depend on the order), so one unshuffled pass counts it.
    counting = batches(1)
    steps_per_epoch = int(counting.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    train_ds = train_ds.apply(tf.data.experimental.assert_cardinality(steps_per_epoch))
    return shard_by_data(train_ds), steps_per_epoch, shuffle_epoch


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


def run(config: Config, restart: bool = False) -> dict[str, Any]:
    """Trains, evaluates and exports as ``config`` says; returns what ``metrics.json`` holds.

    ``restart``: delete the backup and best weights ``output_dir`` holds and train from scratch (`run_state`).
    """
    metadata = Metadata.load(config.data.dir, verify=False)
    verify_records(config.data.dir, metadata, scan_ids=False)  # the fingerprint: no TensorFlow op
    check_data(config, metadata)
    strategy = make_strategy(config.train.distribute)
    if metadata.fingerprint is None:
        # Older metadata: its records' ids are scanned with TF ops, which must come after the strategy (a
        # multi-worker strategy configures the collective ops before the process's first op).
        check_record_ids(config.data.dir, metadata)
    out_dir = worker_dir(config.output_dir, strategy)
    check_export(config, out_dir)
    # Before config.yaml is rewritten: it tells which config an interrupted run's backup belongs to.
    chief = out_dir == config.output_dir
    first_epoch, digest = run_state.prepare(config, os.path.join(out_dir, "best"), restart, chief)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
    keras.utils.set_random_seed(config.seed)
    # Layers' dropout draws from `tf.random.Generator`s (variables in the checkpoint, a distinct stream per replica)
    # instead of TF1 stateful ops, whose state restarts with the process: a resumed run then drops the same units.
    keras.backend.experimental.enable_tf_random_generator()

    cfg = config.data
    steps = data.count_train_examples(cfg.dir, cfg.train_positions, cfg.max_train_sequences)
    train_ds, steps_per_epoch, shuffle_epoch = train_input(config, first_epoch)
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

    selection = ModelSelection(config.train.monitor, config.train.patience, os.path.join(out_dir, "best"), digest)
    progress = ProgressLog(config.train.epochs)
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
        callbacks=make_callbacks(config, strategy, selection, progress, shuffle_epoch),
        verbose=config.train.verbose,
    )
    train_seconds = time.perf_counter() - started
    run_state.finish(config, chief)
    if not selection.restore_best():
        log.warning(
            "no validated epoch set a best %s (validation_freq %d above the epochs run, or NaN metrics): "
            "evaluating and exporting the last epoch's weights",
            config.train.monitor,
            config.train.validation_freq,
        )

    result: dict[str, Any] = {
        "metric_version": metrics.METRIC_VERSION,
        "valid": evaluate(model, valid_ds),
        "best_epoch": selection.best_epoch,
        # Which weights the metrics and the export are of: the best validated epoch's, or the last epoch's.
        "weights": "best_epoch" if selection.best_epoch else "last_epoch",
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
    if not chief:  # a non-chief worker: its copies were only written to keep in step
        shutil.rmtree(out_dir, ignore_errors=True)
    log.info("valid %s", json.dumps(result["valid"]))
    if "test" in result:
        log.info("test %s", json.dumps(result["test"]))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (may name parents with `base:`)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="delete output_dir/backup and output_dir/best first and train from scratch (an interrupted run is "
        "otherwise resumed, and only by the config that started it)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = load_config(args.config, args.set)
        run(config, restart=args.restart)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
