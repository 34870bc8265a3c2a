"""The MDCNS teachers (docs/design.md, section "MDCNS"): the weight-free consensus of the two students' scores, or a
backbone of its own (an EMA copy of the self model, or a frozen pre-trained one)."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras as keras

import mdcns_tf  # noqa: F401
from mdcns_tf.backbones import Backbone


class ConsensusTeacher(keras.layers.Layer):
    """Weight-free teacher: the mean (authors' code) or sum (paper) of the students' scores, `(..., n)` each."""

    def __init__(self, reduction: str = "mean", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"consensus reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def call(self, self_scores: tf.Tensor, peer_scores: tf.Tensor) -> tf.Tensor:
        total = self_scores + peer_scores
        return 0.5 * total if self.reduction == "mean" else total


class BackboneTeacher(keras.layers.Layer):
    """A teacher with weights of its own: a frozen pre-trained backbone, or an EMA copy of the self backbone.

    Its weights are never trained by the optimizers: ``ema`` follows the self model after each step
    (w <- decay . w + (1 - decay) . w_self), ``frozen`` is restored once from a checkpoint of a single-model run.
    """

    def __init__(self, backbone: Backbone, mode: str, ema_decay: float = 0.999, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.mode = mode
        self.ema_decay = ema_decay
        self.backbone.trainable = False

    def follow(self, source: Backbone) -> None:
        """EMA update from the self backbone (no-op for a frozen teacher)."""
        if self.mode != "ema":
            return
        for target, value in zip(self.backbone.weights, source.weights, strict=True):
            target.assign(self.ema_decay * target + (1.0 - self.ema_decay) * value)

    def restore(self, checkpoint_path: str) -> None:
        """Loads the ``encoder`` of a checkpoint written by `mdcns_tf.train` (``<output_dir>/best/weights``)."""
        status = tf.train.Checkpoint(encoder=self.backbone).restore(checkpoint_path)
        status.expect_partial()
        status.assert_nontrivial_match()
