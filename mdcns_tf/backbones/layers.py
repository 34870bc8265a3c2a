"""Building blocks shared by several backbones (one copy each, no copy-paste between backbone files)."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras as keras


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


def feed_forward_stack(
    num_layers: int, dim: int, inner_dim: int, dropout: float, activation: str, epsilon: float
) -> list[FeedForward]:
    """One `FeedForward` per layer, named ``ffn_<i>`` (FMLP-Rec and LinRec)."""
    return [
        FeedForward(dim, inner_dim, dropout, activation=activation, epsilon=epsilon, name=f"ffn_{i}")
        for i in range(num_layers)
    ]
