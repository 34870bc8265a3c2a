"""Publishing a version: `export_saved_model` writes, checks and makes durable a SavedModel of the evaluated (self)
model, then renames it into place.

A version is written in a hidden temporary folder beside the final one (``.<v>-tmp-*``, never a number) and only
then renamed into place, so a server never sees a half-written version and a crash leaves only a dot-folder that TF
Serving ignores (`mdcns_tf.savedmodel.versions`). On object stores (``gs://``, ``s3://``) a rename is a copy, not
atomic: export to local disk and upload the finished folder (see ``serving/README.md``).

A version holds the graph with its signatures (`mdcns_tf.savedmodel.module`), the encoder's variables, the
vocabulary (`mdcns_tf.savedmodel.assets`), the warmup requests (`mdcns_tf.savedmodel.warmup`) and
``assets.extra/model_card.json``, which says what the version is: its signatures and K, and (from `mdcns_tf.train`
and the re-export command) the run's metrics and `mdcns_tf.runs.provenance` record.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from mdcns_tf import features
from mdcns_tf.backbones import Backbone
from mdcns_tf.savedmodel import assets, warmup
from mdcns_tf.savedmodel.index import EXACT, rescore_count
from mdcns_tf.savedmodel.module import ServingModule
from mdcns_tf.savedmodel.signatures import (
    ITEM_IDS,
    MODEL_CARD_FILE,
    SCORES,
    SERVING_DEFAULT,
    SIGNATURES,
    WARMUP_FILE,
)
from mdcns_tf.savedmodel.versions import check_target, next_version

# The export's log lines carry the command's name, whichever module writes them.
log = logging.getLogger("mdcns_tf.export")


def _fsync_tree(root: str) -> None:
    """Flushes every file and folder under ``root`` so that a power cut after the rename finds whole files."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _verify(staging: str, module: ServingModule, requests: Sequence[tuple[str, dict[str, np.ndarray]]]) -> None:
    """Loads the staged export and checks it against the in-memory module before it is published."""
    loaded = tf.saved_model.load(staging)
    for signature, inputs in requests:
        outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        if signature != SERVING_DEFAULT:
            continue
        expected = module.serve(tf.constant(inputs[ITEM_IDS]))
        # Scores must match; ids must match except between items whose scores tie (float reordering).
        np.testing.assert_allclose(outputs[SCORES].numpy(), expected[SCORES].numpy(), rtol=1e-4, atol=1e-5)
        differ = outputs[ITEM_IDS].numpy() != expected[ITEM_IDS].numpy()
        if differ.any():
            scores = expected[SCORES].numpy()
            ties = np.isclose(scores[:, 1:], scores[:, :-1], rtol=1e-5, atol=1e-6)
            tie_mask = np.zeros_like(differ)
            tie_mask[:, 1:] |= ties
            tie_mask[:, :-1] |= ties
            if (differ & ~tie_mask).any():
                raise AssertionError("the staged export does not return the in-memory model's top-K")


def export_saved_model(
    encoder: Backbone,
    base_dir: str,
    model_name: str,
    max_len: int,
    top_k: int,
    version: int = 0,
    data_dir: str | None = None,
    warmup_batch_sizes: Sequence[int] = (1, 8, 64),
    verify: bool = True,
    model_card: dict[str, Any] | None = None,
    index: str = EXACT,
    rescore: int = 0,
) -> str:
    """Writes ``<base_dir>/<model_name>/<version>/`` atomically and returns its path.

    ``version`` 0 picks the next free number. ``data_dir``'s ``items.txt`` becomes the ``serve_keys`` vocabulary.
    ``warmup_batch_sizes``: one warmup request per signature and size (use the server's ``allowed_batch_sizes``
    when batching is on). ``verify`` reloads the staged folder and compares it with the in-memory model before
    publishing it (a few seconds; the check a server would otherwise do with real traffic). ``model_card``: more
    entries for ``assets.extra/model_card.json`` (the run's metrics and provenance), written with the version.
    ``index`` / ``rescore``: ``export.index`` / ``export.rescore`` (see `ServingModule`).
    """
    model_dir = check_target(base_dir, model_name)
    version = version or next_version(model_dir)
    final_path = os.path.join(model_dir, str(version))
    if os.path.exists(final_path):
        raise FileExistsError(f"export version {final_path} exists; versions are immutable, pick another")
    # The staging name starts with a dot and is not a number: TF Serving never loads it, whatever happens next.
    staging = tempfile.mkdtemp(prefix=f".{version}-tmp-", dir=model_dir)
    try:
        # The asset keeps its base name in assets/: write it as items.txt.
        os.makedirs(os.path.join(staging, "vocabulary"))
        vocabulary_file = os.path.join(staging, "vocabulary", features.ITEMS_FILE)
        keys = assets.write_vocabulary(vocabulary_file, assets.vocabulary_path(data_dir), encoder.n_items)
        saved = os.path.join(staging, "model")
        module = ServingModule(
            encoder, max_len=max_len, top_k=top_k, vocabulary_file=vocabulary_file, index=index, rescore=rescore
        )
        tf.saved_model.save(module, saved, signatures=module.signatures())
        requests = warmup.warmup_inputs(encoder.n_items, max_len, keys, warmup_batch_sizes)
        warmup.write_warmup(os.path.join(saved, WARMUP_FILE), model_name, requests)
        card = {
            "model_name": model_name,
            "version": version,
            "signatures": list(SIGNATURES),
            "top_k": top_k,
            "max_len": max_len,
            "n_items": encoder.n_items,
            "index": index,
            **({"rescore": rescore_count(rescore, top_k)} if index != EXACT else {}),
            **(model_card or {}),
        }
        with open(os.path.join(saved, MODEL_CARD_FILE), "w", encoding="utf-8") as f:
            json.dump(card, f, indent=1)
        if verify:
            _verify(saved, module, requests)
        _fsync_tree(saved)
        if os.path.exists(final_path):  # another exporter took the number meanwhile
            raise FileExistsError(f"export version {final_path} appeared during the export; not overwriting it")
        os.rename(saved, final_path)
        dir_fd = os.open(model_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s (signatures: %s)", final_path, ", ".join(SIGNATURES))
    return final_path
