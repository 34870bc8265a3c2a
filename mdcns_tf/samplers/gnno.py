"""GNNO (Fan et al. SIGIR 2023, "Neighborhood-based Hard Negative Mining for Sequential Recommendation", code
floatSDSDS/GNNO) as the MDCNS authors run it (``Baselines/Neg_samples_gnno``).

**Item graph** (``run_finetune_full.py``: ``build_WITG_from_trainset``, ``construct_graph``): the weighted item
transition graph of the training sequences, an undirected edge between every two items at distance 1..3 in a
sequence. Only its binary adjacency A enters the sampler (``graph_dgl.adj()`` ignores the 1/k edge weights and
their normalisation), through the Jaccard similarity of neighbourhoods
``J(i, j) = |N(i) & N(j)| / |N(i) | N(j)|`` (``(A A^T)_ij / (deg_i + deg_j - (A A^T)_ij)``, 0 for isolated items).

**Selection rule** (``trainers.py``: ``get_gnno_negs``, ``DynamicNegWithMSampling``), per training sample with
state h and target t, at curriculum hardness H:

1. ``graph_negatives`` (10) items drawn with replacement with p(j) proportional to exp(J(t, j)) . [J(t, j) <= H]:
   items whose neighbourhood overlaps the target's more than H are excluded as likely false negatives; the rest
   are weighted by their overlap (J = 0 for most items, so the draw is close to uniform with a mild preference
   for items near the target);
2. ``pool_size - graph_negatives`` (90) uniform candidates from outside the sequence (the authors'
   ``args.N = N - gnums``);
3. the 100 are scored h . e(j) and the negative is drawn uniformly among the top-``top_m`` (DNS(M,N));
4. H starts at 0.05 and grows by 0.01 after every epoch up to 0.4 (easy to hard: more similar items are admitted).
5. the loss is BPR (``run_finetune_full.py``: ``--loss_type`` default BPR; the run script passes none): run it
   with ``loss.name: bpr`` as the authors did.

Differences from the GNNO paper: the paper samples its negatives from the graph distribution alone; the MDCNS
authors add the DNS(M,N) re-ranking over graph and uniform candidates, and that is what is ported.

Differences from the authors' code, and assumptions:

* The graph draws never return the padding item or an item of the user's sequence (the authors' draw is over
  every graph node, padding and history included): they are made by rejection from uniform proposals outside
  the sequence (`graph_negatives`), which gives exactly p(j) restricted to those items. After ``MAX_ROUNDS``
  rejections a draw keeps its last uniform proposal (never reached in practice: acceptance >= exp(-H) . the
  share of items with J <= H).
* Sparse storage: the pairs with J(i, j) > ``min_similarity`` are kept (int64 keys i . (n_items + 1) + j and
  float32 values in a `tf.lookup.StaticHashTable`, 20x faster than a binary search of the sorted keys); smaller
  overlaps count as J = 0, which changes their weight exp(J) by less than exp(min_similarity) - 1 (2% at the
  default 0.02) and never their admission
  (``min_similarity`` < the first hardness). Beauty's full graph has 47.7M pairs with J > 0, 6.9M above 0.02
  (83 MB), 2.2M above 0.03.
* The graph is built from the training split (`prepare`, called by the trainer before the first step), as the
  authors build it from their ``_train.txt``; without `prepare` the graph is empty and the graph draws are uniform.
* With ``train_positions: all`` every trained position is a sample: its own target's graph draws, and the
  sequence's 90 uniform candidates shared by its positions (as DNS(M,N) here). The hardness follows the epoch
  counter (`on_epoch_end`), which is checkpointed, so a resumed run continues the curriculum.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable

import numpy as np
import tensorflow as tf

from mdcns_tf.samplers.base import Negatives, NegativeSampler, SamplingContext
from mdcns_tf.samplers.candidates import sample_excluding, score_candidates, score_items, top_m_uniform_pick

log = logging.getLogger(__name__)

# Rejection rounds of a graph draw before it keeps its last uniform proposal.
MAX_ROUNDS = 100


@dataclasses.dataclass
class GNNOParams:
    """Config block ``sampler.gnno`` (sources: the authors' ``Baselines/Neg_samples_gnno``).

    pool_size         N, candidates per negative, graph draws included: 100 (``N=100`` in ``run_finetune.bash``).
    graph_negatives   of which drawn from the graph: 10 (``'gnums': 10`` in ``run_finetune_full.py``).
    top_m             M, the pick is uniform among the top-M of the N scored candidates. The run script sweeps
                      M over {1..10, 15, ..., 50} and no GNNO log was released; 10 is the ``--M`` default of
                      ``run_finetune_full.py`` and the M of the authors' only released DNS+ Beauty run.
    hardness_start    maximum Jaccard overlap admitted in the first epoch: 0.05 (``min(0.01 * 5, 0.4)``).
    hardness_step     added after every epoch: 0.01.
    hardness_max      cap: 0.4.
    window            items at distance 1..window in a sequence are neighbours: 3 (``for k in range(1, 4)``).
    min_similarity    overlaps up to this count as 0 in storage (ours; see the module docstring). Must be below
                      ``hardness_start``; 0 stores every pair with J > 0.
    """

    pool_size: int = 100
    graph_negatives: int = 10
    top_m: int = 10
    hardness_start: float = 0.05
    hardness_step: float = 0.01
    hardness_max: float = 0.4
    window: int = 3
    min_similarity: float = 0.02


def item_jaccard(
    sequences: Iterable[np.ndarray], n_items: int, window: int = 3, min_similarity: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Jaccard similarity of item neighbourhoods on the binary transition graph of ``sequences``.

    Items at distance 1..``window`` in a sequence are neighbours (both ways; an item repeated within the window
    is its own neighbour, as in the authors' graph). Returns the pairs with J > ``min_similarity`` as sorted
    int64 keys ``i * (n_items + 1) + j`` and float32 values.
    """
    width = n_items + 1
    src, dst = [], []
    for sequence in sequences:
        sequence = np.asarray(sequence, np.int64)
        for k in range(1, window + 1):
            if len(sequence) > k:
                src += [sequence[:-k], sequence[k:]]
                dst += [sequence[k:], sequence[:-k]]
    keys_out, values_out = [], []
    if src:
        edges = np.unique(np.concatenate(src) * width + np.concatenate(dst))
        rows, cols = edges // width, edges % width
        degree = np.bincount(rows, minlength=width)
        indptr = np.concatenate([[0], np.cumsum(degree)])
        for i in np.flatnonzero(degree):
            neighbours = cols[indptr[i] : indptr[i + 1]]
            two_hop = np.concatenate([cols[indptr[m] : indptr[m + 1]] for m in neighbours])
            j, common = np.unique(two_hop, return_counts=True)
            similarity = common / (degree[i] + degree[j] - common)
            keep = similarity > min_similarity
            keys_out.append(i * width + j[keep])
            values_out.append(similarity[keep].astype(np.float32))
    keys = np.concatenate([np.zeros([0], np.int64), *keys_out]).astype(np.int64)
    values = np.concatenate([np.zeros([0], np.float32), *values_out]).astype(np.float32)
    return keys, values  # rows ascending, columns ascending within a row (np.unique): sorted


class SimilarityTable(tf.Module):
    """J(i, j) of the pairs `item_jaccard` kept, 0 for any other pair, in a hash table.

    keys int64 `(pairs,)` = i . (n_items + 1) + j, values float32 `(pairs,)`; called with rows, cols int `(...)`
    -> J `(...)`.
    """

    def __init__(self, keys: np.ndarray | tf.Tensor, values: np.ndarray | tf.Tensor, n_items: int) -> None:
        super().__init__(name="similarity_table")
        self.width = n_items + 1
        keys, values = tf.constant(keys, tf.int64), tf.constant(values, tf.float32)
        if int(tf.size(keys)) == 0:  # a hash table cannot be empty: key -1, which no pair maps to, stands in
            keys, values = tf.constant([-1], tf.int64), tf.constant([0.0])
        initializer = tf.lookup.KeyValueTensorInitializer(keys, values, tf.int64, tf.float32)
        self.table = tf.lookup.StaticHashTable(initializer, default_value=0.0)

    def __call__(self, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
        return self.table.lookup(tf.cast(rows, tf.int64) * self.width + tf.cast(cols, tf.int64))


def graph_negatives(
    generator: tf.random.Generator,
    similarity: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    exclusion_ids: tf.Tensor,
    target_ids: tf.Tensor,
    n_items: int,
    num: int,
    hardness: tf.Tensor,
) -> tf.Tensor:
    """``num`` draws per position with p(j) ~ exp(J(target, j)) . [J(target, j) <= hardness] over the items
    outside ``exclusion_ids``: uniform proposals outside the sequence, each accepted with probability
    exp(J - hardness) . [J <= hardness] (<= 1); only the rejected draws are proposed again (after the first round
    ~5%: re-proposing every draw each round cost 10x a uniform SASRec step).

    similarity: J of ``(rows, cols)``, e.g. a `SimilarityTable`; exclusion_ids `(batch, x)`, target_ids
    `(batch, seq_len)` -> ids `(batch, seq_len, num)`.
    """
    batch, seq_len = tf.shape(target_ids)[0], tf.shape(target_ids)[1]
    shape = tf.stack([batch, seq_len, num])
    per_row = seq_len * num
    targets = tf.reshape(tf.broadcast_to(target_ids[..., tf.newaxis], shape), [-1])

    def accepted(targets: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
        overlap = similarity(targets, ids)
        u = generator.uniform(tf.shape(ids), dtype=tf.float32)
        return tf.logical_and(overlap <= hardness, u < tf.exp(overlap - hardness))

    ids = tf.reshape(sample_excluding(generator, exclusion_ids, n_items, per_row), [-1])  # (B * L * num,)
    rejected = tf.where(tf.logical_not(accepted(targets, ids)))[:, 0]

    def body(ids: tf.Tensor, rejected: tf.Tensor, step: tf.Tensor):
        rows = tf.cast(rejected // tf.cast(per_row, tf.int64), tf.int32)
        proposals = sample_excluding(generator, tf.gather(exclusion_ids, rows), n_items, 1)[:, 0]
        ok = accepted(tf.gather(targets, rejected), proposals)
        # A draw still rejected after MAX_ROUNDS keeps its last proposal, as documented above.
        keep = tf.logical_or(ok, step + 1 >= MAX_ROUNDS)
        ids = tf.tensor_scatter_nd_update(
            ids, tf.boolean_mask(rejected, keep)[:, tf.newaxis], tf.boolean_mask(proposals, keep)
        )
        return ids, tf.boolean_mask(rejected, tf.logical_not(keep)), step + 1

    ids, _, _ = tf.while_loop(
        lambda ids, rejected, step: tf.size(rejected) > 0,
        body,
        (ids, rejected, tf.constant(0)),
        shape_invariants=(ids.shape, tf.TensorShape([None]), tf.TensorShape([])),
    )
    return tf.reshape(ids, shape)


class GNNOSampler(NegativeSampler):
    Params = GNNOParams
    needs_train_sequences = True

    def __init__(self, params: GNNOParams, n_items: int, *args, **kwargs) -> None:
        super().__init__(params, n_items, *args, **kwargs)
        p = params
        if not 1 <= p.graph_negatives < p.pool_size or not 1 <= p.top_m <= p.pool_size:
            raise ValueError(
                f"gnno: need 1 <= graph_negatives < pool_size and 1 <= top_m <= pool_size, got graph_negatives "
                f"{p.graph_negatives}, pool_size {p.pool_size}, top_m {p.top_m}"
            )
        if not 0.0 <= p.min_similarity < p.hardness_start <= p.hardness_max or p.hardness_step < 0 or p.window < 1:
            raise ValueError(
                "gnno: need 0 <= min_similarity < hardness_start <= hardness_max, hardness_step >= 0, window >= 1"
            )
        self.epoch = tf.Variable(0, trainable=False, name="epoch")
        self.similarity = SimilarityTable(np.zeros([0], np.int64), np.zeros([0], np.float32), n_items)

    def prepare(self, train_sequences: Iterable[np.ndarray]) -> None:
        p = self.params
        keys, values = item_jaccard(train_sequences, self.n_items, p.window, p.min_similarity)
        self.similarity = SimilarityTable(keys, values, self.n_items)
        log.info(
            "gnno: %d item pairs with Jaccard overlap > %g (%.1f MB)",
            len(keys),
            p.min_similarity,
            (keys.nbytes + values.nbytes) / 1e6,
        )

    def hardness(self) -> tf.Tensor:
        p = self.params
        grown = p.hardness_start + p.hardness_step * tf.cast(self.epoch, tf.float32)
        return tf.minimum(grown, p.hardness_max)

    def sample(self, context: SamplingContext) -> Negatives:
        p, k = self.params, self.num_negatives
        uniform, graph = p.pool_size - p.graph_negatives, p.graph_negatives
        batch, seq_len = tf.shape(context.target_ids)[0], tf.shape(context.target_ids)[1]
        # Selection only. The scores, not the table, are cut from the tape: a stop_gradient on the table variable reads
        # it whole every step (a 256 MB copy at 1M items), the gathers only the candidates' rows.
        states = tf.stop_gradient(context.states)
        embeddings = context.item_embeddings

        pool_ids = sample_excluding(self.generator, context.exclusion_ids, self.n_items, k * uniform)  # (B, k*U)
        pool_scores = tf.stop_gradient(score_candidates(states, embeddings, pool_ids))
        pool_scores = tf.reshape(pool_scores, [batch, seq_len, k, uniform])
        graph_ids = graph_negatives(
            self.generator,
            self.similarity,
            context.exclusion_ids,
            context.target_ids,
            self.n_items,
            k * graph,
            self.hardness(),
        )  # (B, L, k*G)
        graph_scores = tf.stop_gradient(score_items(states, embeddings, graph_ids))
        graph_scores = tf.reshape(graph_scores, [batch, seq_len, k, graph])

        scores = tf.concat([pool_scores, graph_scores], axis=-1)  # (B, L, k, N)
        ids = tf.concat(
            [
                tf.broadcast_to(tf.reshape(pool_ids, [batch, 1, k, uniform]), tf.stack([batch, seq_len, k, uniform])),
                tf.reshape(graph_ids, [batch, seq_len, k, graph]),
            ],
            axis=-1,
        )
        picks = top_m_uniform_pick(self.generator, scores, p.top_m, num_picks=1)  # (B, L, k, 1)
        return Negatives(ids=tf.gather(ids, picks, batch_dims=3)[..., 0])

    def on_epoch_end(self, epoch: int) -> None:
        self.epoch.assign(epoch + 1)

    def metrics(self) -> dict[str, tf.Tensor]:
        return {"gnno_hardness": self.hardness()}
