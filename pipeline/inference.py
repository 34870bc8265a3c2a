"""An exported SavedModel in a Beam pipeline: the version to use, whether it belongs to the data, and the model
handler that Beam's ``RunInference`` calls its ``serving_default`` signature through.

Identity. An export ships the item vocabulary it was trained with (``assets/items.txt``) and, when
`mdcns_tf.train` or `mdcns_tf.export` wrote it, the ``metadata.json`` fingerprint of its training data in
``assets.extra/model_card.json`` (``provenance.data.fingerprint``). Item ids only mean something against that
vocabulary, so `check_identity` refuses a data folder whose ``items.txt`` differs from it, or whose records are not
the ones recorded (unless allowed: the same catalogue with newer histories is a legitimate use).

The handler. Beam 2.77's ``TFModelHandlerTensor`` / ``TFModelHandlerNumpy`` load models with
``tf.keras.models.load_model`` through ``tensorflow_hub`` (not installed here, and the export is a plain
``tf.Module``, not a Keras model) and call the model object itself, not a named signature with a keyword input.
`SignatureModelHandler` loads the version with ``tf.saved_model.load`` and calls ``serving_default`` on a whole
batch `(B, max_len)` at once; it maps the top-K ids to their keys by one vectorised lookup per batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

import mdcns_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from mdcns_tf import features
from mdcns_tf.savedmodel import versions
from mdcns_tf.savedmodel.signatures import (
    ITEM_IDS,
    ITEM_KEYS,
    MODEL_CARD_FILE,
    SCORES,
    SERVING_DEFAULT,
    VOCABULARY_FILE,
)

LOG = logging.getLogger("pipeline")


class IdentityError(ValueError):
    """The export and the data folder do not belong together (a usage error: one line, nothing written)."""


@dataclasses.dataclass(frozen=True)
class Export:
    """One version folder (absolute path) and what its model card says about it."""

    version_dir: str
    max_len: int
    top_k: int
    n_items: int
    card: dict[str, Any]


def load_export(model: str) -> Export:
    """``--model``: a model folder (its newest version) or one version folder. Raises FileNotFoundError or
    ValueError (no model card: not written by this project's export)."""
    version_dir = os.path.abspath(versions.newest_version(model))
    path = os.path.join(version_dir, MODEL_CARD_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            card = json.load(f)
        fields = {key: int(card[key]) for key in ("max_len", "top_k", "n_items")}
    except FileNotFoundError:
        raise ValueError(f"{version_dir} has no {MODEL_CARD_FILE}: not an export of mdcns_tf.train/export") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} cannot be read as a model card ({e!r})") from None
    return Export(version_dir=version_dir, card=card, **fields)


def _recorded_fingerprint(card: dict[str, Any]) -> dict[str, Any] | None:
    data = (card.get("provenance") or {}).get("data") or {}
    return data.get("fingerprint") if isinstance(data, dict) else None


def check_identity(
    export: Export, data_dir: str, metadata: features.Metadata, allow_data_mismatch: bool = False
) -> dict[str, Any]:
    """Raises `IdentityError` when ``data_dir`` is not data ``export`` can score (see the module docstring);
    returns what was checked, for the output's ``_SUCCESS``."""
    where = f"--model {export.version_dir}"
    if export.n_items != metadata.n_items:
        raise IdentityError(
            f"{where} scores {export.n_items} items but --data {data_dir} has {metadata.n_items}: the model was "
            "trained on other data; use its own data folder"
        )
    vocabulary = os.path.join(export.version_dir, VOCABULARY_FILE)
    data_items = os.path.join(data_dir, features.ITEMS_FILE)
    for path in (vocabulary, data_items):
        if not os.path.isfile(path):
            raise IdentityError(f"{path} is missing: the model's item vocabulary cannot be checked against the data")
    digest = features.file_sha256(vocabulary)
    if features.file_sha256(data_items) != digest:
        raise IdentityError(
            f"{where} was exported with another item vocabulary than {data_items} (its ids would name other "
            "items); use the model's own data folder"
        )
    recorded = _recorded_fingerprint(export.card)
    records = "not recorded in the model card"
    if recorded is not None:
        records = "same as the model's"
        if recorded != metadata.fingerprint:
            if not allow_data_mismatch:
                raise IdentityError(
                    f"{where} was exported from other records than --data {data_dir} (same item vocabulary, other "
                    "fingerprint in its model card): pass --allow_data_mismatch to score these histories anyway"
                )
            records = "other than the model's (--allow_data_mismatch)"
            LOG.warning("%s: the records differ from the model's training data (allowed)", data_dir)
    return {"vocabulary_sha256": digest, "records": records}


def padded_histories(histories: Sequence[Sequence[int]], max_len: int) -> np.ndarray:
    """`(len(histories), max_len)` int32: the last ``max_len`` ids of each history, left-padded with 0 (the input
    ``serving_default`` expects, as `mdcns_tf.recommend` builds it)."""
    out = np.zeros((len(histories), max_len), np.int32)
    for row, history in enumerate(histories):
        tail = history[-max_len:] if len(history) else ()
        if len(tail):
            out[row, max_len - len(tail) :] = tail
    return out


@dataclasses.dataclass
class LoadedModel:
    """The loaded SavedModel (kept whole: it owns the signature's variables) and the item keys by id, "" at 0. A
    class, not a tuple: Beam shares a model between DoFn instances through a weak reference."""

    saved_model: Any
    item_keys: np.ndarray


class SignatureModelHandler(ModelHandler[np.ndarray, PredictionResult, LoadedModel]):
    """``RunInference``'s handler for ``serving_default``: an example is one padded history `(max_len,)` int32; its
    inference ``{"item_ids": (k,) int32, "item_keys": (k,) str, "scores": (k,) float32}``, the signature's first
    ``top_k`` columns (its rows are sorted, so they are the top ``top_k``)."""

    def __init__(self, version_dir: str, max_len: int, top_k: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.version_dir, self.max_len, self.top_k = version_dir, max_len, top_k

    def load_model(self) -> LoadedModel:
        import tensorflow as tf

        loaded = tf.saved_model.load(self.version_dir)
        spec = loaded.signatures[SERVING_DEFAULT].structured_input_signature[1][ITEM_IDS]
        if spec.shape[1] != self.max_len:
            raise ValueError(
                f"{self.version_dir}: serving_default takes {spec.shape[1]} ids, the model card says "
                f"max_len {self.max_len}"
            )
        with open(os.path.join(self.version_dir, VOCABULARY_FILE), encoding="utf-8", newline="") as f:
            keys = f.read().split("\n")
        keys = keys[:-1] if keys and keys[-1] == "" else keys
        return LoadedModel(loaded, np.asarray([""] + keys, dtype=object))

    def run_inference(
        self, batch: Sequence[np.ndarray], model: LoadedModel, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        import tensorflow as tf

        outputs = model.saved_model.signatures[SERVING_DEFAULT](**{ITEM_IDS: tf.constant(np.stack(batch), tf.int32)})
        ids = outputs[ITEM_IDS].numpy()[:, : self.top_k]
        scores = outputs[SCORES].numpy()[:, : self.top_k]
        names = model.item_keys[ids]
        return [
            PredictionResult(example, {ITEM_IDS: i, ITEM_KEYS: k, SCORES: s})
            for example, i, k, s in zip(batch, ids, names, scores, strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(example.nbytes for example in batch)  # the default pickles every batch to measure it

    def get_metrics_namespace(self) -> str:
        return "pipeline_recommend"
