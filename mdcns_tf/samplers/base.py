"""The one interface of negative samplers for single-model training.

A sampler is a `tf.Module` (its state lives in `tf.Variable`s the trainer checkpoints) with one in-graph call:
``sample(context) -> Negatives``. The trainer scores the negatives with the same backbone states and feeds
``(positive scores, negative scores)`` to ``loss(...)``, which samplers with a loss of their own (GDNS's group-wise
margin, AutoSample's mixture) override. ``on_epoch_end`` is called eagerly once an epoch for stateful samplers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

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
    """

    input_ids: tf.Tensor
    target_ids: tf.Tensor
    exclusion_ids: tf.Tensor
    user_index: tf.Tensor
    states: tf.Tensor
    item_embeddings: tf.Tensor


@dataclasses.dataclass
class Negatives:
    """ids `(batch, seq_len, k)`; weights `(batch, seq_len, k)` or None (= 1); logq: log sampling
    probability of each id `(batch, seq_len, k)` for a logQ correction, or None."""

    ids: tf.Tensor
    weights: tf.Tensor | None = None
    logq: tf.Tensor | None = None


class NegativeSampler(tf.Module):
    """Base class. Subclasses set ``Params`` (their config block ``sampler.<name>``) and implement `sample`."""

    Params: ClassVar[type] = NoParams
    # True for samplers that learn from the training step's gradients (AutoSample's bi-level update): the trainer
    # then records the step on a persistent tape and calls `update_from_tape` before applying the gradients.
    uses_tape: ClassVar[bool] = False

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
    ) -> None:
        super().__init__(name=name)
        self.params = params
        self.n_items = n_items
        self.n_users = n_users
        self.num_negatives = num_negatives
        self.item_counts = item_counts
        self.loss_name = loss_name
        self.gbce_t = gbce_t
        # Build samplers under the trainer's strategy scope: a generator created there gives each replica its own
        # stream (seed hashed with the global replica id) and its state is a variable saved by BackupAndRestore.
        self.generator = tf.random.Generator.from_seed(seed)

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

    def on_epoch_end(self, epoch: int) -> None:
        """Eager hook once per epoch (SRNS rotates its score history here)."""

    def metrics(self) -> dict[str, tf.Tensor]:
        """Scalars the trainer logs to the progress bar and TensorBoard (e.g. AutoSample's weights)."""
        return {}
