"""Which run an ``output_dir`` holds: its identity (run id, config hash, data fingerprint), recorded with the backup,
the best weights, ``metrics.json`` and ``run_manifest.json``.

What a training run keeps in ``<output_dir>`` between processes:

- ``backup/chief/``: Keras `BackupAndRestore` checkpoints (deleted by Keras when training ends), and
  ``backup/run.json`` = the run's `identity`, written before the first step and deleted with the backup (so is
  ``backup/warm_start.json``, what a warm-started run took from its parent: `mdcns_tf.training.warm_start`);
- ``best/state.json``: the model-selection state (``best``, ``best_epoch``, ``wait``, ``history``) with the run's
  identity, and ``best/weights*``, the weights of the best validated epoch;
- ``run_manifest.json``: what the run owns in the folder (`mdcns_tf.runs.ownership`).

`prepare` runs before any graph is built, with the folder locked. A completed backup is resumed only by the config
that wrote it (same hash) on the data it was trained on (same data fingerprint); anything else stops with a
`RunStateError` that says how to start over (``--restart``, which deletes ``backup/`` and ``best/``). Without a
backup the run starts fresh under a new run id: it deletes a previous run's ``best/``, whose weights must never be
restored into this run, and moves its records aside, but only what a record proves the trainer's. Backups written
before the hash was recorded are matched against the ``config.yaml`` of the run that wrote them (it is rewritten
only once the checks pass); backups written before the data fingerprint was recorded resume with a warning.

The hash covers the resolved config except ``output_dir`` (a run folder may be moved or copied) and the keys that
cannot change the trained weights (`IGNORED`). Like the benchmark grid's cell hash it is taken over the keys whose
value differs from the code's defaults, so a later commit that adds a key whose default keeps the old behaviour does
not strand a killed run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import time
from typing import Any

import yaml

from mdcns_tf.config import Config, ConfigError
from mdcns_tf.config_loader import differences_from_defaults
from mdcns_tf.runs import ownership

log = logging.getLogger("mdcns_tf.runs.state")

BACKUP_RECORD = "run.json"
WARM_START_RECORD = "warm_start.json"
STATE_FILE = "state.json"
HASH_KEY = "config_hash"
DATA_KEY = "data_fingerprint"
RUN_KEY = "run_id"
# Keys (or key prefixes ending in ".") left out of the hash: progress output, logs, the final test pass, the export.
IGNORED = ("output_dir", "train.verbose", "train.tensorboard", "eval.test", "export.")
_EPOCH_VARIABLE = "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"


class RunStateError(ConfigError):
    """``output_dir`` holds state this run must not use or cannot read; the message says how to start over."""


def config_hash(config_dict: dict[str, Any]) -> str:
    """16 hex digits identifying what ``config_dict`` (the form of `Config.to_dict`) trains."""
    differences = {
        key: value for key, value in differences_from_defaults(config_dict).items() if not key.startswith(IGNORED)
    }
    return hashlib.sha256(json.dumps(differences, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def new_run_id() -> str:
    """A run id: UTC start time and 6 random hex digits (``20260101T120000Z-3fa2c1``)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def identity(run_id: str, digest: str, data_fingerprint: str) -> dict[str, str]:
    """What every record of a run carries: ``{run_id, config_hash, data_fingerprint}``."""
    return {RUN_KEY: run_id, HASH_KEY: digest, DATA_KEY: data_fingerprint}


def restart_hint(output_dir: str) -> str:
    """How to start over, for the end of an error message."""
    return (
        f"rerun with --restart to delete {os.path.join(output_dir, 'backup')} and {os.path.join(output_dir, 'best')} "
        "and train from scratch, or choose another output_dir"
    )


# -- reading -------------------------------------------------------------------------------------------------------


def read_through(prefix: str) -> None:
    """Reads every tensor of the checkpoint ``prefix``: a truncated or overwritten file fails here, not inside fit."""
    import tensorflow as tf  # here: this module is imported by commands whose --help must not wait for it

    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)


def unreadable(error: Exception) -> str:
    return getattr(error, "message", None) or str(error) or type(error).__name__  # OpError: its message


# What reading a damaged checkpoint raises: OpError (bad magic number, CRC), IndexError (short data file), ...
def checkpoint_errors() -> tuple[type[Exception], ...]:
    import tensorflow as tf

    return (tf.errors.OpError, ValueError, IndexError, OSError)


