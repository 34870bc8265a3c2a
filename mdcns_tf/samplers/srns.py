"""SRNS (Ding et al. NeurIPS 2020, "Simplify and Robustify Negative Sampling"), after the official code
(github.com/dingjingtao/SRNS, ``SRNS_real/SRNS_main.py``, ``Model.py``, ``run.sh``).

The official rule, per training pair (u, i):

1. **pick**: among the S1 items of u's memory, the negative maximising
   ``sig(s_uj - s_ui) + alpha . min(1, epoch / warmup) . std_j``, the current likelihood of j outranking i plus the
   population standard deviation of that likelihood over the snapshots of the last 5 epoch ends (false negatives
   keep a stable score; informative true negatives fluctuate while the model learns them);
2. **memory update**: S2 new candidates join the S1 memory items and S1 of the S1 + S2 are kept, drawn without
   replacement with probabilities softmax(s_uj / T) (``np.random.choice(p=..., replace=False)``; here a Gumbel-top-k
   draw, one `top_k`, no loop);
3. **loss**: BPR, ``-log sig(s_ui - s_uj)`` (``Model.py``); here ``loss.name``: ``bpr`` is the official loss,
   ``bce`` (the project default) or the other sampled losses are options.

Where the variance comes from. The official code scores a per-user monitor set (3000 uniform items) at every epoch
end and the memory holds indices into it; the set rotates every epoch and is used once it has 5 snapshots. Here
the snapshots are of the model itself (`snapshots.ModelSnapshots`: the end-of-epoch item table and the user's
dropout-free state at its visit), which gives the likelihood history of *any* item: every memory candidate, a newly
admitted one included, has its full history (the previous version recorded the history online for memory items
only, so a newly admitted item had variance 0). The history of epoch e' is
``sig(state_u^e' . E^e'[j] - state_u^e' . E^e'[i])`` with i the positive being trained now (the official code keeps
the positive's snapshot scores per (u, i) pair the same way).

Sequential mapping (the paper is for (user, item) pairs):

* "u" is the training sequence's ``user_index``: one memory per user, shared by all its positions. The memory
  holds item ids and persists across epochs (the official memory holds indices into the rotating monitor set, so
  each epoch it lands on new random items; holding ids keeps the memory's softmax refresh meaningful across
  epochs, where a user is visited once an epoch with ``train_positions: all``).
* Each trained position l picks its own negative with its own likelihood ``sig(s_lj - s_l,target_l)``. The std is
  the user's, at its last trained position (the state the user's latest item is predicted from, and the only
  position whose state is snapshotted), against its target there.
* Scores for selection, memory and snapshots come from the dropout-free states (``needs_inference_states``: one
  more forward pass a step); the official model (MF) has no dropout, so its scores carry no such noise.

State (tf.Variables, checkpointed with the model, updated in-graph): the memory, S1 int32 a user, plus the
snapshots (see `snapshots`). With the defaults and dim 64: 32 + 1,560 bytes a user (Beauty, 22,363 users: 36 MB)
plus 18.6 MB of item tables for Beauty's 12,101 items.
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
from mdcns_tf.samplers.snapshots import ModelSnapshots


@dataclasses.dataclass
class SRNSParams:
    """Config block ``sampler.srns``. Defaults are the official run script's (dingjingtao/SRNS,
    ``SRNS_real/run.sh`` and ``SRNS_main.py``), also the values docs/design.md, section "Samplers" quotes.

    memory_size     S1, candidate negatives remembered per user (``--S1 8``; must be >= num_negatives).
    fresh_size      S2, new candidates drawn at each visit to refresh the memory (``S1 * --S2_div_S1`` = 8 * 8).
    alpha           weight of the std term (``--alpha 5.0``).
    warmup_epochs   the std weight is ``alpha . min(1, epoch / warmup_epochs)``, epoch counted from 0
                    (``--warmup 50``): scores are noise at the start, so their variance means nothing yet.
    temperature     T in the memory update softmax(s / T) (``--temperature 10.0``).
    history_epochs  epoch-end snapshots the std is taken over (5, hard-coded in ``SRNS_main.py``).

    The MDCNS authors' port (Lyz103/SIGIR26-MDCNS, ``Baselines/Neg_samples_srns``) differs: S1 = S2 = 20, warm-up
    1 epoch, std of raw scores (not likelihoods) per prefix sample over a fixed candidate list, the memory update
    a deterministic top-S1 by score, BCE by default. We follow the official code.
    """

    memory_size: int = 8
    fresh_size: int = 64
    alpha: float = 5.0
    warmup_epochs: int = 50
    temperature: float = 10.0
    history_epochs: int = 5


def history_std(history: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Population standard deviation over the valid snapshots (as ``SRNS_main.py``: sqrt(mean squared deviation)).

    history `(batch, window, n)`, valid bool `(batch, window)` -> `(batch, n)`; 0 with fewer than two snapshots.
    """
    weights = tf.cast(valid, history.dtype)[..., tf.newaxis]
    count = tf.reduce_sum(weights, axis=1)
    mean = tf.math.divide_no_nan(tf.reduce_sum(history * weights, axis=1), count)
    variance = tf.math.divide_no_nan(tf.reduce_sum(tf.square(history - mean[:, tf.newaxis]) * weights, 1), count)
    return tf.sqrt(variance)


