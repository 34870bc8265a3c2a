"""AutoSample (Lyu et al. 2023, arXiv 2311.03526): learn which negative sampler fits the model and the data.

Only the abstract was available; every choice below is ours and is documented as such.

**Search space.** ``candidates``: registered samplers (default uniform, popularity, DNS), each built with its own
config block from ``candidate_params`` and its own seeded generator.

**Loss-to-instance approximation.** Choosing one sampler per instance is relaxed to a softmax-weighted sum of
the candidates' losses: each candidate draws its own ``num_negatives`` negatives for every position and
``L_train = sum_s softmax(alpha)_s . L_s`` (each L_s is the candidate's own loss: a pairwise loss with its logQ
correction, or GDNS's margin loss).

**Bi-level update (DARTS).** The model's parameters w descend L_train; the architecture logits alpha descend
the validation loss after a virtual step ``w' = w - xi . grad_w L_train(w, alpha)``. Here L_val does not
depend on alpha directly (alpha weights losses, not layers), so DARTS's "first-order" variant (xi = 0) would give
alpha no gradient at all. We keep the one-step unrolled dependence and linearise it (first order in xi):
``L_val(w') ~= L_val(w) - xi . sum_s softmax(alpha)_s . <grad_w L_val(w), grad_w L_s(w)>``, so
``d L_val / d alpha_r = -xi . p_r . (a_r - sum_s p_s a_s)`` with ``a_s = <grad L_val, grad L_s>``: the weight of a
candidate grows when one step on its loss lowers the validation loss more than the mixture does. That costs one
backward pass per candidate plus one for L_val (every ``arch_every`` steps), no second forward pass, no
Hessian-vector product. xi is 1: alpha is updated with Adam (DARTS's betas 0.5, 0.999), invariant to that scale.

**Validation data.** As DARTS holds out half of the training set, a deterministic ``val_fraction`` of users
(hash of user_index) is held out during the search: their positions are zeroed in the weights' loss and give
L_val = full-softmax cross-entropy of their last trained position's target, a sampler-independent, smooth proxy
of the full-ranking metric (a sampled loss would prefer whichever sampler gives the easiest negatives). The
real validation split stays untouched for model selection.

**Search then retrain.** For ``search_epochs`` epochs the mixture trains and alpha is learned; at the end of that
epoch the argmax candidate is selected, the held-out users rejoin, and training continues with the selected
candidate alone, from the search-stage parameters (and optimizer state): ``train.epochs`` is the total of both
stages. Phase, selection and alpha are tf.Variables, so a resumed run (BackupAndRestore) continues in the right
stage; the graph is traced once (the phase is a `tf.cond`, the retrain draw a `tf.switch_case`).
"""

from __future__ import annotations

import dataclasses
import logging
import types
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from mdcns_tf import losses
from mdcns_tf.samplers.base import Negatives, NegativeSampler, SamplingContext
from mdcns_tf.samplers.candidates import at_position, last_trained_position

log = logging.getLogger("mdcns_tf.samplers.autosample")

SEARCH, RETRAIN = 0, 1


@dataclasses.dataclass
class AutoSampleParams:
    """Config block ``sampler.autosample``.

    candidates          registered sampler names forming the search space.
    candidate_params    optional config block per candidate, e.g. ``{dns: {pool_size: 50}}``.
    search_epochs       epochs of the search stage; then the argmax candidate retrains for the remaining epochs.
    arch_learning_rate  Adam learning rate of the architecture logits.
    arch_every          update the architecture every this many training steps (each update costs
                        len(candidates) + 1 extra backward passes).
    val_fraction        share of users held out for the architecture's validation loss during the search.
    """

    candidates: list = dataclasses.field(default_factory=lambda: ["uniform", "popularity", "dns"])
    candidate_params: dict = dataclasses.field(default_factory=dict)
    search_epochs: int = 5
    arch_learning_rate: float = 0.01
    arch_every: int = 1
    val_fraction: float = 0.1


def masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    mask = tf.cast(mask, values.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(values * mask), tf.reduce_sum(mask))


def held_out_users(user_index: tf.Tensor, fraction: float, seed: int) -> tf.Tensor:
    """bool `(batch,)`: whether each user is in the held-out ``fraction`` (Knuth multiplicative hash, so the same
    users every step and epoch without a table)."""
    mixed = tf.bitwise.bitwise_xor(tf.cast(user_index, tf.int64), tf.constant(seed % 2**31, tf.int64))
    hashed = (mixed * 2654435761) % 2**32
    return tf.cast(hashed, tf.float64) / 2.0**32 < fraction


def architecture_gradient(weights: tf.Tensor, alignment: tf.Tensor) -> tf.Tensor:
    """d L_val / d alpha under the linearised one-step unroll: ``-p_r (a_r - sum_s p_s a_s)``.

    weights `(K,)` = softmax(alpha), alignment `(K,)` = <grad L_val, grad L_s> -> `(K,)`.
    """
    return -weights * (alignment - tf.reduce_sum(weights * alignment))


