"""Building blocks shared by several backbones (one copy each, no copy-paste between backbone files)."""

from __future__ import annotations

from typing import Any, Protocol

import tensorflow as tf
import tf_keras as keras

from mdcns_tf.backbones.base import Backbone


def normal_initializer(stddev: float = 0.02) -> keras.initializers.Initializer:
    """A fresh ``N(0, stddev)`` initializer (RecBole's ``initializer_range``).

    A new instance per variable: reusing one unseeded Keras initializer instance gives every variable the same
    values (tf-keras warns about it).
    """
    return keras.initializers.RandomNormal(stddev=stddev)


def right_aligned_positions(seq_len: tf.Tensor | int, max_len: int) -> tf.Tensor:
    """Position ids `(seq_len,)` counted so that the last (most recent) slot is always ``max_len - 1``.

    Inputs are left-padded, so the most recent item is at the last slot. Aligning positions to the right makes the
    position vector of an item depend on its distance from the end of the history only: the same history padded to
    a shorter window gets the same states. At ``seq_len == max_len`` this is ``range(max_len)``, identical to the
    left-aligned ids of the reference implementations.
    """
    return tf.range(max_len - seq_len, max_len)


def check_length(item_ids: tf.Tensor, max_len: int) -> None:
    """Raises at trace time when the static sequence length exceeds ``max_len`` (position tables, filters)."""
    length = item_ids.shape[1]
    if length is not None and length > max_len:
        raise ValueError(f"sequence length {length} exceeds the backbone's max_len {max_len}")


class FeedForward(keras.layers.Layer):
    """Post-LN point-wise feed-forward block: ``LayerNorm(x + Dropout(W2 act(W1 x)))``.

    The RecBole ``FeedForward`` used by FMLP-Rec and LinRec (``inner_dropout=False``) and the Mamba4Rec one, which
    adds a dropout after the activation (``inner_dropout=True``). x `(batch, seq_len, dim)` -> same shape.
    """

    def __init__(
        self,
        dim: int,
        inner_dim: int,
        dropout: float,
        activation: str = "gelu",
        inner_dropout: bool = False,
        epsilon: float = 1e-12,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dense_in = keras.layers.Dense(inner_dim, activation=activation, kernel_initializer=normal_initializer())
        self.dense_out = keras.layers.Dense(dim, kernel_initializer=normal_initializer())
        self.inner_dropout = keras.layers.Dropout(dropout) if inner_dropout else None
        self.dropout = keras.layers.Dropout(dropout)
        self.norm = keras.layers.LayerNormalization(epsilon=epsilon)

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        hidden = self.dense_in(x)
        if self.inner_dropout is not None:
            hidden = self.inner_dropout(hidden, training=training)
        hidden = self.dropout(self.dense_out(hidden), training=training)
        return self.norm(hidden + x)


class PositionalInput(keras.layers.Layer):
    """RecBole-style input of FMLP-Rec and LinRec: ``Dropout(LayerNorm(E[item] + P[position]))``, 0 on padding.

    item_embeddings `(batch, seq_len, dim)`, padding `(batch, seq_len, 1)` -> `(batch, seq_len, dim)`. Positions
    are right-aligned (see `right_aligned_positions`), so a shorter window keeps the most recent item's position.
    """

    def __init__(self, max_len: int, dim: int, dropout: float, epsilon: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_len = max_len
        self.position_embedding = keras.layers.Embedding(
            max_len, dim, embeddings_initializer=normal_initializer(), name="position_embedding"
        )
        self.norm = keras.layers.LayerNormalization(epsilon=epsilon)
        self.dropout = keras.layers.Dropout(dropout)

    def call(self, item_embeddings: tf.Tensor, padding: tf.Tensor, training: bool = False) -> tf.Tensor:
        positions = right_aligned_positions(tf.shape(item_embeddings)[1], self.max_len)
        x = item_embeddings + self.position_embedding(positions)[tf.newaxis]
        return self.dropout(self.norm(x), training=training) * padding


class FeedForwardOptions(Protocol):
    """The options of a `PositionalFFNBackbone` (its ``Options`` dataclass has at least these fields)."""

    inner_multiplier: int  # FFN width / dim
    hidden_act: str  # FFN activation
    layer_norm_eps: float  # epsilon of every LayerNorm


class PositionalFFNBackbone(Backbone):
    """RecBole-style backbone (FMLP-Rec, LinRec): `PositionalInput`, then ``num_layers`` x (a sequence mixer of
    the subclass's own, a post-LN `FeedForward`).

    Builds the input layer from the options (`FeedForwardOptions`); a subclass builds its mixers, then
    ``self.ffns = self.feed_forward_stack()`` (in this order: layers are created in attribute order), and starts
    `encode` with `embedded_input`.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        opts: FeedForwardOptions = self.options
        self.positional_input = PositionalInput(
            self.max_len, self.dim, self.dropout_rate, opts.layer_norm_eps, name="positional_input"
        )

    def feed_forward_stack(self) -> list[FeedForward]:
        """One `FeedForward` per layer, named ``ffn_<i>``, of width ``inner_multiplier * dim``."""
        opts: FeedForwardOptions = self.options
        return [
            FeedForward(
                self.dim,
                self.dim * opts.inner_multiplier,
                self.dropout_rate,
                activation=opts.hidden_act,
                epsilon=opts.layer_norm_eps,
                name=f"ffn_{i}",
            )
            for i in range(self.num_layers)
        ]

    def embedded_input(self, item_ids: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """item_ids `(batch, seq_len)`, ``seq_len <= max_len`` (checked at trace time) -> (the positional input
        `(batch, seq_len, dim)`, 0 at padding; the padding mask `(batch, seq_len, 1)`, 1 for real items)."""
        check_length(item_ids, self.max_len)
        padding = self.padding_mask(item_ids)
        return self.positional_input(self.item_embedding(item_ids), padding, training=training), padding
