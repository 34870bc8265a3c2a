"""Checks a training run makes before building anything, each failure an error that says the fix, and
`started_run`, which makes them in order and claims the output folder."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

from mdcns_tf import data
from mdcns_tf.config import Config, ConfigError
from mdcns_tf.features import SPLITS, Metadata, check_record_ids, verify_records
from mdcns_tf.runs import lineage, ownership
from mdcns_tf.runs import state as run_state
from mdcns_tf.savedmodel import versions
from mdcns_tf.training import warm_start


@dataclasses.dataclass
class Start:
    """Where a checked run starts: its data, strategy, this worker's output folder, first epoch and identity."""

    metadata: Metadata
    strategy: Any  # tf.distribute.Strategy
    out_dir: str
    chief: bool
    first_epoch: int
    run: dict[str, str]
    warm_start: warm_start.Parent | None = None  # train.warm_start's parent run, checked


@contextlib.contextmanager
def started_run(config: Config, restart: bool = False) -> Iterator[Start]:
    """The checks of a training run before anything is built, in order, and the folders held for the block:
    ``output_dir`` usable (`ownership.check_output_dir`), ``data.dir`` locked shared, its metadata against the
    fingerprint, the vocabularies (`verify_records`) and the config (`check_data`), the parent run of a warm start
    (`warm_start.check`, before anything in ``output_dir`` is moved or deleted), the strategy, then the record scan
    (TF ops come after the strategy: a multi-worker strategy configures the collective ops before the process's
    first op), this worker's folder claimed and locked (`ownership.claim`), the export target (`check_export`) and
    the run's state (`run_state.prepare`: resume, or start fresh as a new run)."""
    from mdcns_tf.training.distribution import make_strategy, worker_dir

    ownership.check_output_dir(config.output_dir, config.data.dir)
    with contextlib.ExitStack() as held:
        held.callback(ownership.unlock, ownership.lock(config.data.dir, exclusive=False, what="data.dir"))
        metadata = Metadata.load(config.data.dir, verify=False)
        verify_records(config.data.dir, metadata, scan_ids=False)  # no TensorFlow op
        check_data(config, metadata)
        parent = warm_start.check(config, restart)
        strategy = make_strategy(config.train.distribute)
        check_record_ids(config.data.dir, metadata, SPLITS if metadata.fingerprint is None else ("train",))
        out_dir = worker_dir(config.output_dir, strategy)
        held.callback(ownership.unlock, ownership.claim(out_dir, config.data.dir))
        check_export(config, out_dir)
        chief = out_dir == config.output_dir
        data_print = lineage.data_fingerprint(config.data.dir, metadata)
        first_epoch, run = run_state.prepare(config, out_dir, data_print, restart, chief)
        yield Start(metadata, strategy, out_dir, chief, first_epoch, run, parent)


def check_data(config: Config, metadata: Metadata) -> None:
    """Fails early, with the fix, when the config and the dataset do not fit together."""
    for split in ("train", "valid"):
        if not data.has_split(config.data.dir, split):
            raise ConfigError(f"data.dir {config.data.dir!r} has no {split} TFRecords; run the pipeline first")
    if config.eval.test and not data.has_split(config.data.dir, "test"):
        raise ConfigError(f"data.dir {config.data.dir!r} has no test TFRecords; set eval.test=false or re-run")
    # A split with no user would measure 0.0 as if it had been measured (a user split whose fractions round down).
    for split in ("train", "valid", *(("test",) if config.eval.test else ())):
        if not metadata.records.get(split):
            raise ConfigError(
                f"data.dir {config.data.dir!r}: the {split} split holds no record, so nothing could be measured on "
                "it; re-run the pipeline with larger --valid_fraction / --test_fraction (or more users)"
                + (", or set eval.test=false" if split == "test" else "")
            )
    if metadata.n_items < 2:
        raise ConfigError(f"the dataset has {metadata.n_items} items; at least 2 are needed")
    if config.export.top_k > metadata.n_items:
        raise ConfigError(f"export.top_k ({config.export.top_k}) exceeds the number of items ({metadata.n_items})")
    if config.trainer == "mdcns" and config.mdcns.pool_size >= metadata.n_items:
        raise ConfigError(f"mdcns.pool_size ({config.mdcns.pool_size}) must be below n_items ({metadata.n_items})")


def check_export(config: Config, out_dir: str) -> None:
    """Fails before the first step, not after training, when the export could not be written."""
    if not config.export.enabled:
        return
    base = os.path.join(out_dir, "export")
    model_dir = os.path.join(base, config.export.model_name)
    for folder in (base, model_dir):
        if os.path.lexists(folder) and not os.path.isdir(folder):
            raise ConfigError(
                f"export: {folder} is a file, where the export's model folder goes: move it away, or export under "
                "another name (export.model_name, mdcns-export --model_name)"
            )
    taken = os.path.join(model_dir, str(config.export.version))
    if config.export.version and os.path.lexists(taken):
        raise ConfigError(
            f"export.version: {taken} exists and versions are immutable; pick another number, or 0 for the next one"
        )
    try:
        versions.check_target(base, config.export.model_name)
    except (ValueError, OSError) as e:
        raise ConfigError(
            f"export: cannot write under {base} ({e}); move what is in the way, fix its permissions, or set "
            "export.enabled=false (mdcns-export --run: choose another --model_name)"
        ) from None