def latest_backup(backup_dir: str, output_dir: str) -> str | None:
    """The checkpoint a resumed run restores, read through once; None without a completed backup.

    The checkpoint manager writes its ``checkpoint`` index last and atomically: without it there is no backup (or
    only a first one cut short by a kill), and a run starts fresh. An index that names nothing readable is corrupt.
    """
    chief = os.path.join(backup_dir, "chief")
    if not os.path.exists(os.path.join(chief, "checkpoint")):
        return None
    try:
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(chief)
        if latest is None:
            raise ValueError("its 'checkpoint' index names no checkpoint")
        read_through(latest)
    except checkpoint_errors() as e:
        raise RunStateError(
            f"the backup in {chief} cannot be read ({unreadable(e)}); {restart_hint(output_dir)}"
        ) from None
    return latest


def resumed_epoch(latest: str | None) -> int:
    """The epoch `BackupAndRestore` resumes at from the checkpoint ``latest`` (0 without one): the epoch-level
    backup records the last completed epoch as ``ckpt_saved_epoch``."""
    if latest is None:
        return 0
    import tensorflow as tf

    try:
        saved = int(tf.train.load_variable(latest, _EPOCH_VARIABLE))
    except (tf.errors.NotFoundError, ValueError):
        log.warning("backup %s has no ckpt_saved_epoch: resumed data order differs from an uninterrupted run", latest)
        return 0
    return saved + 1 if saved >= 0 else 0


