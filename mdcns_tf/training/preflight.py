"""Checks a training run makes before building anything: each failure is a `ConfigError` that says the fix."""

from __future__ import annotations

import os

from mdcns_tf import data
from mdcns_tf.config import Config, ConfigError
from mdcns_tf.features import Metadata
from mdcns_tf.savedmodel import versions


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
        versions.check_target(base, config.export.model_name)
    except (ValueError, OSError) as e:
        raise ConfigError(f"export: cannot write under {base} ({e}); fix it or set export.enabled=false") from None