def dot_gradients(first: list, second: list) -> tf.Tensor:
    """Inner product of two gradient lists (IndexedSlices densified; None = no dependence)."""
    terms = [
        tf.reduce_sum(tf.convert_to_tensor(a) * tf.convert_to_tensor(b))
        for a, b in zip(first, second, strict=True)
        if a is not None and b is not None
    ]
    return tf.add_n(terms) if terms else tf.constant(0.0)


class AutoSampleSampler(NegativeSampler):
    Params = AutoSampleParams
    uses_tape = True
    replica_local_state = True
    composes_samplers = True

    def __init__(
        self,
        params: AutoSampleParams,
        *args: Any,
        sampler_class: Callable[[str], type[NegativeSampler]] | None = None,
        sampler_params: Callable[[str, dict | None], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """The arguments of `NegativeSampler`, and the registry's lookups ``sampler_class`` and ``sampler_params``,
        handed in by `build_sampler` (``composes_samplers``) because the registry imports this module."""
        super().__init__(params, *args, **kwargs)
        if sampler_class is None or sampler_params is None:
            raise ValueError("autosample: build it with mdcns_tf.samplers.build_sampler (it needs the registry)")

        names = list(params.candidates)
        if len(names) < 2 or len(set(names)) != len(names) or "autosample" in names:
            raise ValueError(f"autosample.candidates: need >= 2 distinct registered samplers, got {names}")
        unknown = sorted(set(params.candidate_params) - set(names))
        if unknown:
            raise ValueError(f"autosample.candidate_params: {unknown} are not candidates {names}")
        if params.search_epochs < 1 or params.arch_every < 1 or not 0.0 < params.val_fraction < 1.0:
            raise ValueError("autosample: need search_epochs >= 1, arch_every >= 1 and 0 < val_fraction < 1")
        self.names = names
        self.candidates = [
            sampler_class(candidate)(
                params=sampler_params(candidate, params.candidate_params.get(candidate)),
                n_items=self.n_items,
                n_users=self.n_users,
                num_negatives=self.num_negatives,
                item_counts=self.item_counts,
                loss_name=self.loss_name,
                seed=self.seed + 7919 * (i + 1),
                name=candidate,
                gbce_t=self.gbce_t,
                embedding_dim=self.embedding_dim,
            )
            for i, candidate in enumerate(names)
        ]
        # The trainer reads this to add dropout-free states to the context: needed when a candidate needs them.
        self.needs_inference_states = any(c.needs_inference_states for c in self.candidates)
        if any(c.uses_tape for c in self.candidates):
            raise ValueError("autosample: a candidate may not itself learn from the tape")
        if any(c.synthetic_negatives or c.needs_train_sequences for c in self.candidates):
            raise ValueError(
                "autosample: candidates with synthetic negatives or a training-data graph (mixgcf, gnno) "
                "are not supported"
            )
        k = len(names)
        self.arch_logits = tf.Variable(tf.zeros([k]), trainable=False, name="arch_logits")
        self.arch_m = tf.Variable(tf.zeros([k]), trainable=False, name="arch_adam_m")
        self.arch_v = tf.Variable(tf.zeros([k]), trainable=False, name="arch_adam_v")
        self.arch_updates = tf.Variable(0, trainable=False, name="arch_updates")
        self.steps = tf.Variable(0, trainable=False, name="steps")
        self.phase = tf.Variable(SEARCH, trainable=False, name="phase")
        self.selected = tf.Variable(0, trainable=False, name="selected")
        # Per-trace bookkeeping in a plain namespace: tf.Module would wrap a list attribute for checkpointing, and
        # item assignment on such a wrapper makes the whole model unsaveable.
        self.trace = types.SimpleNamespace(
            has_logq=[False] * k,  # whether candidate s returns a logQ correction (known once it has been traced)
            component_losses=[],  # per-candidate training losses of this step, for update_from_tape
            validation_loss=None,  # the held-out users' loss of this step
        )

    def weights(self) -> tf.Tensor:
        """Mixture weights `(K,)`: softmax(alpha) while searching, one-hot on the selection afterwards."""
        return tf.where(
            tf.equal(self.phase, SEARCH),
            tf.nn.softmax(self.arch_logits),
            tf.one_hot(self.selected, len(self.names)),
        )

    def _draw(self, index: int, context: SamplingContext) -> tuple[tf.Tensor, tf.Tensor]:
        negatives = self.candidates[index].sample(context)
        self.trace.has_logq[index] = negatives.logq is not None
        logq = negatives.logq if negatives.logq is not None else tf.zeros(tf.shape(negatives.ids), tf.float32)
        return negatives.ids, logq

    def sample(self, context: SamplingContext) -> Negatives:
        """ids `(batch, seq_len, K . k)`: slot s holds candidate s's k negatives while searching; after the
        search, the selected candidate alone draws and its negatives fill every slot (fixed shapes, one trace;
        the other slots get weight 0)."""
        count = len(self.names)

        def search() -> tuple[tf.Tensor, tf.Tensor]:
            drawn = [self._draw(i, context) for i in range(count)]
            return tf.concat([d[0] for d in drawn], -1), tf.concat([d[1] for d in drawn], -1)

        def retrain() -> tuple[tf.Tensor, tf.Tensor]:
            ids, logq = tf.switch_case(
                tf.convert_to_tensor(self.selected), [lambda i=i: self._draw(i, context) for i in range(count)]
            )
            return tf.tile(ids, [1, 1, count]), tf.tile(logq, [1, 1, count])

        ids, logq = tf.cond(tf.equal(self.phase, SEARCH), search, retrain)
        return Negatives(ids=ids, logq=logq)

    def loss(
        self, context: SamplingContext, negatives: Negatives, positive_scores: tf.Tensor, negative_scores: tf.Tensor
    ) -> tf.Tensor:
        """Mixture ``sum_s w_s . L_s`` per position `(batch, seq_len)`, held-out users zeroed while searching.
        Also records the per-candidate training losses and the validation loss for `update_from_tape`."""
        k = self.num_negatives
        searching = tf.equal(self.phase, SEARCH)
        held_out = tf.logical_and(searching, held_out_users(context.user_index, self.params.val_fraction, self.seed))
        train_mask = tf.logical_and(tf.not_equal(context.target_ids, 0), tf.logical_not(held_out)[:, tf.newaxis])

        per_candidate = []
        for s, candidate in enumerate(self.candidates):
            part = slice(s * k, (s + 1) * k)
            slot = Negatives(
                ids=negatives.ids[..., part], logq=negatives.logq[..., part] if self.trace.has_logq[s] else None
            )
            per_candidate.append(candidate.loss(context, slot, positive_scores, negative_scores[..., part]))
        weights = self.weights()
        mixture = tf.add_n([weights[s] * value for s, value in enumerate(per_candidate)])
        self.trace.component_losses = [masked_mean(value, train_mask) for value in per_candidate]

        last = last_trained_position(context.target_ids)
        valid_rows = tf.logical_and(held_out, tf.not_equal(at_position(context.target_ids, last), 0))
        self.trace.validation_loss = tf.reduce_mean(
            losses.full_softmax(
                tf.boolean_mask(at_position(context.states, last), valid_rows),
                context.item_embeddings,
                tf.boolean_mask(at_position(context.target_ids, last), valid_rows),
            )
        )
        self.trace.validation_loss = tf.where(tf.reduce_any(valid_rows), self.trace.validation_loss, 0.0)
        return tf.where(held_out[:, tf.newaxis], tf.zeros_like(mixture), mixture)

    def update_from_tape(self, tape: tf.GradientTape, variables: list[tf.Variable]) -> None:
        """One Adam step on the architecture logits from the linearised unrolled validation gradient."""
        self.steps.assign_add(1)
        due = tf.logical_and(tf.equal(self.phase, SEARCH), tf.equal(self.steps % self.params.arch_every, 0))

        def step() -> tf.Tensor:
            validation_gradient = tape.gradient(self.trace.validation_loss, variables)
            alignment = tf.stack(
                [
                    dot_gradients(validation_gradient, tape.gradient(value, variables))
                    for value in self.trace.component_losses
                ]
            )
            self.apply_architecture_gradient(architecture_gradient(tf.nn.softmax(self.arch_logits), alignment))
            return tf.constant(True)

        tf.cond(due, step, lambda: tf.constant(False))

    def apply_architecture_gradient(self, gradient: tf.Tensor) -> None:
        """Adam (beta1 0.5, beta2 0.999, as DARTS's architecture optimizer) on the logits."""
        beta1, beta2, epsilon = 0.5, 0.999, 1e-10
        t = tf.cast(self.arch_updates.assign_add(1), tf.float32)
        m = self.arch_m.assign(beta1 * self.arch_m + (1 - beta1) * gradient)
        v = self.arch_v.assign(beta2 * self.arch_v + (1 - beta2) * tf.square(gradient))
        step = self.params.arch_learning_rate * (m / (1 - beta1**t)) / (tf.sqrt(v / (1 - beta2**t)) + epsilon)
        self.arch_logits.assign_sub(step)

    def on_epoch_end(self, epoch: int) -> None:
        for candidate in self.candidates:
            candidate.on_epoch_end(epoch)
        if int(self.phase.numpy()) == SEARCH and epoch + 1 >= self.params.search_epochs:
            self.selected.assign(int(tf.argmax(self.arch_logits)))
            self.phase.assign(RETRAIN)
            weights = dict(zip(self.names, tf.nn.softmax(self.arch_logits).numpy().round(4).tolist(), strict=True))
            log.info(
                "autosample: search done after %d epochs, weights %s; retraining with %s",
                epoch + 1,
                weights,
                self.names[int(self.selected.numpy())],
            )

    def metrics(self) -> dict[str, tf.Tensor]:
        # The learned softmax(alpha) in both stages (the selection is its argmax), plus the candidates' own scalars.
        weights = tf.nn.softmax(self.arch_logits)
        out = {f"w_{name}": weights[i] for i, name in enumerate(self.names)}
        out["autosample_phase"] = tf.identity(self.phase)
        for candidate in self.candidates:
            out.update(candidate.metrics())
        return out
