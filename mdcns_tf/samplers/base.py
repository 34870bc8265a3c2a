"""The one interface of negative samplers for single-model training.

A sampler is a `tf.Module` (its state lives in `tf.Variable`s the trainer checkpoints) with one in-graph call:
``sample(context) -> Negatives``. The trainer scores the negatives with the same backbone states and feeds
``(positive scores, negative scores)`` to ``loss(...)``, which samplers with a loss of their own (GDNS's group-wise
margin, AutoSample's mixture) override. ``on_epoch_end`` is called eagerly once an epoch for stateful samplers;
``prepare`` once before training for samplers that need statistics of the training data (GNNO's item graph).

What the rest of the code must know about a sampler is a class attribute here, read from the class (one place each):
``uses_tape``, ``replica_local_state`` (the config check refuses such samplers under ``tf.distribute``),
``needs_inference_states`` (the trainer adds dropout-free states to the context).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import tensorflow as tf

from mdcns_tf import losses


@dataclasses.dataclass
class NoParams:
    """Samplers without hyperparameters of their own."""


@dataclasses.dataclass
class SamplingContext:
    """What a sampler may look at, all tensors in-graph.

    input_ids      `(batch, seq_len)`  model input, left-padded with 0.
    target_ids     `(batch, seq_len)`  positive item per position, 0 where the position is not trained.
    exclusion_ids  `(batch, x)`        items a negative must never be (the whole sequence: inputs and targets).
    user_index     `(batch,)`          1-based user index, for per-user state.
    states         `(batch, seq_len, dim)` backbone outputs (for hard-negative samplers).
    item_embeddings `(n_items + 1, dim)` the model's item table.
    inference_states `(batch, seq_len, dim)` the backbone's states with ``training=False`` (no dropout), without
                   gradient; set by the trainer only for samplers with ``needs_inference_states``, else None.
    """

    input_ids: tf.Tensor
    target_ids: tf.Tensor
    exclusion_ids: tf.Tensor
    user_index: tf.Tensor
    states: tf.Tensor
    item_embeddings: tf.Tensor
    inference_states: tf.Tensor | None = None

    def reference_states(self) -> tf.Tensor:
        """States to select negatives and record scores with: the dropout-free ones when the trainer computed
        them, else the training states; without gradient either way."""
        states = self.inference_states if self.inference_states is not None else self.states
        return tf.stop_gradient(states)


@dataclasses.dataclass
class Negatives:
    """ids `(batch, seq_len, k)`; weights `(batch, seq_len, k)` or None (= 1); logq: log sampling
    probability of each id `(batch, seq_len, k)` for a logQ correction, or None.

    embeddings `(batch, seq_len, k, dim)` or None: synthetic negatives (MixGCF's positive mixing). When set, the
    trainer scores ``state . embeddings`` instead of the item table rows of ``ids`` (gradients flow into whatever
    the embeddings were built from); ``ids`` then name the real item each synthetic negative was made from.
    """

    ids: tf.Tensor
    weights: tf.Tensor | None = None
    logq: tf.Tensor | None = None
    embeddings: tf.Tensor | None = None


class NegativeSampler(tf.Module):
    """Base class. Subclasses set ``Params`` (their config block ``sampler.<name>``) and implement `sample`."""

    Params: ClassVar[type] = NoParams
    # True for samplers that learn from the training step's gradients (AutoSample's bi-level update): the trainer
    # then records the step on a persistent tape and calls `update_from_tape` before applying the gradients.
    uses_tape: ClassVar[bool] = False
    # True for samplers whose state (per-user memories, snapshots, search weights) is written inside `train_step`
    # with scatter/assign in replica context: such updates have no cross-replica meaning, so the config check
    # (`mdcns_tf.config_loader.validate`) refuses these samplers under ``train.distribute`` mirrored / multi_worker.
    replica_local_state: ClassVar[bool] = False
    # Builds other registered samplers (AutoSample): `build_sampler` hands it the registry's lookups.
    composes_samplers: ClassVar[bool] = False
    # True for samplers whose statistics must not carry dropout noise (SRNS's score variance, GDNS's score change):
    # the trainer then runs the backbone once more with ``training=False`` and passes ``inference_states``.
    needs_inference_states: ClassVar[bool] = False
    # True for samplers whose negatives may carry synthetic embeddings (`Negatives.embeddings`).
    synthetic_negatives: ClassVar[bool] = False
    # True for samplers that need the training sequences before the first step: the trainer calls `prepare`.
    needs_train_sequences: ClassVar[bool] = False
    # True for samplers whose draw XLA can compile (``train.jit_compile``): every shape fixed at trace time. The
    # rejection draw of `candidates.draw_excluding` redraws only the rejected draws, a data-dependent shape, so no
    # sampler built on it compiles; the config check (`mdcns_tf.config_loader.validate`) refuses the pair.
    xla_compilable: ClassVar[bool] = False

    def __init__(
        self,
        params: Any,
        n_items: int,
        n_users: int,
        num_negatives: int,
        item_counts: list[int],
        loss_name: str,
        seed: int,
        name: str | None = None,
        gbce_t: float = losses.GBCE_T,
        embedding_dim: int | None = None,
    ) -> None:
        super().__init__(name=name)
        self.params = params
        self.n_items = n_items
        self.n_users = n_users
        self.num_negatives = num_negatives
        self.item_counts = item_counts
        self.loss_name = loss_name
        self.gbce_t = gbce_t
        # Width of the item table (config model.dim); samplers that snapshot the model (SRNS, GDNS) need it to create
        # their variables before `fit`, so that BackupAndRestore restores into them.
        self.embedding_dim = embedding_dim
        # Build samplers under the trainer's strategy scope: a generator created there gives each replica its own
        # stream (seed hashed with the global replica id) and its state is a variable saved by BackupAndRestore.
        self.generator = tf.random.Generator.from_seed(seed)
        self.seed = seed  # composite samplers (AutoSample) derive their parts' seeds from it

    def sample(self, context: SamplingContext) -> Negatives:  # pragma: no cover
        raise NotImplementedError

    def loss(
        self, context: SamplingContext, negatives: Negatives, positive_scores: tf.Tensor, negative_scores: tf.Tensor
    ) -> tf.Tensor:
        """Per-position loss `(batch, seq_len)` from positive `(batch, seq_len)` and negative
        `(batch, seq_len, k)` scores. The trainer masks untrained positions and averages."""
        if negatives.logq is not None:
            negative_scores = negative_scores - negatives.logq
        return losses.pairwise_loss(
            self.loss_name, positive_scores, negative_scores, negatives.weights, self.n_items, self.gbce_t
        )

    def update_from_tape(self, tape: tf.GradientTape, variables: list[tf.Variable]) -> None:
        """In-graph hook after the loss, before the model's update (only when ``uses_tape``). ``tape`` is the
        persistent tape of the step's forward pass, ``variables`` the model's trainable variables."""

    def prepare(self, train_sequences: Iterable[np.ndarray]) -> None:
        """Eager hook, once before training (only when ``needs_train_sequences``): the training split's item-id
        sequences, one 1-D int array per user, in chronological order."""

    def on_epoch_end(self, epoch: int) -> None:
        """Eager hook once per epoch (SRNS rotates its score history here)."""

    def metrics(self) -> dict[str, tf.Tensor]:
        """Scalars the trainer logs to the progress bar and TensorBoard (e.g. AutoSample's weights)."""
        return {}
