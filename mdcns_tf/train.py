"""Config -> fit -> evaluate -> export.

    python -m mdcns_tf.train --config configs/quickstart.yaml [--set train.epochs=3 --set seed=1 ...]
    mdcns-train --config quickstart        # a config shipped with the package, by name

Writes ``<output_dir>/metrics.json``, ``<output_dir>/config.yaml`` (the resolved config), TensorBoard logs in
``<output_dir>/tensorboard``, a resumable backup in ``<output_dir>/backup``, the best weights in
``<output_dir>/best`` and the SavedModel in ``<output_dir>/export/<model_name>/<version>``. A config that sets no
``output_dir`` writes to ``runs/<config file name>``. ``metrics.json`` and the export's
``assets.extra/model_card.json`` record what the run was made from (`mdcns_tf.runs.provenance`).

An interrupted run is resumed from its backup by the same config on the same data only (`mdcns_tf.runs.state`);
``--restart`` deletes the backup and the best weights and trains from scratch. A run holds ``output_dir`` locked
while it runs (a second run there is refused) and deletes or replaces only what a record of a run proves the
trainer wrote (`mdcns_tf.runs.ownership`): a fresh run moves the previous run's ``metrics.json``, ``config.yaml``
and TensorBoard events to ``previous_runs/<run id>/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import yaml

import mdcns_tf  # noqa: F401  (sets the TensorFlow environment before anything imports it)
from mdcns_tf import cli, shipped_configs
from mdcns_tf.config import Config, ConfigError
from mdcns_tf.config_loader import load_config, merged_yaml
from mdcns_tf.features import DataFolderError
from mdcns_tf.runs import provenance
from mdcns_tf.runs.ownership import FolderInUseError

# TensorFlow is imported by the functions that train, not here: `--help` and usage errors answer at once.
if TYPE_CHECKING:
    from mdcns_tf.features import Metadata
    from mdcns_tf.training.preflight import Start
    from mdcns_tf.training.retrieval_model import RetrievalModel

log = logging.getLogger("mdcns_tf.train")


def build_model(config: Config, metadata: Metadata) -> RetrievalModel:
    """`mdcns_tf.training.factory.build_model`, called through this module's name so that a test can wrap it and see the
    model `run` trains."""
    from mdcns_tf.training import factory

    return factory.build_model(config, metadata)


def run(config: Config, restart: bool = False) -> dict[str, Any]:
    """Trains, evaluates and exports as ``config`` says; returns what ``metrics.json`` holds.

    ``restart``: delete the backup and best weights ``output_dir`` holds and train from scratch (`run_state`). The
    checks before anything is built, and the output folder's lock held until the run ends: `preflight.started_run`.
    """
    from mdcns_tf.training.preflight import started_run

    with started_run(config, restart) as start:
        return _train(config, start)


def _train(config: Config, start: Start) -> dict[str, Any]:
    import tf_keras as keras

    from mdcns_tf import data, metrics
    from mdcns_tf.runs import ownership
    from mdcns_tf.runs import state as run_state
    from mdcns_tf.runs.metrics_file import write_metrics
    from mdcns_tf.savedmodel import publish
    from mdcns_tf.training.batches import seed_process, train_input
    from mdcns_tf.training.callbacks import ModelSelection, ProgressLog, StopOnDivergence, make_callbacks
    from mdcns_tf.training.distribution import shard_by_data
    from mdcns_tf.training.factory import eval_split, evaluate, prepare_for_training, resolved_reduction
    from mdcns_tf.training.warm_start import apply as warm_start

    metadata, strategy, out_dir, chief = start.metadata, start.strategy, start.out_dir, start.chief
    with open(os.path.join(out_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
    # Taken before training: the code, libraries and command that the run starts with.
    record = provenance.run_record(config.to_dict(), config.data.dir, metadata.fingerprint)
    seed_process(config.seed)
    # Layers' dropout draws from `tf.random.Generator`s (variables in the checkpoint, a distinct stream per replica)
    # instead of TF1 stateful ops, whose state restarts with the process: a resumed run then drops the same units.
    keras.backend.experimental.enable_tf_random_generator()

    cfg = config.data
    users = data.train_user_indices(cfg)  # None: every user
    record.update(data.train_users_record(cfg, users))
    steps = data.count_train_examples(cfg.dir, cfg.train_positions, cfg.max_train_sequences, users)
    train_ds, steps_per_epoch, shuffle_epoch = train_input(config, start.first_epoch)
    valid_ds = shard_by_data(eval_split(config, "valid"))
    # eval.valid_users: model selection on a fixed sample of the validation users (the final valid on every one).
    selection_ds, valid_sample = valid_ds, data.selection_sample(config)
    if valid_sample is not None:
        log.info("model selection on %s validation users (eval.valid_users)", valid_sample.record())
        selection_ds = valid_ds if valid_sample.whole else shard_by_data(data.sample_dataset(config, valid_sample))

    with strategy.scope():
        model = build_model(config, metadata)
        prepare_for_training(model, config)
        record.update(warm_start(model, config, start))  # before BackupAndRestore restores a resumed run

    if resolved_reduction(config) == "epoch":
        positions = data.count_trained_positions(
            cfg.dir, cfg.train_positions, cfg.max_len, cfg.max_train_sequences, users
        )
        # The mean trained positions of a full batch: every trained position then has weight 1 / this in its step.
        model.positions_per_batch = positions / max(steps, 1) * cfg.batch_size
        log.info("loss.reduction epoch: a step's loss is its positions' sum / %.1f", model.positions_per_batch)

    selection = ModelSelection(
        config.train.monitor,
        config.train.patience,
        os.path.join(out_dir, "best"),
        start.run,
        max_seconds=config.train.max_minutes * 60,
    )
    progress = ProgressLog(config.train.epochs)
    divergence = StopOnDivergence()
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
        validation_data=selection_ds,
        epochs=config.train.epochs,
        steps_per_epoch=steps_per_epoch if config.train.steps_per_epoch else None,
        validation_freq=config.train.validation_freq,
        callbacks=make_callbacks(config, strategy, selection, progress, divergence, shuffle_epoch),
        verbose=config.train.verbose,
    )
    train_seconds = time.perf_counter() - started
    divergence.check(config.train.learning_rate)
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
        "valid_users": "all",  # what "valid" is measured on; model selection's users, if a sample: "valid_sample"
        "best_epoch": selection.best_epoch,
        # Which weights the metrics and the export are of: the best validated epoch's, or the last epoch's.
        "weights": "best_epoch" if selection.best_epoch else "last_epoch",
        "epochs_run": len(selection.history),
        "stopped_by": selection.stopped_by or "epochs",  # patience, time_budget (train.max_minutes) or epochs
        "train_seconds": round(train_seconds, 2),
        "seconds_per_epoch": [round(s, 2) for s in progress.epoch_seconds],
        "steps_per_epoch": steps_per_epoch,
        "history": selection.history or [{"epoch": i + 1} for i in range(len(history.epoch))],
        "dataset": {"dir": cfg.dir, "n_users": metadata.n_users, "n_items": metadata.n_items, "split": metadata.split},
        "run": start.run,  # the identity best/state.json and the export's model card carry too
        "provenance": record,
    }
    if valid_sample is not None:
        # The selected weights on the sample that chose them (history and best_epoch are on it too).
        result["valid_sample"] = {**valid_sample.record(), "metrics": evaluate(model, selection_ds)}
    if config.eval.test:
        test_ds = shard_by_data(eval_split(config, "test"))
        result["test"] = evaluate(model, test_ds)
    # Metrics are on disk before the export starts, so a failed export never costs the training run's results.
    write_metrics(out_dir, result)
    if config.export.enabled:
        summary = {k: result[k] for k in ("valid", "test", "best_epoch", "weights") if k in result}
        # data_dir: its items.txt becomes the vocabulary of the serve_keys signature (raw item keys in and out).
        result["export_path"] = publish.export_saved_model(
            model.encoder,
            os.path.join(out_dir, "export"),
            config.export.model_name,
            cfg.max_len,
            config.export.top_k,
            config.export.version,
            data_dir=cfg.dir,
            model_card={"metrics": summary, "run": start.run, "provenance": record},
            index=config.export.index,
            rescore=config.export.rescore,
        )
        write_metrics(out_dir, result)
    if not chief:  # a non-chief worker: its copies were only written to keep in step
        ownership.discard(out_dir)
    log.info("valid %s", json.dumps(result["valid"]))
    if "test" in result:
        log.info("test %s", json.dumps(result["test"]))
    return result


def resolve_config(paths: str | list[str], overrides: list[str]) -> Config:
    """The config of ``--config FILE [FILE ...]`` (files or shipped configs' names, later ones winning) and ``--set``
    overrides.

    A config that sets no ``output_dir`` (in its files or their ``base:`` parents) writes to ``runs/<last file's
    name>``, never to the code's default folder, which belongs to the quickstart; ``--set output_dir=...`` still wins.
    """
    files = [shipped_configs.resolve(path) for path in ([paths] if isinstance(paths, str) else paths)]
    if "output_dir" not in merged_yaml(files):
        stem = os.path.splitext(os.path.basename(files[-1]))[0]
        overrides = [f"output_dir={json.dumps(os.path.join('runs', stem))}", *overrides]
    return load_config(files, overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("mdcns_tf.train", "mdcns-train", __doc__)
    parser.add_argument(
        "--config",
        required=True,
        nargs="+",
        metavar="FILE",
        help="YAML config(s), each a file (may name parents with `base:`) or a shipped config's name; a later file's "
        "keys win (e.g. --config beauty_sasrec_mdcns my_data.yaml)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="delete output_dir/backup and output_dir/best first and train from scratch (an interrupted run is "
        "otherwise resumed, and only by the config that started it)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run_command(
        lambda: run(resolve_config(args.config, args.set), restart=args.restart),
        (ConfigError, FileNotFoundError, DataFolderError, FolderInUseError),
    )


if __name__ == "__main__":
    sys.exit(main())