def _check_state(state: Any) -> None:
    """Raises `ValueError` naming what is wrong unless ``state`` is a model-selection state."""
    if not isinstance(state, dict):
        raise ValueError(f"expected a JSON object, got {type(state).__name__}")
    best, best_epoch, wait, history = (state.get(k) for k in ("best", "best_epoch", "wait", "history"))
    if not isinstance(best, int | float) or isinstance(best, bool) or math.isnan(best):
        raise ValueError(f"'best' must be a number, got {best!r}")
    for key, value in (("best_epoch", best_epoch), ("wait", wait)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{key!r} must be an integer >= 0, got {value!r}")
    epochs_ok = isinstance(history, list) and all(
        isinstance(h, dict) and isinstance(h.get("epoch"), int) for h in history
    )
    if not epochs_ok:
        raise ValueError("'history' must be a list of objects with an integer 'epoch'")


def read_best_state(best_dir: str, output_dir: str) -> dict[str, Any] | None:
    """``best/state.json`` checked for shape, or None when absent. Raises `RunStateError` when it is not one."""
    path = os.path.join(best_dir, STATE_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        _check_state(state)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RunStateError(f"{path} is not a model-selection state ({e}); {restart_hint(output_dir)}") from None
    return state


def _backup_record(backup_dir: str, output_dir: str) -> dict[str, Any]:
    """The identity the run that wrote the backup recorded in ``run.json``; for backups of older versions only
    ``{config_hash}`` from the ``config.yaml`` that run wrote; ``{}`` when neither says."""
    record = os.path.join(backup_dir, BACKUP_RECORD)
    if os.path.exists(record):
        try:
            with open(record, encoding="utf-8") as f:
                owner = json.load(f)
            if not isinstance(owner[HASH_KEY], str):
                raise TypeError(f"{HASH_KEY} is {owner[HASH_KEY]!r}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RunStateError(f"{record} is not a run record ({e!r}); {restart_hint(output_dir)}") from None
        return owner
    try:
        with open(os.path.join(output_dir, "config.yaml"), encoding="utf-8") as f:
            previous = yaml.safe_load(f)
        return {HASH_KEY: config_hash(previous)} if isinstance(previous, dict) else {}
    except (OSError, ValueError, yaml.YAMLError):
        return {}


# -- deciding ------------------------------------------------------------------------------------------------------


def _write_json(path: str, value: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


def _check_resumable(
    config: Config, backup_dir: str, best_dir: str, run: dict[str, str], manifest: dict[str, Any] | None
) -> str:
    """Raises `RunStateError` unless this config and data (``run``: config hash and data fingerprint) may resume the
    backup and the best weights; returns the interrupted run's id."""
    hint = restart_hint(config.output_dir)
    digest, data = run[HASH_KEY], run[DATA_KEY]
    if not config.train.backup_and_restore:
        raise RunStateError(
            f"{backup_dir} holds the backup of an interrupted run, but train.backup_and_restore is false: set it to "
            f"true to resume that run; {hint}"
        )
    record = _backup_record(backup_dir, config.output_dir)
    owner = record.get(HASH_KEY)
    if owner != digest:
        raise RunStateError(
            f"{backup_dir} holds the backup of an interrupted run with another config (config hash {owner or 'unknown'}"
            f", this config {digest}): resuming it would train a mix of both; resume it with its own config "
            f"({os.path.join(config.output_dir, 'config.yaml')}), or {hint}"
        )
    state = read_best_state(best_dir, config.output_dir)
    if state is not None and state.get(HASH_KEY, digest) != digest:
        raise RunStateError(
            f"{best_dir} was written by another config (config hash {state[HASH_KEY]}) than the backup it goes "
            f"with ({digest}); {hint}"
        )
    recorded = record.get(DATA_KEY) or (state or {}).get(DATA_KEY)
    if recorded is None:
        log.warning(
            "the backup in %s records no data fingerprint (an older version wrote it): resuming without "
            "checking that %s holds the data it was trained on",
            backup_dir,
            config.data.dir,
        )
    elif recorded != data:
        raise RunStateError(
            f"{backup_dir} holds a run trained on data with fingerprint {recorded}, but data.dir {config.data.dir!r} "
            f"now holds data with fingerprint {data} (preprocessed again since?): resuming would continue on other "
            f"data; point data.dir at the data the run started on, or {hint}"
        )
    if state is not None and state.get(RUN_KEY) and record.get(RUN_KEY) and state[RUN_KEY] != record[RUN_KEY]:
        raise RunStateError(f"{best_dir} belongs to run {state[RUN_KEY]}, the backup to run {record[RUN_KEY]}; {hint}")
    if state is not None and state["best_epoch"]:
        try:
            read_through(os.path.join(best_dir, "weights"))
        except checkpoint_errors() as e:
            raise RunStateError(
                f"the best weights in {best_dir} (epoch {state['best_epoch']}) cannot be read ({unreadable(e)}); "
                + hint
            ) from None
    previous = (manifest or {}).get("run", {})
    same = previous.get(HASH_KEY) == digest and previous.get(DATA_KEY) in (data, None)
    return (
        record.get(RUN_KEY) or (state or {}).get(RUN_KEY) or (previous.get(RUN_KEY) if same else None) or new_run_id()
    )


def prepare(
    config: Config, out_dir: str, data_fingerprint: str, restart: bool = False, chief: bool = True
) -> tuple[int, dict[str, str]]:
    """Makes ``out_dir`` (this worker's output folder, locked by the caller: `ownership.claim`) safe for this run
    before anything is built; returns (first epoch, the run's `identity`).

    ``data_fingerprint``: of ``data.dir`` (`mdcns_tf.runs.lineage.data_fingerprint`). ``restart``: delete
    ``backup/`` and ``best/`` first. ``chief``: only the chief deletes or writes the shared ``backup/``; the other
    workers of a multi-worker run check the same files and so reach the same decision. Deletes and moves only what
    the folder's records prove the trainer's (`ownership.check_owned`), else stops with a `RunStateError`.
    """
    backup_dir = os.path.join(config.output_dir, "backup")
    best_dir = os.path.join(out_dir, "best")
    digest = config_hash(config.to_dict())
    manifest = ownership.read_manifest(out_dir)
    legacy = None if manifest else ownership.legacy_owner(out_dir, config_hash)
    ownership.check_owned(out_dir, (*ownership.ENTRIES, ownership.PREVIOUS), manifest, legacy)
    if restart:
        log.info("--restart: deleting %s and %s", backup_dir if chief else "(chief only)", best_dir)
        for name in ("backup", "best") if chief else ("best",):
            ownership.remove(out_dir, name)
    latest = None if restart and not chief else latest_backup(backup_dir, config.output_dir)
    run = identity("", digest, data_fingerprint)
    if latest is not None:
        run[RUN_KEY] = _check_resumable(config, backup_dir, best_dir, run, manifest)
        log.info("resuming the interrupted run %s backed up in %s (config hash %s)", run[RUN_KEY], backup_dir, digest)
    else:
        run[RUN_KEY] = new_run_id()
        previous = (manifest or {}).get("run", {}).get(RUN_KEY) or f"legacy-{legacy}"
        ownership.move_aside(out_dir, previous)
        if os.path.lexists(best_dir):
            log.info("starting fresh: removing %s, left by an earlier run in this output_dir", best_dir)
            ownership.remove(out_dir, "best")
        if chief:  # a first backup cut short, or the record of a run killed before its first backup
            for name in ("chief", BACKUP_RECORD, WARM_START_RECORD):
                ownership.remove(backup_dir, name)
    ownership.write_manifest(out_dir, run)
    if chief and config.train.backup_and_restore:
        _write_json(os.path.join(backup_dir, BACKUP_RECORD), run)
    return resumed_epoch(latest), run


def finish(config: Config, chief: bool = True) -> None:
    """After a completed `fit`: Keras has deleted the backup; delete its record too."""
    backup_dir = os.path.join(config.output_dir, "backup")
    if chief and not os.path.exists(os.path.join(backup_dir, "chief")):
        for name in (BACKUP_RECORD, WARM_START_RECORD):
            ownership.remove(backup_dir, name)
