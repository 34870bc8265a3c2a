"""The base of every trainer: a Keras model whose ``test_step`` ranks all items (the shared full-ranking evaluation),
and the loss reductions a custom ``train_step`` shares."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tf_keras as keras

import mdcns_tf  # noqa: F401
from mdcns_tf import metrics
from mdcns_tf.backbones import Backbone
from mdcns_tf.batch import HISTORY_IDS, INPUT_IDS, TARGET


class RetrievalModel(keras.Model):
    """Evaluation shared by every trainer: ``test_step`` ranks all items for the backbone ``self.encoder``.

    Subclasses set ``self.encoder`` (the model that is validated and exported) and implement ``train_step``.
    """

    def __init__(self, encoder: Backbone, ks: Sequence[int] = (5, 10, 20), eval_chunk_size: int = 65_536, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.ks = tuple(ks)
        self.eval_chunk_size = eval_chunk_size
        # None: a step's loss is the mean over its batch's trained positions. A number (train.run sets it for
        # ``loss.reduction: epoch``): the sum over them divided by this, the mean trained positions of a batch.
        self.positions_per_batch: float | None = None
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.ranking_trackers = {
            name: keras.metrics.Mean(name=metrics.keras_name(name)) for name in metrics.metric_names(self.ks)
        }

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.loss_tracker, *self.ranking_trackers.values(), *self.extra_trackers()]

    def extra_trackers(self) -> list[keras.metrics.Metric]:
        return []

    def build_for_input(self, max_len: int) -> None:
        """Creates every variable before `fit`, so that `BackupAndRestore` can restore into them."""
        self(tf.zeros([1, max_len], tf.int32))
        self.track_dropout_generators()

    def track_dropout_generators(self) -> None:
        """Puts the dropout layers' random state into the model's checkpoints.

        With `keras.backend.experimental.enable_tf_random_generator()` (train.run turns it on) each Keras random
        layer draws from its own `tf.random.Generator`, but creates it lazily at the first training call and leaves
        it out of checkpoints, so a run resumed by `BackupAndRestore` would restart every dropout stream. Creating
        them here and tracking them on the model makes the resumed steps drop the same units. A no-op with the
        legacy TF1 random ops (generator disabled). Uses tf-keras 2.x private attributes, hence the getattr guards.
        """
        generators = []
        for module in self.submodules:
            random_generator = getattr(module, "_random_generator", None)
            if random_generator is None or not hasattr(random_generator, "_maybe_init"):
                continue
            random_generator._maybe_init()
            if getattr(random_generator, "_generator", None) is not None:
                generators.append(random_generator._generator)
        if generators:
            self.dropout_generators = generators

    def reduce_positions(self, per_position: tf.Tensor, trained: tf.Tensor) -> tf.Tensor:
        """A batch's loss from per-position losses `(batch, seq_len)` and the trained mask `(batch, seq_len)`,
        as ``positions_per_batch`` says (see `position_loss`)."""
        return position_loss(per_position, trained, self.positions_per_batch)

    def call(self, input_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        """`(batch, seq_len)` ids -> `(batch, seq_len, dim)` states of the evaluated model."""
        return self.encoder(input_ids, training=training)

    def query_embeddings(self, input_ids: tf.Tensor) -> tf.Tensor:
        """`(batch, seq_len)` left-padded ids -> `(batch, dim)`, the state at the last (most recent) position."""
        return self.encoder(input_ids, training=False)[:, -1, :]

    def test_step(self, data: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Ranks every item for an evaluation element (keys and shapes: `mdcns_tf.batch`), history masked."""
        ranks = metrics.target_ranks(
            self.query_embeddings(data[INPUT_IDS]),
            self.encoder.item_embeddings,
            data[TARGET],
            data[HISTORY_IDS],
            chunk_size=self.eval_chunk_size,
        )
        for name, values in metrics.metrics_from_ranks(ranks, self.ks).items():
            self.ranking_trackers[name].update_state(values)
        return {tracker.name: tracker.result() for tracker in self.ranking_trackers.values()}


def replica_scale(loss: tf.Tensor) -> tf.Tensor:
    """``loss`` / number of replicas in sync, the loss to differentiate in a custom ``train_step``.

    Under `tf.distribute` each replica computes the mean loss of its share of the global batch and the optimizer
    *sums* the replicas' gradients (``apply_gradients`` all-reduces with SUM), so the per-replica loss is divided by
    the replica count to get the gradient of the global mean (what Keras's compiled losses do). A no-op on one device.
    """
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss


def masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of ``values`` over positions where ``mask`` is true; 0 for an empty mask."""
    mask = tf.cast(mask, values.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(values * mask), tf.reduce_sum(mask))


def position_loss(values: tf.Tensor, mask: tf.Tensor, positions_per_batch: float | None) -> tf.Tensor:
    """Reduces per-position losses over the positions where ``mask`` is true.

    ``positions_per_batch`` None: their mean (`masked_mean`). A number P: their sum / P, P being the mean count of
    trained positions in a (global) batch over an epoch. With length buckets the count varies several-fold between
    batches, and a per-batch mean would give each position of a short-sequence batch several times the weight of a
    position in a long-sequence batch; sum / P weighs every position alike and equals the mean in expectation
    without buckets. Under `tf.distribute` a replica holds 1 / replicas of the global batch, hence P / replicas.
    """
    if positions_per_batch is None:
        return masked_mean(values, mask)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    total = tf.reduce_sum(values * tf.cast(mask, values.dtype))
    return total / tf.constant(positions_per_batch / replicas, values.dtype)
