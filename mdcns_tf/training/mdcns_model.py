"""MDCNS: Multi-source Divergence-Consensus Negative Sampling (SIGIR 2026, arXiv 2605.19651).

The algorithm with its equations: docs/design.md, section "MDCNS".

One Keras model holds three submodels: the **self** backbone (validated, early-stopped on and exported), the
**peer** backbone (a different architecture trained jointly and symmetrically with its own optimizer) and the
**teacher** (by default a weight-free consensus of the two students' scores). Per training step, in-graph:

1. candidate pool C: uniform items outside the sequence (history and targets), one pool per sequence shared by
   all its positions `(batch, N)`, or with ``pool_scope: position`` a fresh one per trained position (the P trained
   positions of the batch laid out as one sequence, `(1, P, N)`), drawn from the catalogue or, with
   ``pool_source: step`` (the default under lazy updates), from a shared draw of batch x N rows a step;
   with ``pool_alpha`` > 0 drawn in proportion to (training count + 1)^pool_alpha instead;
2. scores of both students on the positives `(batch, len)` and on C `(batch, len, N)` by batched matmul, or for
   pools per position by an XLA-fused gather-dot (`score_position_pools`; never a `(batch, len, N, dim)` tensor),
   teacher scores = consensus;
3. divergence d = |s_self - s_peer| (no gradient); each view * in {self, peer, teacher} re-ranks C by
   s* + beta_d . d, takes the top-M with `tf.math.top_k` and picks one uniformly: three negatives per position;
4. recommendation loss of each student on its own scores: alpha on its own view's negative, beta on the other
   student's, gamma on the teacher's;
5. consensus distillation tau^2 . KL(p_teacher || p_student) over {positive} + C with temperature tau, teacher
   without gradient, for both students; total = L_self + L_peer + mu . L_dis.

Ablations: ``no_distillation`` (CD), ``no_divergence`` (DR: beta_d = 0), ``self_view_only`` (MS: only the self
view's negative for each student, i.e. DNS(M,N)).
"""

from __future__ import annotations

import logging
from typing import Any

import tensorflow as tf
import tf_keras as keras

import mdcns_tf  # noqa: F401
from mdcns_tf import losses
from mdcns_tf.backbones import Backbone, build_backbone
from mdcns_tf.batch import EXCLUSION_IDS, INPUT_IDS, TARGET_IDS
from mdcns_tf.config import Config, MDCNSConfig
from mdcns_tf.features import Metadata
from mdcns_tf.samplers.candidates import (
    draw_cdf,
    sample_excluding,
    sample_from_rows,
    score_candidates,
    top_m_uniform_pick,
)
from mdcns_tf.samplers.pool_scoring import PoolRows, pool_rows, score_position_pools
from mdcns_tf.samplers.popularity import popularity_log_weights
from mdcns_tf.training import optimizers
from mdcns_tf.training.mdcns_teachers import BackboneTeacher, ConsensusTeacher
from mdcns_tf.training.retrieval_model import RetrievalModel, masked_mean, replica_scale

log = logging.getLogger(__name__)

# Pairwise on the three picks (the paper), or over the whole scored pool with the picks weighted up.
MDCNS_LOSSES = ("bce", "bpr", "sampled_softmax", "gbce")

# With lazy updates, a pool per position gets a sparse table gradient (its distinct rows) while a step draws fewer
# than this share of the table's rows (batch x max_len x pool_size, an upper bound), else the dense one, which
# LazyAdam applies with its XLA-compiled dense Adam: a pool that touches much of the table costs less updated
# densely. Measured at 1M items, max_len 50, pool 100, both ways side by side (dense / sparse step time): batch 16
# (draws 8% of the rows) 1.60, batch 32 (16%) 1.12, batch 64 (32%) 0.78, 128 (64%) 0.57, 256 (128%) 0.61; the
# crossover, interpolated, at ~21% (README "Catalogue scale", benchmarks/results/large_catalog_pool_gradient.json,
# command in benchmarks/large_catalog.py).
SPARSE_POOL_MAX_DRAWS_SHARE = 0.2


