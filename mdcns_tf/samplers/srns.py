"""SRNS (Ding et al. NeurIPS 2020, code dingjingtao/SRNS): simplify and robustify negative sampling.

Per user, a small memory of S1 candidate negatives. Each time the user is trained:

1. the negative is the memory item maximising ``sig(s_uj - s_ui) + alpha . min(1, t / warmup) . std_j``, where
   ``std_j`` is the standard deviation of ``sig(s_uj - s_ui)`` over the last ``history_epochs`` epochs: false
   negatives keep a stable, high score (low variance), informative true negatives fluctuate while the model
   learns them, so variance breaks ties between hard candidates in favour of true negatives;
2. the memory is refreshed: S2 fresh uniform items join the S1 memory items and S1 of the S1 + S2 are kept,
   drawn without replacement with probabilities softmax(s_uj / T) (the authors' ``np.random.choice(p=...,
   replace=False)``; here a Gumbel-top-k draw, one `top_k`, no loop).

Sequential mapping (the paper is for (user, item) pairs):

* "user" is the training sequence's ``user_index``: one memory per user, shared by all its positions.
* The memory and the variance history live at the user's **last trained position** (its state and target are
  the user's "u" and "i" there): that is the position the user's latest item is predicted from, and with
  ``train_positions: all`` it is the same (state, target) pair every epoch, so the history is a clean per-epoch
  series as in the paper. With ``last`` (prefix samples), a user appears once per prefix in an epoch; the memory
  is refreshed at each visit and the epoch's history entry is the value at the latest visit.
* Each trained position picks its own negative from the shared memory, with its own likelihood
  ``sig(s_lj - s_l,target_l)`` and the user-level ``std_j``.
* The authors score a separate 3000-item monitor set per user at each epoch end for the variance (60 MB per
  1000 users); here the history is recorded online, at the visit, for the memory items only, and travels with
  an item while it stays in memory (an item fresh to the memory starts without history: std 0).

State (tf.Variables, checkpointed with the model, updated in-graph with scatter updates), per user:
S1 int32 ids + S1 x history_epochs float32 likelihoods + history_epochs int32 epoch stamps. With the defaults
(S1 = 8, 5 epochs): 32 + 160 + 20 = 212 bytes a user; Sports (35,598 users) 7.5 MB, Games (31,013) 6.6 MB.
Users appearing twice in one batch (prefix samples) write their rows once; which write wins is unspecified.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from mdcns_tf.samplers.base import Negatives, NegativeSampler, SamplingContext
from mdcns_tf.samplers.candidates import (
    at_position,
    duplicates_of,
    gather_pool,
    gumbel_top_k,
    last_trained_position,
    positive_scores,
    sample_excluding,
    score_candidates,
)

# Marks an empty history entry; real entries are sigmoids in (0, 1).
EMPTY = -1.0


@dataclasses.dataclass
class SRNSParams:
    """Config block ``sampler.srns`` (defaults: DESIGN section 6 / the paper).

    memory_size     S1, candidate negatives remembered per user (must be >= num_negatives).
    fresh_size      S2, uniform items drawn at each visit to refresh the memory.
    alpha           weight of the variance term.
    warmup_epochs   the variance weight ramps linearly from 0 to alpha over this many epochs (scores are noise
                    at the start, so their variance means nothing yet).
    temperature     T in the memory resampling softmax(s / T).
    history_epochs  epochs over which the variance is taken.
    """

    memory_size: int = 8
    fresh_size: int = 64
    alpha: float = 5.0
    warmup_epochs: int = 50
    temperature: float = 10.0
    history_epochs: int = 5


def history_std(history: tf.Tensor, stamps: tf.Tensor, epoch: tf.Tensor, window: int) -> tf.Tensor:
    """Population standard deviation over the valid entries of each item's history.

    history `(batch, s1, window)` (``EMPTY`` = unobserved), stamps `(batch, window)` epoch each ring slot was
    written in, epoch scalar -> `(batch, s1)`; 0 with fewer than two valid entries. An entry is valid when it is
    observed and was written within the last ``window`` epochs (stale slots of skipped epochs do not count).
    """
    recent = tf.logical_and(stamps > epoch - window, stamps >= 0)[:, tf.newaxis, :]
    valid = tf.cast(tf.logical_and(recent, history >= 0.0), history.dtype)
    count = tf.reduce_sum(valid, axis=-1)
    mean = tf.math.divide_no_nan(tf.reduce_sum(history * valid, axis=-1), count)
    variance = tf.math.divide_no_nan(tf.reduce_sum(tf.square(history - mean[..., tf.newaxis]) * valid, -1), count)
    return tf.sqrt(variance)


def srns_pick(likelihood: tf.Tensor, std: tf.Tensor, variance_weight: tf.Tensor, k: int) -> tf.Tensor:
    """Indices of the ``k`` memory items maximising likelihood + variance_weight . std.

    likelihood `(batch, seq_len, s1)` = sig(s_lj - s_l+), std `(batch, s1)` -> `(batch, seq_len, k)`.
    """
    criterion = likelihood + variance_weight * std[:, tf.newaxis, :]
    return tf.math.top_k(criterion, k=k).indices


class SRNSSampler(NegativeSampler):
    Params = SRNSParams

    def __init__(self, params: SRNSParams, n_items: int, n_users: int, num_negatives: int, *args, **kwargs) -> None:
        super().__init__(params, n_items, n_users, num_negatives, *args, **kwargs)
        if not num_negatives <= params.memory_size <= params.fresh_size:
            raise ValueError(
                f"srns: need num_negatives ({num_negatives}) <= memory_size ({params.memory_size}) <= fresh_size "
                f"({params.fresh_size}): the fresh draw also fills empty memories"
            )
        if params.temperature <= 0 or params.history_epochs < 1 or params.warmup_epochs < 0:
            raise ValueError("srns: temperature must be > 0, history_epochs >= 1, warmup_epochs >= 0")
        rows, s1, window = n_users + 1, params.memory_size, params.history_epochs  # row 0: user_index is 1-based
        # id 0 = empty slot: a user's memory is filled from its first fresh draw.
        self.memory_ids = tf.Variable(tf.zeros([rows, s1], tf.int32), trainable=False, name="memory_ids")
        self.memory_history = tf.Variable(tf.fill([rows, s1, window], EMPTY), trainable=False, name="memory_history")
        self.history_stamps = tf.Variable(tf.fill([rows, window], -1), trainable=False, name="history_stamps")
        self.epoch = tf.Variable(0, trainable=False, name="epoch")

    @staticmethod
    def bytes_per_user(params: SRNSParams) -> int:
        return 4 * params.memory_size + 4 * params.memory_size * params.history_epochs + 4 * params.history_epochs

    def variance_weight(self) -> tf.Tensor:
        warmup = max(self.params.warmup_epochs, 1e-9)
        return self.params.alpha * tf.minimum(1.0, tf.cast(self.epoch, tf.float32) / warmup)

    def sample(self, context: SamplingContext) -> Negatives:
        p = self.params
        s1, window = p.memory_size, p.history_epochs
        users = tf.cast(context.user_index, tf.int32)
        memory = tf.gather(self.memory_ids, users)  # (B, S1)
        history = tf.gather(self.memory_history, users)  # (B, S1, W)
        stamps = tf.gather(self.history_stamps, users)  # (B, W)

        fresh = sample_excluding(self.generator, context.exclusion_ids, self.n_items, p.fresh_size)  # (B, S2)
        empty = tf.equal(memory, 0)
        memory = tf.where(empty, fresh[:, :s1], memory)
        history = tf.where(empty[..., tf.newaxis], EMPTY, history)

        # Selection and bookkeeping only: no gradient through these scores.
        states = tf.stop_gradient(context.states)
        embeddings = tf.stop_gradient(context.item_embeddings)
        pool = tf.concat([memory, fresh], axis=1)  # (B, S1 + S2)
        scores = score_candidates(states, embeddings, pool)  # (B, L, S1 + S2)
        likelihood = tf.sigmoid(scores[..., :s1] - positive_scores(states, embeddings, context.target_ids)[..., None])

        # 1. Negatives from the memory as it was before this visit.
        std = history_std(history, stamps, self.epoch, window)
        picks = srns_pick(likelihood, std, self.variance_weight(), self.num_negatives)
        ids = gather_pool(memory, picks)

        # 2. This epoch's history entry, at the user's last trained position.
        last = last_trained_position(context.target_ids)
        slot = self.epoch % window
        in_slot = tf.one_hot(slot, window, on_value=True, off_value=False)  # (W,)
        history = tf.where(in_slot, at_position(likelihood, last)[..., tf.newaxis], history)
        stamps = tf.where(in_slot, self.epoch, stamps)

        # 3. Memory refresh: keep S1 of memory + fresh, drawn by softmax(s / T) without replacement. A fresh item
        # already in memory is masked so the memory never holds one item twice.
        logits = at_position(scores, last) / p.temperature
        logits = tf.where(tf.concat([tf.zeros_like(empty), duplicates_of(fresh, memory)], 1), -float("inf"), logits)
        keep = gumbel_top_k(self.generator, logits, s1)  # (B, S1) indices into the pool
        pool_history = tf.concat([history, tf.fill([tf.shape(fresh)[0], p.fresh_size, window], EMPTY)], axis=1)
        self.memory_ids.scatter_nd_update(users[:, None], tf.gather(pool, keep, batch_dims=1))
        self.memory_history.scatter_nd_update(users[:, None], tf.gather(pool_history, keep, batch_dims=1))
        self.history_stamps.scatter_nd_update(users[:, None], stamps)
        return Negatives(ids=ids)

    def on_epoch_end(self, epoch: int) -> None:
        self.epoch.assign(epoch + 1)

    def metrics(self) -> dict[str, tf.Tensor]:
        return {"srns_variance_weight": self.variance_weight()}
