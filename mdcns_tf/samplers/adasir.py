"""AdaSIR (Chen et al. WWW 2022, "Learning Recommenders for Implicit Feedback with Importance Resampling") as the
MDCNS authors run it (``Baselines/Neg_samples_two_pass``: ``datasets.two_pass_weight``, the "two-pass" sampler).

Selection rule of the authors' code, per training sample (their ``user_id`` is the row of the training file, one
row per prefix) with a pool of ``pool_size`` (10) remembered items:

1. **negative**: one item drawn uniformly from the sample's pool (``two_pass_weight.forward``);
2. after the model's update, **first pass**: ``sample_size`` (200) items drawn uniformly from the catalogue (q
   uniform); **second pass**: ``pool_size`` of them resampled with replacement with probabilities
   softmax(s_j - log q_j) = softmax(s_j), s_j the model's score at the sample's last position (``re_sample``);
3. **pool update**: a sample seen for the first time takes the resampled items as its pool; otherwise its new
   pool is ``pool_size`` items drawn uniformly with replacement from the old pool plus the resampled items
   (``two_pass_weight.__update_pool__``), so items survive across visits with halving probability.

The importance weights the authors store with the pool (``pool_weight``) come back from ``forward`` as a log
weight but the trainer discards them (``target_neg, _ = self.sampler(...)``): the loss is plain BCE on the
negative, so this port keeps no weights either.

Differences from the authors' code, and assumptions:

* **Pool owner**: the pool is per user (``user_index``, 1-based) and shared by all of the user's positions: with
  ``train_positions: all`` a user is one sample an epoch, as there; with ``last`` the prefixes of one user share
  a pool where the authors keep one per prefix row.
* **Order within a step**: the resampling scores use this step's states (before the update, no gradient) instead
  of a second forward pass after it, and the negatives are picked from the pool as it was before this visit;
  a user's first visit (empty pool) picks from the freshly resampled items. The authors' first visit draws from
  an all-zero pool and so trains against the padding item 0 for every sample of the first epoch; that is not
  reproduced.
* **Candidates**: the uniform first pass draws from the items outside the user's sequence (the authors draw
  from ``[0, item_size)``, padding and history included), so no negative is ever a history item or the target.
* **Scoring position**: the user's last trained position (its state and the items it ranks), as for SRNS here;
  the picked negative is used at every trained position of the user.
* Users appearing twice in one batch (prefix samples) write their pool row once; which write wins is unspecified.

State: ``pool_size`` int32 ids a user (40 bytes with the defaults; Beauty's 22,363 users: 0.9 MB).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from mdcns_tf.samplers.base import Negatives, NegativeSampler, SamplingContext
from mdcns_tf.samplers.candidates import (
    at_position,
    gumbel_top_k,
    last_trained_position,
    sample_excluding,
    score_candidates,
)


@dataclasses.dataclass
class AdaSIRParams:
    """Config block ``sampler.adasir`` (defaults: the authors' ``two_pass_weight(user_size, item_size, 200, 10,
    1, device)`` in ``Baselines/Neg_samples_two_pass/trainers.py``; their run script's ``--N 100 --M 1`` are not
    read by that trainer).

    sample_size  first pass: uniform items scored per visit (200).
    pool_size    second pass: items resampled into the pool by softmax(score), and the pool's size (10).
    temperature  the resampling is softmax(score / temperature); 1.0 in the authors' code (no temperature).
    """

    sample_size: int = 200
    pool_size: int = 10
    temperature: float = 1.0


def draws_with_replacement(generator: tf.random.Generator, logits: tf.Tensor, num: int) -> tf.Tensor:
    """``num`` independent draws with probabilities softmax(``logits``) (``torch.multinomial(..., replacement=
    True)``): one Gumbel-max per draw. logits `(batch, n)` -> indices `(batch, num)`."""
    tiled = tf.repeat(logits[:, tf.newaxis, :], num, axis=1)  # (batch, num, n)
    return gumbel_top_k(generator, tiled, 1)[..., 0]


def merge_pools(generator: tf.random.Generator, old: tf.Tensor, fresh: tf.Tensor, empty: tf.Tensor) -> tf.Tensor:
    """The authors' pool update: rows with an ``empty`` pool take ``fresh``; the others take ``pool_size`` items
    drawn uniformly with replacement from ``old`` + ``fresh``. old, fresh `(batch, p)`, empty `(batch,)` bool."""
    pool_size = tf.shape(old)[1]
    candidates = tf.concat([old, fresh], axis=1)
    choice = generator.uniform(tf.shape(old), minval=0, maxval=2 * pool_size, dtype=tf.int32)
    return tf.where(empty[:, tf.newaxis], fresh, tf.gather(candidates, choice, batch_dims=1))


class AdaSIRSampler(NegativeSampler):
    Params = AdaSIRParams
    replica_local_state = True  # per-user pools scatter-updated in the training step

    def __init__(self, params: AdaSIRParams, n_items: int, n_users: int, *args, **kwargs) -> None:
        super().__init__(params, n_items, n_users, *args, **kwargs)
        if params.pool_size < 1 or params.sample_size < 1 or params.temperature <= 0:
            raise ValueError("adasir: need pool_size >= 1, sample_size >= 1 and temperature > 0")
        # id 0 = empty: a user's first visit fills its pool. Row 0 unused (user_index is 1-based).
        self.pool_ids = tf.Variable(tf.zeros([n_users + 1, params.pool_size], tf.int32), trainable=False, name="pool")

    def sample(self, context: SamplingContext) -> Negatives:
        p = self.params
        users = tf.cast(context.user_index, tf.int32)
        batch, seq_len = tf.shape(context.target_ids)[0], tf.shape(context.target_ids)[1]
        old = tf.gather(self.pool_ids, users)  # (B, P)
        empty = tf.reduce_all(tf.equal(old, 0), axis=1)  # (B,)

        # Two passes: uniform items, then resampled by softmax(score) at the user's last trained position.
        first = sample_excluding(self.generator, context.exclusion_ids, self.n_items, p.sample_size)  # (B, S)
        last = last_trained_position(context.target_ids)
        states = tf.stop_gradient(at_position(context.states, last))[:, tf.newaxis, :]  # (B, 1, d)
        # The scores are cut from the tape, not the table (a stop_gradient on it would read it whole every step).
        scores = tf.stop_gradient(score_candidates(states, context.item_embeddings, first))[:, 0, :]  # (B, S)
        resampled = draws_with_replacement(self.generator, scores / p.temperature, p.pool_size)
        fresh = tf.gather(first, resampled, batch_dims=1)  # (B, P)

        # Negatives from the pool as it was before this visit (the fresh one on a first visit).
        pool = tf.where(empty[:, tf.newaxis], fresh, old)
        choice = self.generator.uniform(
            tf.stack([batch, seq_len * self.num_negatives]), minval=0, maxval=p.pool_size, dtype=tf.int32
        )
        ids = tf.reshape(tf.gather(pool, choice, batch_dims=1), [batch, seq_len, self.num_negatives])

        self.pool_ids.scatter_nd_update(users[:, tf.newaxis], merge_pools(self.generator, old, fresh, empty))
        return Negatives(ids=ids)