def positive_and_pool_scores(
    states: tf.Tensor,
    item_embeddings: tf.Tensor,
    target_ids: tf.Tensor,
    pool_ids: tf.Tensor,
    rows: PoolRows | None = None,
) -> tf.Tensor:
    """Scores of [positive, pool...] at every position.

    states `(batch, len, dim)`, target_ids `(batch, len)`, pool_ids `(batch, N)` (one pool a sequence) or
    `(batch, len, N)` (one a position) -> `(batch, len, 1 + N)`; column 0 is the positive. ``rows``: a pool per
    position's distinct rows (`pool_rows`), for a sparse table gradient; None: dense (see `score_position_pools`).
    A pool per sequence is a gather of the table variable, whose gradient is sparse anyway.
    """
    positive = tf.reduce_sum(states * tf.gather(item_embeddings, target_ids), axis=-1, keepdims=True)
    if pool_ids.shape.rank == 3:
        pool = score_position_pools(states, item_embeddings, pool_ids, rows)
    else:
        pool = score_candidates(states, item_embeddings, pool_ids)
    return tf.concat([positive, pool], axis=-1)


class MDCNSModel(RetrievalModel):
    """Teacher-Peer-Self model. ``self.encoder`` is the self backbone; only it is evaluated and exported."""

    def __init__(
        self,
        self_backbone: Backbone,
        peer_backbone: Backbone,
        params: MDCNSConfig,
        n_items: int,
        loss_name: str,
        seed: int,
        peer_learning_rate: float,
        teacher_backbone: Backbone | None = None,
        gbce_t: float = losses.GBCE_T,
        item_counts: list[int] | None = None,
        lazy_updates: bool = False,
        pool_draws_per_step: int | None = None,
        step_pool_rows: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(self_backbone, **kwargs)
        if loss_name not in MDCNS_LOSSES:
            raise ValueError(f"MDCNS trains with one of {MDCNS_LOSSES}, got loss {loss_name!r}")
        self.peer = peer_backbone
        self.params = params
        self.n_items = n_items
        self.loss_name = loss_name
        self.gbce_t = gbce_t
        # Pool distribution: None = uniform (the paper); else log-weights for the draw and log q for the logQ
        # correction. The +1 gives items without training interactions (user split) a chance too.
        self.pool_log_weights: tf.Tensor | None = None
        self.pool_log_probs: tf.Tensor | None = None
        self.pool_cdf: tf.Tensor | None = None
        if params.pool_alpha > 0:
            if item_counts is None:
                raise ValueError("mdcns.pool_alpha > 0 needs the training item counts")
            self.pool_log_weights, self.pool_log_probs = popularity_log_weights(
                item_counts, n_items, params.pool_alpha, count_offset=1.0, owner="mdcns.pool_alpha"
            )
            self.pool_cdf = draw_cdf(self.pool_log_weights)  # once, not a pass over the catalogue every step
        # Created under the strategy scope (train.run builds the model there): each replica then draws its own
        # stream (seed hashed with the global replica id), and the state is a checkpointed variable.
        self.generator = tf.random.Generator.from_seed(seed)
        # ``train.sparse_updates`` resolved: lazy, both item tables get sparse gradients (a pool per position's
        # distinct rows, `pool_rows`) and both students a `LazyAdam` (the self one from `prepare_for_training`).
        self.lazy_updates = lazy_updates
        # ``pool_draws_per_step`` (batch x max_len x pool_size) None: sparse whenever lazy.
        self.sparse_pool_gradient = lazy_updates and (
            pool_draws_per_step is None or pool_draws_per_step < SPARSE_POOL_MAX_DRAWS_SHARE * (n_items + 1)
        )
        # ``mdcns.pool_source`` resolved: the rows a step's pools per position draw from (None: the catalogue).
        self.step_pool_rows = None
        if params.pool_scope == "position" and (
            params.pool_source == "step" or (params.pool_source == "auto" and lazy_updates)
        ):
            if not step_pool_rows:
                raise ValueError("mdcns.pool_source step needs the rows of a step's pool (batch_size x pool_size)")
            self.step_pool_rows = step_pool_rows
        self.peer_optimizer = optimizers.adam(peer_learning_rate, lazy=lazy_updates)
        if params.teacher in ("mean", "sum"):
            self.teacher = ConsensusTeacher(params.teacher, name="teacher")
        else:
            if teacher_backbone is None:
                raise ValueError(f"teacher {params.teacher!r} needs a teacher backbone")
            self.teacher = BackboneTeacher(teacher_backbone, params.teacher, params.teacher_ema_decay, name="teacher")
        names = ["self_loss", "peer_loss", "distill_kl", "divergence", "view_agreement"]
        self.step_trackers = {name: keras.metrics.Mean(name=name) for name in names}

    def extra_trackers(self) -> list[keras.metrics.Metric]:
        return list(self.step_trackers.values())

    def build_for_input(self, max_len: int) -> None:
        super().build_for_input(max_len)
        dummy = tf.zeros([1, max_len], tf.int32)
        self.peer(dummy)
        if isinstance(self.teacher, BackboneTeacher):
            self.teacher.backbone(dummy)
            if self.params.teacher == "ema":
                for target, value in zip(self.teacher.backbone.weights, self.encoder.weights, strict=True):
                    target.assign(value)
            else:
                self.teacher.restore(self.params.teacher_checkpoint)

    def view_negatives(self, self_pool: tf.Tensor, peer_pool: tf.Tensor, teacher_pool: tf.Tensor) -> dict:
        """Divergence re-ranking: pool scores `(batch, len, N)` of each view -> picked pool indices `(batch, len)`."""
        divergence = tf.stop_gradient(tf.abs(self_pool - peer_pool))
        beta_d = 0.0 if self.params.no_divergence else self.params.beta_d
        picks = {}
        for view, scores in (("self", self_pool), ("peer", peer_pool), ("teacher", teacher_pool)):
            reranked = tf.stop_gradient(scores) + beta_d * divergence
            picks[view] = top_m_uniform_pick(self.generator, reranked, self.params.top_m)[..., 0]
        return {"picks": picks, "divergence": divergence}

    def student_loss(
        self,
        scores: tf.Tensor,
        own: tf.Tensor,
        other: tf.Tensor,
        teacher: tf.Tensor,
        pool_logq: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """Per-position loss `(batch, len)` of one student from its [positive, pool] scores `(batch, len, 1 + N)`.

        own / other / teacher: pool indices `(batch, len)` picked by this student's view, the other student's view
        and the teacher's view; the scores used are always this student's own. ``bce`` / ``bpr``: alpha, beta and
        gamma weigh a pairwise loss on each pick (the paper). ``sampled_softmax``: the whole pool is the negative set
        and each pick counts alpha / beta / gamma times more (log-weighted copies of the picks in the partition
        function). ``gbce``: the paper's BCE on the picks plus gSASRec's generalised BCE over the whole pool. Either
        way the scored pool is not thrown away. ``pool_logq`` (log q of each pool item, broadcastable to the pool's
        `(batch, len, N)`; None for the uniform pool, whose q is constant) is subtracted from the pool's scores in the
        softmax, so that a popularity-weighted pool still estimates the full softmax (Yi et al. 2019).
        """
        positive, pool = scores[..., 0], scores[..., 1:]
        p = self.params
        weights = [(own, p.alpha)] if p.self_view_only else [(own, p.alpha), (other, p.beta), (teacher, p.gamma)]
        weights = [(pick, weight) for pick, weight in weights if weight > 0]
        if not weights:  # every view weight 0: only the pool (if the loss uses it) is left
            weights = [(own, 0.0)]
        picks = tf.stack([pick for pick, _ in weights], axis=-1)  # (batch, len, views)
        pick_weights = tf.constant([weight for _, weight in weights], scores.dtype)
        negatives = tf.gather(pool, picks, batch_dims=2)  # (batch, len, views)
        if self.loss_name == "sampled_softmax":
            if pool_logq is not None:
                pool = pool - pool_logq
                negatives = tf.gather(pool, picks, batch_dims=2)
            # log 0 = -inf drops a zero-weight pick from the partition function
            return losses.sampled_softmax(positive, tf.concat([pool, negatives + tf.math.log(pick_weights)], axis=-1))
        pick_loss = "bpr" if self.loss_name == "bpr" else "bce"
        picks_loss = tf.reduce_sum(
            pick_weights * losses.pairwise_loss(pick_loss, positive[..., tf.newaxis], negatives[..., tf.newaxis]),
            axis=-1,
        )
        if self.loss_name != "gbce":
            return picks_loss
        # The paper's BCE on the picks plus gSASRec's calibrated BCE over the whole pool. The picks keep their own
        # positive terms: with only the pool's positive term (weight beta ~ .26 at 100 of 12k items) against the
        # picks' pushes (alpha + beta + gamma), both students collapsed to one score for every item within 8 epochs
        # on Beauty (paper_beauty, the first gbce run).
        beta = losses.gbce_beta(int(pool.shape[-1]), self.n_items, self.gbce_t)
        return picks_loss + losses.gbce(positive, pool, beta=beta)

    def reduce_distillation(self, per_position: tf.Tensor, trained: tf.Tensor) -> tf.Tensor:
        if self.params.distill_reduction == "sum":
            return tf.reduce_sum(per_position * tf.cast(trained, per_position.dtype))
        return self.reduce_positions(per_position, trained)

    def compute_losses(self, data: dict[str, tf.Tensor], training: bool = True) -> dict[str, tf.Tensor]:
        """All loss terms and step statistics for one training element (`mdcns_tf.batch`; see the module
        docstring)."""
        input_ids, target_ids = data[INPUT_IDS], data[TARGET_IDS]
        trained = tf.not_equal(target_ids, 0)
        exclusion_ids = data[EXCLUSION_IDS]
        per_position = self.params.pool_scope == "position"
        if per_position:
            # Pools only for the trained positions: padding's terms are masked out anyway, and its pools were ~22%
            # of the pool work on Beauty's length-bucketed batches (full softmax scores trained positions only, too).
            # The P trained positions are laid out as one sequence `(1, P)`, so the rest of the step is unchanged.
            where = tf.where(trained)  # (P, 2)

            def positions(values: tf.Tensor) -> tf.Tensor:
                return tf.gather_nd(values, where)[tf.newaxis]

            target_ids = positions(target_ids)
            trained = tf.ones_like(target_ids, tf.bool)
            exclusion_ids = tf.gather(exclusion_ids, where[:, 0])  # each position's own sequence
        else:

            def positions(values: tf.Tensor) -> tf.Tensor:
                return values

        # (batch, N): one pool a sequence; or (1, P, N): one a trained position
        rows = None
        if self.step_pool_rows is not None:
            # pool_source step: every position's pool from one shared draw of the catalogue; the step's table
            # gradient is those rows (`PoolRows` with repeats: the optimizer sums them).
            no_exclusions = tf.zeros([1, 1], tf.int32)
            step_ids = sample_excluding(
                self.generator, no_exclusions, self.n_items, self.step_pool_rows, probs_cdf=self.pool_cdf
            )[0]
            local = sample_from_rows(self.generator, exclusion_ids, step_ids, self.params.pool_size)[tf.newaxis]
            rows = PoolRows(step_ids, local)
            pool_ids = tf.gather(step_ids, local)
        else:
            pool_ids = sample_excluding(
                self.generator, exclusion_ids, self.n_items, self.params.pool_size, probs_cdf=self.pool_cdf
            )
            pool_ids = pool_ids[tf.newaxis] if per_position else pool_ids
        pool_logq = None
        if self.pool_log_probs is not None:
            pool_logq = tf.gather(self.pool_log_probs, pool_ids)  # (batch, N) or (1, P, N)
            pool_logq = pool_logq if pool_ids.shape.rank == 3 else pool_logq[:, tf.newaxis, :]

        # Lazy updates: the pool's distinct rows, once for every table scored on it.
        if rows is None and per_position and self.sparse_pool_gradient:
            rows = pool_rows(pool_ids, self.n_items + 1)

        def scores_of(backbone: Backbone, training: bool) -> tf.Tensor:
            states = positions(backbone(input_ids, training=training))
            return positive_and_pool_scores(states, backbone.item_embeddings, target_ids, pool_ids, rows)

        self_scores = scores_of(self.encoder, training)
        peer_scores = scores_of(self.peer, training)
        if isinstance(self.teacher, ConsensusTeacher):
            teacher_scores = self.teacher(self_scores, peer_scores)
        else:
            teacher_scores = scores_of(self.teacher.backbone, False)
        teacher_scores = tf.stop_gradient(teacher_scores)

        views = self.view_negatives(self_scores[..., 1:], peer_scores[..., 1:], teacher_scores[..., 1:])
        picks = views["picks"]
        self_loss = self.reduce_positions(
            self.student_loss(self_scores, picks["self"], picks["peer"], picks["teacher"], pool_logq), trained
        )
        peer_loss = self.reduce_positions(
            self.student_loss(peer_scores, picks["peer"], picks["self"], picks["teacher"], pool_logq), trained
        )

        if self.params.no_distillation:
            distill = tf.constant(0.0)
        else:
            tau = self.params.tau
            distill = self.reduce_distillation(
                losses.kl_distillation(teacher_scores, self_scores, tau)
                + losses.kl_distillation(teacher_scores, peer_scores, tau),
                trained,
            )
        agree = tf.equal(picks["self"], picks["peer"]) & tf.equal(picks["self"], picks["teacher"])
        return {
            "loss": self_loss + peer_loss + self.params.mu * distill,
            "self_loss": self_loss,
            "peer_loss": peer_loss,
            "distill_kl": distill,
            "divergence": masked_mean(tf.reduce_mean(views["divergence"], axis=-1), trained),
            "view_agreement": masked_mean(tf.cast(agree, tf.float32), trained),
        }

    def train_step(self, data: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            terms = self.compute_losses(data, training=True)
            loss = terms["loss"]
            # Replicas' gradients are summed: batch means are divided by the replica count; a batch *sum*
            # (distill_reduction "sum") is already additive over replicas and is not.
            distill = self.params.mu * terms["distill_kl"]
            if self.params.distill_reduction == "mean":
                gradient_loss = replica_scale(loss)
            else:
                gradient_loss = replica_scale(loss - distill) + distill
        # The divergence, the picks and the teacher carry no gradient, so d loss / d self-weights is exactly
        # d (L_self + mu . KL_self) / d self-weights and likewise for the peer: one tape, two optimizers.
        self_vars, peer_vars = self.encoder.trainable_variables, self.peer.trainable_variables
        gradients = tape.gradient(gradient_loss, self_vars + peer_vars)
        self.optimizer.apply_gradients(zip(gradients[: len(self_vars)], self_vars, strict=True))
        self.peer_optimizer.apply_gradients(zip(gradients[len(self_vars) :], peer_vars, strict=True))
        if isinstance(self.teacher, BackboneTeacher):
            self.teacher.follow(self.encoder)
        self.loss_tracker.update_state(loss)
        for name, tracker in self.step_trackers.items():
            tracker.update_state(terms[name])
        return {"loss": self.loss_tracker.result(), **{n: t.result() for n, t in self.step_trackers.items()}}


def build_mdcns_model(config: Config, metadata: Metadata) -> MDCNSModel:
    """Self backbone ``model.backbone``, peer ``mdcns.peer_backbone`` (same sizes), teacher per ``mdcns.teacher``."""
    params = config.mdcns
    if params.peer_backbone == config.model.backbone:
        log.warning(
            "MDCNS peer backbone equals the self backbone (%s); the paper uses a different one", params.peer_backbone
        )
    max_len = config.data.max_len
    self_backbone = build_backbone(config.model, metadata.n_items, max_len)
    peer_backbone = build_backbone(config.model, metadata.n_items, max_len, name=params.peer_backbone)
    teacher_backbone = None
    if params.teacher in ("ema", "frozen"):
        teacher_backbone = build_backbone(config.model, metadata.n_items, max_len)
    return MDCNSModel(
        self_backbone,
        peer_backbone,
        params,
        n_items=metadata.n_items,
        loss_name=config.loss.name,
        seed=config.seed,
        peer_learning_rate=params.peer_learning_rate or config.train.learning_rate,
        teacher_backbone=teacher_backbone,
        gbce_t=config.loss.gbce_t,
        item_counts=metadata.item_counts,
        lazy_updates=optimizers.lazy_updates(config.train.sparse_updates, metadata.n_items),
        pool_draws_per_step=config.data.batch_size * max_len * params.pool_size,
        step_pool_rows=config.data.batch_size * params.pool_size,
        ks=config.eval.ks,
        eval_chunk_size=config.eval.item_chunk_size,
        name="mdcns",
    )
