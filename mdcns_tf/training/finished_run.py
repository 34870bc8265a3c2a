"""A training run's folder after the fact: its resolved config and the model with the weights selection kept.

Shared by the commands that work on a finished (or still running) run without training it: `mdcns_tf.evaluate`
re-measures it, `mdcns_tf.export --run` exports it again.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from mdcns_tf.config import Config
from mdcns_tf.config_loader import load_config
from mdcns_tf.runs.metrics_file import METRICS_FILE

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
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {run_dir!r} the output_dir of a training run?")
    weights = weights_prefix(run_dir)
    if not os.path.exists(weights + ".index"):
        raise FileNotFoundError(
            f"{weights}.index not found: the run has not finished a validated epoch yet (a run that never set a best "
            "epoch keeps no weights to reload)"
        )
    return load_config(path, overrides or [])


def load_model(run_dir: str, config: Config) -> tuple[RetrievalModel, Metadata]:
    """(trainer model with the run's selected weights, the data's `Metadata`) for ``config`` (`load_run_config`)."""
    from mdcns_tf.features import Metadata
    from mdcns_tf.training.factory import build_model

    metadata = Metadata.load(config.data.dir)
    model = build_model(config, metadata)
    model.build_for_input(config.data.max_len)
    model.compile()
    model.load_weights(weights_prefix(run_dir)).expect_partial()
    return model, metadata


def read_metrics(run_dir: str) -> dict[str, Any] | None:
    """The run's ``metrics.json``, or None when it has none yet (or it cannot be read)."""
    try:
        with open(os.path.join(run_dir, METRICS_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
