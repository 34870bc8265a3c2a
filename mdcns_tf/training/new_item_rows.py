"""New items' rows of a warm start, from the contexts they follow (``train.warm_start_new_items: context``).

A warm start (`mdcns_tf.training.warm_start`) maps the parent's item rows by key; an item the parent did not have (a
"new" item) keeps the random row of a fresh run, and must then be learnt as slowly as a fresh model learns every item.
This module owns the other start: after the parent's weights are loaded, a new item j that is a next-item target in
this run's training data gets the item-table row

    e_j = m_j L / |m_j|^2

with m_j the mean state h_t of the warm-started backbone (inference mode) over the training positions t whose next
item is j, and L the mean positive logit h_t . E[target_t] over the positions whose target is a mapped item: on
average a new item then scores against its contexts as a known item scores against its own, and in the direction of
those contexts. New items never a target keep the fresh row; so do new rows of any other item-indexed weight of a
backbone (only `Backbone.item_embeddings` is set).

The positions are the (input, target) pairs the run trains on: `data.train_dataset` of the run's config (its
``data.train_users``, ``data.max_train_sequences``, ``data.train_positions``, length buckets), padding targets left
out. One inference pass, in-graph: a `tf.function` iterates the batches and adds, per batch, the
`tf.math.unsorted_segment_sum` of the states (and counts) by target into `(n_items + 1, dim)` / `(n_items + 1,)`
sums, the batch's distinct targets' rows only.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tensorflow as tf

from mdcns_tf import data
from mdcns_tf.backbones import Backbone
from mdcns_tf.batch import INPUT_IDS, TARGET_IDS
from mdcns_tf.config import Config

log = logging.getLogger("mdcns_tf.train")

KEY = "train.warm_start_new_items"


def training_batches(config: Config) -> tf.data.Dataset:
    """The run's training batches in file order (a shuffle buffer of 1: the sums do not depend on the order)."""
    return data.train_dataset(config.data, config.seed, shuffle_buffer=1)


def context_sums(backbone: Backbone, batches: tf.data.Dataset, mapped: np.ndarray) -> dict[str, tf.Tensor]:
    """Per target item, the sum of the backbone's states (``training=False``) before it, `(n_items + 1, dim)`
    float32, and their count, `(n_items + 1,)` int64; and the sum (float64) and count of the positive logits of
    the positions whose target is ``mapped`` (bool `(n_items + 1,)`). Padding targets (0) are not positions."""
    n_rows = backbone.n_items + 1
    is_mapped = tf.constant(mapped, tf.bool)

    @tf.function
    def accumulate() -> dict[str, tf.Tensor]:
        sums = tf.zeros([n_rows, backbone.dim], tf.float32)
        counts = tf.zeros([n_rows], tf.int64)
        logit_sum = tf.constant(0.0, tf.float64)
        logit_count = tf.constant(0, tf.int64)
        for batch in iter(batches):
            trained = tf.not_equal(batch[TARGET_IDS], 0)
            states = tf.cast(tf.boolean_mask(backbone(batch[INPUT_IDS], training=False), trained), tf.float32)
            targets = tf.boolean_mask(batch[TARGET_IDS], trained)
            # Sums over the batch's distinct targets, added to their rows only (not a dense table a batch).
            items, slot = tf.unique(targets)
            rows = tf.cast(items, tf.int64)[:, tf.newaxis]
            slots = tf.shape(items)[0]
            sums = tf.tensor_scatter_nd_add(sums, rows, tf.math.unsorted_segment_sum(states, slot, slots))
            ones = tf.ones_like(targets, tf.int64)
            counts = tf.tensor_scatter_nd_add(counts, rows, tf.math.unsorted_segment_sum(ones, slot, slots))
            table = tf.cast(backbone.item_embeddings, tf.float32)
            logits = tf.reduce_sum(states * tf.gather(table, targets), axis=-1)
            known = tf.gather(is_mapped, targets)
            logit_sum += tf.reduce_sum(tf.cast(tf.boolean_mask(logits, known), tf.float64))
            logit_count += tf.math.count_nonzero(known, dtype=tf.int64)
        return {"sums": sums, "counts": counts, "logit_sum": logit_sum, "logit_count": logit_count}

    return accumulate()


def set_from_contexts(backbone: Backbone, batches: tf.data.Dataset, mapped: np.ndarray, name: str) -> dict[str, Any]:
    """Sets the item-table row of every new item (not ``mapped``, bool `(n_items + 1,)`, row 0 padding) that is a
    target of ``batches`` to ``m_j L / |m_j|^2`` (module docstring); returns what the provenance records of it:
    ``from_contexts`` (rows set), ``positions`` (trained positions read), ``new_item_positions`` (those whose target
    is new) and ``mean_positive_logit`` (L; None without a position of a mapped target, and then no row is set)."""
    found = context_sums(backbone, batches, mapped)
    counts = found["counts"].numpy()
    known = int(found["logit_count"])
    mean_logit = float(found["logit_sum"]) / known if known else None
    new = ~np.asarray(mapped, bool)
    new[0] = False
    means = found["sums"].numpy()[new] / np.maximum(counts[new], 1)[:, np.newaxis]
    norms = np.sum(means.astype(np.float64) ** 2, axis=1)
    chosen = (counts[new] > 0) & (norms > 0) & (mean_logit is not None)
    ids = np.flatnonzero(new)[chosen]
    if ids.size:
        variable = backbone.item_embeddings
        table = variable.numpy()
        rows = means[chosen].astype(np.float64) * (mean_logit / norms[chosen])[:, np.newaxis]
        table[ids] = rows.astype(table.dtype)
        variable.assign(table)
    record = {
        "from_contexts": int(ids.size),
        "positions": int(counts[1:].sum()),
        "new_item_positions": int(counts[new].sum()),
        "mean_positive_logit": mean_logit,
    }
    if mean_logit is None:
        log.warning("%s: %s: no training position has a parent's item as its target; new rows stay fresh", KEY, name)
    log.info(
        "%s: %s: %d new item rows set from the contexts they follow (%d of %d training positions; mean positive "
        "logit of mapped items %s); new items with no training position, kept fresh: %d",
        KEY,
        name,
        record["from_contexts"],
        record["new_item_positions"],
        record["positions"],
        "n/a" if mean_logit is None else f"{mean_logit:.4f}",
        int(new.sum()) - record["from_contexts"],
    )
    return record