def srns_pick(likelihood: tf.Tensor, std: tf.Tensor, variance_weight: tf.Tensor, k: int) -> tf.Tensor:
    """Indices of the ``k`` memory items maximising likelihood + variance_weight . std.

    likelihood `(batch, seq_len, s1)` = sig(s_lj - s_l+), std `(batch, s1)` -> `(batch, seq_len, k)`.
    """
    criterion = likelihood + variance_weight * std[:, tf.newaxis, :]
    return tf.math.top_k(criterion, k=k).indices


class SRNSSampler(NegativeSampler):
    Params = SRNSParams
    replica_local_state = True
    needs_inference_states = True

    def __init__(self, params: SRNSParams, n_items: int, n_users: int, num_negatives: int, *args, **kwargs) -> None:
        super().__init__(params, n_items, n_users, num_negatives, *args, **kwargs)
        if not num_negatives <= params.memory_size <= params.fresh_size:
            raise ValueError(
                f"srns: need num_negatives ({num_negatives}) <= memory_size ({params.memory_size}) <= fresh_size "
                f"({params.fresh_size}): the fresh draw also fills empty memories"
            )
        if params.temperature <= 0 or params.history_epochs < 1 or params.warmup_epochs < 0:
            raise ValueError("srns: temperature must be > 0, history_epochs >= 1, warmup_epochs >= 0")
        # id 0 = empty slot (row 0 unused, user_index is 1-based): a user's memory is filled from its first draw.
        self.memory_ids = tf.Variable(
            tf.zeros([n_users + 1, params.memory_size], tf.int32), trainable=False, name="memory_ids"
        )
        self.snapshots = ModelSnapshots(n_users, n_items, self.embedding_dim, params.history_epochs, name="snapshots")
        self.epoch = tf.Variable(0, trainable=False, name="epoch")

    @staticmethod
    def bytes_per_user(params: SRNSParams, dim: int = 64) -> int:
        return 4 * params.memory_size + ModelSnapshots.bytes_per_user(dim, params.history_epochs)

    def variance_weight(self) -> tf.Tensor:
        warmup = max(self.params.warmup_epochs, 1e-9)
        return self.params.alpha * tf.minimum(1.0, tf.cast(self.epoch, tf.float32) / warmup)

    def sample(self, context: SamplingContext) -> Negatives:
        p = self.params
        s1 = p.memory_size
        users = tf.cast(context.user_index, tf.int32)
        states = context.reference_states()
        table = tf.stop_gradient(context.item_embeddings)
        memory = tf.gather(self.memory_ids, users)  # (B, S1)

        fresh = sample_excluding(self.generator, context.exclusion_ids, self.n_items, p.fresh_size)  # (B, S2)
        empty = tf.equal(memory, 0)
        memory = tf.where(empty, fresh[:, :s1], memory)

        pool = tf.concat([memory, fresh], axis=1)  # (B, S1 + S2)
        scores = score_candidates(states, table, pool)  # (B, L, S1 + S2)
        likelihood = tf.sigmoid(scores[..., :s1] - positive_scores(states, table, context.target_ids)[..., None])

        # 1. The std of each memory item's likelihood over the last epochs' snapshots, at the last trained position.
        last = last_trained_position(context.target_ids)
        target = at_position(tf.cast(context.target_ids, tf.int32), last)  # (B,)
        past, valid = self.snapshots.past_scores(users, tf.concat([target[:, None], memory], axis=1), self.epoch)
        std = history_std(tf.sigmoid(past[..., 1:] - past[..., :1]), valid)  # (B, S1)
        picks = srns_pick(likelihood, std, self.variance_weight(), self.num_negatives)
        ids = gather_pool(memory, picks)

        # 2. Memory update: keep S1 of memory + fresh, drawn by softmax(s / T) without replacement. A fresh item
        # already in memory is masked so the memory never holds one item twice.
        logits = at_position(scores, last) / p.temperature
        logits = tf.where(tf.concat([tf.zeros_like(empty), duplicates_of(fresh, memory)], 1), -float("inf"), logits)
        keep = gumbel_top_k(self.generator, logits, s1)  # (B, S1) indices into the pool
        self.memory_ids.scatter_nd_update(users[:, None], tf.gather(pool, keep, batch_dims=1))

        # 3. This epoch's snapshot: the user's state at its last trained position, and the item table.
        self.snapshots.record(users, at_position(states, last), table, self.epoch)
        return Negatives(ids=ids)

    def on_epoch_end(self, epoch: int) -> None:
        self.epoch.assign(epoch + 1)

    def metrics(self) -> dict[str, tf.Tensor]:
        return {"srns_variance_weight": self.variance_weight()}
