"""SavedModel export of the evaluated (self) model for TensorFlow Serving.

Layout: ``<base>/<model_name>/<version>/`` with numeric versions, the format TF Serving's file-system source polls.
A version is written to a hidden temporary folder beside the final one and renamed into place, so a server never
sees a half-written version, and a crash leaves only a dot-folder that TF Serving ignores.

Signature ``serving_default``: input ``item_ids`` int32 `(batch, max_len)` (left-padded with 0, most recent item
last) -> ``item_ids`` int32 `(batch, top_k)` and ``scores`` float32 `(batch, top_k)`, the items of the input
excluded, ranked by score. ``top_k`` is fixed per export (``export.top_k``): TF Serving batches requests of one
signature, and a fixed K keeps the output shape static.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import mdcns_tf  # noqa: F401
import tensorflow as tf
import tensorflow_recommenders as tfrs

from mdcns_tf.backbones import Backbone


class ServingModule(tf.Module):
    """Wraps a trained backbone: the history encoder plus a brute-force top-K index over its item table."""

    def __init__(self, encoder: Backbone, max_len: int, top_k: int) -> None:
        super().__init__(name="serving")
        self.encoder = encoder
        self.max_len = max_len
        self.top_k = top_k
        self.n_items = encoder.n_items
        # Row 0 is padding: the index holds items 1..n_items only, so padding can never be recommended.
        self.index = tfrs.layers.factorized_top_k.BruteForce(k=top_k, name="brute_force")
        self.index.index(
            encoder.item_embeddings[1:], identifiers=tf.range(1, encoder.n_items + 1, dtype=tf.int32)
        )
        self.serve = tf.function(
            self._serve, input_signature=[tf.TensorSpec([None, max_len], tf.int32, name="item_ids")]
        )

    def _check_ids(self, item_ids: tf.Tensor) -> list[tf.Operation]:
        return [
            tf.debugging.assert_greater_equal(
                item_ids, 0, message="item_ids must be >= 0 (0 is padding)"
            ),
            tf.debugging.assert_less_equal(
                item_ids, self.n_items, message=f"item_ids must be <= n_items ({self.n_items})"
            ),
        ]

    def query(self, item_ids: tf.Tensor) -> tf.Tensor:
        """`(batch, max_len)` -> `(batch, dim)` query embeddings."""
        with tf.control_dependencies(self._check_ids(item_ids)):
            return self.encoder(tf.identity(item_ids), training=False)[:, -1, :]

    def _serve(self, item_ids: tf.Tensor) -> dict[str, tf.Tensor]:
        scores, ids = self.index.query_with_exclusions(self.query(item_ids), exclusions=item_ids, k=self.top_k)
        return {"item_ids": ids, "scores": scores}


def next_version(model_dir: str) -> int:
    """1 + the largest numeric version folder in ``model_dir`` (1 for a new model)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(name) for name in os.listdir(model_dir) if re.fullmatch(r"\d+", name)]
    return max(versions, default=0) + 1


def export_saved_model(
    encoder: Backbone, base_dir: str, model_name: str, max_len: int, top_k: int, version: int = 0
) -> str:
    """Writes ``<base_dir>/<model_name>/<version>/`` atomically and returns its path."""
    model_dir = os.path.join(base_dir, model_name)
    os.makedirs(model_dir, exist_ok=True)
    version = version or next_version(model_dir)
    final_path = os.path.join(model_dir, str(version))
    if os.path.exists(final_path):
        raise FileExistsError(f"export version {final_path} exists; versions are immutable, pick another")
    module = ServingModule(encoder, max_len=max_len, top_k=top_k)
    staging = tempfile.mkdtemp(prefix=f".{version}-tmp-", dir=model_dir)
    try:
        tf.saved_model.save(module, staging, signatures={"serving_default": module.serve})
        os.rename(staging, final_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final_path
