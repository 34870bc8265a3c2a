"""The single-model trainer: one backbone trained with any negative sampler and loss, or with full softmax."""

from __future__ import annotations

import tensorflow as tf

import mdcns_tf  # noqa: F401
from mdcns_tf import losses
from mdcns_tf.backbones import Backbone
from mdcns_tf.batch import EXCLUSION_IDS, INPUT_IDS, TARGET_IDS, USER_INDEX
from mdcns_tf.samplers import NegativeSampler, SamplingContext
from mdcns_tf.samplers.candidates import score_items
from mdcns_tf.training.retrieval_model import RetrievalModel, replica_scale


class SequentialRecommender(RetrievalModel):
    """One backbone trained with one negative sampler and a pairwise loss, or with full softmax (no sampler)."""

    def __init__(
        self, encoder: Backbone, sampler: NegativeSampler | None, loss_name: str, lazy_updates: bool = False, **kwargs
    ):
        super().__init__(encoder, **kwargs)
        self.sampler = sampler
        self.loss_name = loss_name
        # ``train.sparse_updates`` resolved (`optimizers.lazy_updates`): the item table's gradient is the rows the step
        # gathered (`IndexedSlices`) either way; lazy, `factory.prepare_for_training` gives it a `LazyAdam`, which
        # updates only those rows.
        self.lazy_updates = lazy_updates

    def compute_training_loss(self, data: dict[str, tf.Tensor], training: bool = True) -> tf.Tensor:
        """The scalar loss of a training element (keys and shapes: `mdcns_tf.batch`)."""
        target_ids = data[TARGET_IDS]
        trained = tf.not_equal(target_ids, 0)
        states = self.encoder(data[INPUT_IDS], training=training)
        item_embeddings = self.encoder.item_embeddings
        if self.loss_name == "softmax":
            per_position = losses.full_softmax(
                tf.boolean_mask(states, trained), item_embeddings, tf.boolean_mask(target_ids, trained)
            )
            return self.reduce_positions(per_position, tf.ones_like(per_position, tf.bool))
        context = SamplingContext(
            input_ids=data[INPUT_IDS],
            target_ids=target_ids,
            exclusion_ids=data[EXCLUSION_IDS],
            user_index=data[USER_INDEX],
            states=states,
            item_embeddings=item_embeddings,
            inference_states=self.inference_states(data[INPUT_IDS]),
        )
        negatives = self.sampler.sample(context)
        positive_scores = tf.reduce_sum(states * tf.gather(item_embeddings, target_ids), axis=-1)
        if negatives.embeddings is not None:  # synthetic negatives (MixGCF): scored as given
            negative_scores = tf.einsum("bld,blkd->blk", states, negatives.embeddings)
        else:
            negative_scores = score_items(states, item_embeddings, negatives.ids)
        per_position = self.sampler.loss(context, negatives, positive_scores, negative_scores)
        return self.reduce_positions(per_position, trained)

    def inference_states(self, input_ids: tf.Tensor) -> tf.Tensor | None:
        """Dropout-free states without gradient for samplers that ask for them (``needs_inference_states``: one more
        forward pass a step), else None."""
        if not self.sampler.needs_inference_states:
            return None
        return tf.stop_gradient(self.encoder(input_ids, training=False))

    def epoch_end_hooks(self) -> list:
        return [self.sampler.on_epoch_end] if self.sampler is not None else []

    def train_step(self, data: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        # A sampler that learns from gradients (AutoSample) needs the step's tape again after the model's gradient.
        sampler_hook = self.sampler is not None and self.sampler.uses_tape
        with tf.GradientTape(persistent=sampler_hook) as tape:
            loss = self.compute_training_loss(data)
            if self.losses:
                loss += tf.add_n(self.losses)
            scaled_loss = replica_scale(loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        if sampler_hook:
            self.sampler.update_from_tape(tape, variables)
            del tape
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        self.loss_tracker.update_state(loss)
        logs = {"loss": self.loss_tracker.result()}
        if self.sampler is not None:
            logs.update(self.sampler.metrics())
        return logs
