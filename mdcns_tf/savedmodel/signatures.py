"""The serving contract's names: the signatures, their inputs and outputs, the files of a version, the "no item" marker.

Plain constants without TensorFlow, so that a client (``serving/``) speaks the contract by importing this module
instead of writing the names again. ``max_len`` = ``data.max_len``, ``K`` = ``export.top_k``, ``d`` = ``model.dim``:

- ``serving_default``: ``item_ids`` int32 `(batch, max_len)`, left-padded with 0, most recent item last
  -> ``item_ids`` int32 `(batch, K)`, ``scores`` float32 `(batch, K)`: the best items by score, the input's
  items excluded.
- ``serve_keys``: ``item_keys`` string `(batch, max_len)`, raw item keys as in ``items.txt``, ``""`` = padding
  -> ``item_keys`` string `(batch, K)`, ``scores`` float32 `(batch, K)`, ``unknown_keys`` int32 `(batch,)`
  (how many non-empty input keys were not in the vocabulary: they are dropped like padding, never an error).
- ``query_embedding``: ``item_ids`` int32 `(batch, max_len)` -> ``embedding`` float32 `(batch, d)`, the
  query vector scored against ``item_embeddings`` by dot product (for an external ANN index).
- ``item_embeddings``: ``item_ids`` int32 `(n,)`, ids in ``[1, n_items]`` -> ``embeddings`` float32 `(n, d)`.
  The whole table (to build an ANN index offline) is cheaper to read from the checkpoint:
  `mdcns_tf.savedmodel.assets.read_item_table`.

How the signatures treat their inputs (padding anywhere, bad ids, the marker): `mdcns_tf.savedmodel.module`.
"""

from __future__ import annotations

import os

from mdcns_tf.features import ITEMS_FILE

SERVING_DEFAULT = "serving_default"
SERVE_KEYS = "serve_keys"
QUERY_EMBEDDING = "query_embedding"
ITEM_EMBEDDINGS = "item_embeddings"
SIGNATURES = (SERVING_DEFAULT, SERVE_KEYS, QUERY_EMBEDDING, ITEM_EMBEDDINGS)

# The names of the tensors a request feeds and a reply holds.
ITEM_IDS = "item_ids"
ITEM_KEYS = "item_keys"
SCORES = "scores"
UNKNOWN_KEYS = "unknown_keys"
EMBEDDING = "embedding"
EMBEDDINGS = "embeddings"
# signature -> its one input.
INPUTS = {SERVING_DEFAULT: ITEM_IDS, SERVE_KEYS: ITEM_KEYS, QUERY_EMBEDDING: ITEM_IDS, ITEM_EMBEDDINGS: ITEM_IDS}
# signature -> its outputs.
OUTPUTS = {
    SERVING_DEFAULT: (ITEM_IDS, SCORES),
    SERVE_KEYS: (ITEM_KEYS, SCORES, UNKNOWN_KEYS),
    QUERY_EMBEDDING: (EMBEDDING,),
    ITEM_EMBEDDINGS: (EMBEDDINGS,),
}

# Score of the "no item" marker (id 0, key ""): float32's lowest value, finite so that JSON clients can parse it,
# and below any real score.
NO_ITEM_SCORE = -3.4028234663852886e38

# Files inside a version folder.
SAVED_MODEL_FILE = "saved_model.pb"
# The requests TF Serving replays when it loads the version.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# What the version is and where it comes from (TF Serving ignores assets.extra files other than the warmup).
MODEL_CARD_FILE = os.path.join("assets.extra", "model_card.json")
# The vocabulary an export ships (line i = key of id i + 1): the asset the serve_keys lookup tables read.
VOCABULARY_FILE = os.path.join("assets", ITEMS_FILE)

# Item ids travel as int32 (the signatures' dtype): a number beyond it would wrap around to another item's id, so
# clients check that it fits before they send (`checked_item_id`); the signatures themselves refuse ids outside
# [0, n_items] with INVALID_ARGUMENT.
MAX_ITEM_ID = 2**31 - 1
MIN_INT32 = -(2**31)
# A client reads max_len from the server's metadata to pad a request: a claim beyond this is refused instead of
# allocated (the models here use tens to hundreds).
MAX_HISTORY_LENGTH = 100_000


def checked_item_id(value: object) -> int:
    """``value`` as an int32 item id for a request, else ValueError: a larger number is never sent to wrap around.
    Whether the id names an item (``[0, n_items]``, 0 = padding) is the model's check."""
    item = int(value)  # ValueError for a non-number, as int() gives it
    if not MIN_INT32 <= item <= MAX_ITEM_ID:
        raise ValueError(f"item id {item} is outside int32 [{MIN_INT32}, {MAX_ITEM_ID}]: it would wrap to another id")
    return item


def checked_max_len(value: object, signature: str) -> int:
    """A signature's history length as a server's metadata states it: an int in ``[1, MAX_HISTORY_LENGTH]``."""
    max_len = int(value)
    if not 1 <= max_len <= MAX_HISTORY_LENGTH:
        raise ValueError(
            f"signature {signature!r}: max_len {max_len} from the model metadata is outside [1, {MAX_HISTORY_LENGTH}]"
        )
    return max_len
