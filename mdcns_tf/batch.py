"""The batch contract between `mdcns_tf.data` (which builds the elements) and the trainers (which read them).

An element is a dict of int32 tensors keyed by the names below; there are no Keras labels (the models'
``train_step`` and ``test_step`` read the dict). ``seq_len`` is ``data.max_len``, or less for a batch trimmed by
length buckets (`mdcns_tf.data.trim_batch`: only the `POSITION_KEYS` are trimmed, to their last ``seq_len``
columns). ``x`` is the longest sequence or history of the batch (0-padded on the right).

Training elements (`mdcns_tf.data.train_dataset`):
    input_ids      `(batch, seq_len)` left-padded model input
    target_ids     `(batch, seq_len)` next item per position, 0 where the position is not trained
    exclusion_ids  `(batch, x)` the user's whole training sequence (a negative is never one of these)
    user_index     `(batch,)` 1-based user index (the row of ``users.txt``)

Evaluation elements (`mdcns_tf.data.eval_dataset`):
    input_ids      `(batch, seq_len)` the last ``seq_len`` items of the history, left-padded
    history_ids    `(batch, x)` the whole history (masked out of the ranking), 0-padded
    target         `(batch,)` the held-out item
    user_index     `(batch,)` 1-based user index

The record fields these come from are in `mdcns_tf.features`; ``target`` and ``user_index`` keep their record
field's name. TensorFlow-free, like `mdcns_tf.features`.
"""

from __future__ import annotations

INPUT_IDS = "input_ids"
TARGET_IDS = "target_ids"
EXCLUSION_IDS = "exclusion_ids"
HISTORY_IDS = "history_ids"
TARGET = "target"
USER_INDEX = "user_index"

TRAIN_KEYS = (INPUT_IDS, TARGET_IDS, EXCLUSION_IDS, USER_INDEX)
EVAL_KEYS = (INPUT_IDS, HISTORY_IDS, TARGET, USER_INDEX)
# The keys with one column per sequence position, left-padded: a shorter window keeps their last columns.
POSITION_KEYS = (INPUT_IDS, TARGET_IDS)
