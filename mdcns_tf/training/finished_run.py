"""A training run's folder after the fact: its resolved config and the model with the weights selection kept, checked
to belong together with the run's ``metrics.json`` and the data it is read with (`mdcns_tf.runs.lineage`).

Shared by the commands that work on a finished (or still running) run without training it: `mdcns_tf.evaluate`
re-measures it, `mdcns_tf.export --run` exports it again.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from mdcns_tf.config import Config
from mdcns_tf.config_loader import load_config
from mdcns_tf.runs import lineage
from mdcns_tf.runs import state as run_state
from mdcns_tf.runs.metrics_file import METRICS_FILE
from mdcns_tf.runs.state import RunStateError, config_hash

if TYPE_CHECKING:  # both import TensorFlow; the commands import this module before parsing their arguments
    from mdcns_tf.features import Metadata
    from mdcns_tf.training.retrieval_model import RetrievalModel


def config_path(run_dir: str) -> str:
    return os.path.join(run_dir, "config.yaml")


def weights_prefix(run_dir: str) -> str:
    return os.path.join(run_dir, "best", "weights")


def load_run_config(run_dir: str, overrides: list[str] | None = None) -> Config:
    """``<run_dir>/config.yaml`` (written by `mdcns_tf.train`) with ``overrides``; raises `FileNotFoundError`
    naming what is missing when ``run_dir`` is not a run, or has no selected weights yet."""
    path = config_path(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir!r} is not a folder: --run takes the output_dir of a training run")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {run_dir!r} the output_dir of a training run?")
    weights = weights_prefix(run_dir)
    if not os.path.exists(weights + ".index"):
        raise FileNotFoundError(
            f"{weights}.index not found: the run has not finished a validated epoch yet (a run that never set a best "
            "epoch keeps no weights to reload)"
        )
    return load_config(path, overrides or [])


def load_checked(
    run_dir: str, config: Config, allow_data_mismatch: bool = False
) -> tuple[RetrievalModel, Metadata, dict[str, Any]]:
    """(trainer model with the run's selected weights, the data's `Metadata`, the lineage record of
    `lineage.check_finished_run`) for ``config`` (`load_run_config`). Raises `lineage.LineageError` when the weights,
    ``config.yaml``, ``metrics.json`` and ``data.dir`` do not belong together, `RunStateError` when the weights do
    not fit the model the config and data describe."""
    from mdcns_tf.features import Metadata
    from mdcns_tf.training.factory import build_model

    metadata = Metadata.load(config.data.dir)
    own_hash = config_hash(load_config(config_path(run_dir)).to_dict())
    data_print = lineage.data_fingerprint(config.data.dir, metadata)
    record = lineage.check_finished_run(
        run_dir, own_hash, read_metrics(run_dir), config.data.dir, data_print, allow_data_mismatch
    )
    prefix = weights_prefix(run_dir)
    try:
        run_state.read_through(prefix)
    except run_state.checkpoint_errors() as e:
        raise RunStateError(
            f"the best weights in {prefix} cannot be read ({run_state.unreadable(e)}): damaged or cut short; "
            "restore the run folder, or retrain"
        ) from None
    model = build_model(config, metadata)
    model.build_for_input(config.data.max_len)
    model.compile()
    try:
        model.load_weights(prefix).expect_partial()
    except run_state.checkpoint_errors() as e:  # shapes of another model
        first = run_state.unreadable(e).strip().splitlines()[0]
        raise RunStateError(
            f"the best weights in {prefix} do not fit the model that config.yaml and data.dir {config.data.dir!r} "
            f"({metadata.n_items} items) describe ({first}); evaluate or export with the run's own data and config"
        ) from None
    return model, metadata, record


def load_model(run_dir: str, config: Config, allow_data_mismatch: bool = False) -> tuple[RetrievalModel, Metadata]:
    """`load_checked` without the lineage record (the benchmarks' entry)."""
    model, metadata, _ = load_checked(run_dir, config, allow_data_mismatch)
    return model, metadata


def read_metrics(run_dir: str) -> dict[str, Any] | None:
    """The run's ``metrics.json``, or None when it has none yet (or it cannot be read)."""
    try:
        with open(os.path.join(run_dir, METRICS_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
