"""A finished run's lineage: the data fingerprint of a data folder, and the checks that a run folder's weights, its
``config.yaml``, its ``metrics.json`` and the data an evaluation or export reads belong together.

Every record a run writes carries its identity (`mdcns_tf.runs.state.identity`: run id, config hash, data
fingerprint): ``backup/run.json``, ``best/state.json`` (the weights'), ``metrics.json`` (``run``) and every
export's ``model_card.json`` (``run``). `check_finished_run` takes the weights' identity as the truth and refuses
(`LineageError`) a ``config.yaml``, a ``metrics.json`` or a ``data.dir`` of another run; another data fingerprint
is allowed only when asked (``--allow-data-mismatch``), and the answer then says so.

Records written before these fields existed are matched on what they hold: ``best/state.json`` has the config hash,
``metrics.json`` the config hash and the metadata fingerprint in its ``provenance``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any

from mdcns_tf import features
from mdcns_tf.runs.state import DATA_KEY, HASH_KEY, RUN_KEY, STATE_FILE, RunStateError

ALLOW_FLAG = "--allow-data-mismatch"


class LineageError(RunStateError):
    """A run folder's records, or the data read with them, come from different runs; the message names both."""


def fingerprint_digest(fingerprint: dict[str, Any]) -> str:
    """16 hex digits of a ``metadata.json`` fingerprint (`mdcns_tf.features`)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def data_fingerprint(data_dir: str, metadata: features.Metadata) -> str:
    """What identifies the data in ``data_dir``: the digest of its metadata's fingerprint, which
    `features.verify_records` checks against the files (and the metadata against them). Metadata written before
    fingerprints get the same fingerprint computed from the files, with the vocabulary sizes and item counts, which
    no fingerprint then pins."""
    fingerprint = metadata.fingerprint
    if fingerprint is None:
        splits = {}
        for split in features.SPLITS:
            paths = glob.glob(features.split_pattern(data_dir, split))
            files = {os.path.basename(path): features.file_sha256(path) for path in sorted(paths)}
            splits[split] = {"records": metadata.records.get(split, 0), "files": files}
        vocabularies = {
            name: features.file_sha256(os.path.join(data_dir, name))
            for name in (features.ITEMS_FILE, features.USERS_FILE)
            if os.path.isfile(os.path.join(data_dir, name))
        }
        sizes = {"n_users": metadata.n_users, "n_items": metadata.n_items, "item_counts": metadata.item_counts}
        fingerprint = {"algorithm": "sha256", "splits": splits, "vocabularies": vocabularies, "metadata": sizes}
    return fingerprint_digest(fingerprint)


def weights_identity(run_dir: str) -> dict[str, Any]:
    """The identity ``best/state.json`` records (only ``config_hash`` in older runs; ``{}`` when unreadable)."""
    try:
        with open(os.path.join(run_dir, "best", STATE_FILE), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return {}
    return {key: state[key] for key in (RUN_KEY, HASH_KEY, DATA_KEY) if isinstance(state, dict) and state.get(key)}


def metrics_identity(metrics: dict[str, Any]) -> dict[str, Any]:
    """The identity a ``metrics.json`` records: its ``run``, or what an older one's ``provenance`` holds."""
    if isinstance(metrics.get("run"), dict):
        return metrics["run"]
    provenance = metrics.get("provenance") or {}
    fingerprint = (provenance.get("data") or {}).get("fingerprint")
    older = {HASH_KEY: provenance.get(HASH_KEY), DATA_KEY: fingerprint_digest(fingerprint) if fingerprint else None}
    return {key: value for key, value in older.items() if value}


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [
        f"{key} {a[key]} / {b[key]}"
        for key in (RUN_KEY, HASH_KEY, DATA_KEY)
        if a.get(key) and b.get(key) and a[key] != b[key]
    ]


def check_finished_run(
    run_dir: str,
    config_hash: str,
    metrics: dict[str, Any] | None,
    data_dir: str,
    data_print: str,
    allow_data_mismatch: bool = False,
) -> dict[str, Any]:
    """Checks that the best weights of ``run_dir``, its ``config.yaml`` (hash ``config_hash``, before overrides),
    its ``metrics.json`` (``metrics``, None when absent) and ``data_dir`` (fingerprint ``data_print``) belong to one
    run; returns ``{"run": the weights' identity, "data": {dir, data_fingerprint, run_data_fingerprint,
    mismatch_allowed}}`` for the outputs. Raises `LineageError`."""
    weights = weights_identity(run_dir)
    state = os.path.join(run_dir, "best", STATE_FILE)
    if weights.get(HASH_KEY, config_hash) != config_hash:
        raise LineageError(
            f"{os.path.join(run_dir, 'config.yaml')} (config hash {config_hash}) is not the config the best weights "
            f"were trained with ({state}: {weights[HASH_KEY]}): the folder mixes two runs; retrain, or put back the "
            "run's own config.yaml"
        )
    recorded = metrics_identity(metrics) if metrics is not None else {}
    differ = _differences(weights, recorded)
    if differ:
        raise LineageError(
            f"{os.path.join(run_dir, 'metrics.json')} belongs to another run than the best weights ({state}): "
            f"{'; '.join(differ)} (metrics.json / weights); it would label these weights with another run's "
            "results: re-measure them with mdcns-evaluate, or retrain"
        )
    run = {**recorded, **weights, HASH_KEY: config_hash}
    expected = run.get(DATA_KEY)
    data = {"dir": data_dir, DATA_KEY: data_print, "run_" + DATA_KEY: expected, "mismatch_allowed": False}
    if expected != data_print:
        what = f"data fingerprint {expected}" if expected else "no data fingerprint (a run of an older version)"
        if not allow_data_mismatch:
            raise LineageError(
                f"the run in {run_dir} records {what}, but data.dir {data_dir!r} holds data with fingerprint "
                f"{data_print}: its vocabulary and records may not be the ones the weights were trained on; point "
                "at the run's data (mdcns-evaluate --set data.dir=DIR, mdcns-export --data DIR), or pass "
                f"{ALLOW_FLAG} to use this data anyway (recorded in the output)"
            )
        data["mismatch_allowed"] = True
    return {"run": run, "data": data}
