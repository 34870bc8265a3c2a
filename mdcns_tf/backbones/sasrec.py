"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence."""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tf_keras as keras

from mdcns_tf.backbones.base import Backbone
from mdcns_tf.backbones.layers import right_aligned_positions


@dataclasses.dataclass
class SASRecOptions:
    """``ffn_multiplier``: width of the point-wise feed-forward layer as a multiple of ``dim`` (paper: 1)."""

    ffn_multiplier: int = 1


class TransformerBlock(keras.layers.Layer):
    """Pre-LN causal self-attention + point-wise FFN, as in the SASRec reference code."""

    def __init__(self, dim: int, num_heads: int, dropout: float, ffn_dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.attention_norm = keras.layers.LayerNormalization(epsilon=1e-8)
        self.attention = keras.layers.MultiHeadAttention(num_heads, dim // num_heads, dropout=dropout)
        self.ffn_norm = keras.layers.LayerNormalization(epsilon=1e-8)
        self.ffn_in = keras.layers.Dense(ffn_dim, activation="relu")
        self.ffn_out = keras.layers.Dense(dim)
        self.dropout = keras.layers.Dropout(dropout)

    def call(self, x: tf.Tensor, attention_mask: tf.Tensor, padding: tf.Tensor, training: bool = False):
        """x `(batch, seq_len, dim)`, attention_mask `(batch, seq_len, seq_len)` bool, padding `(batch, seq_len, 1)`."""
        query = self.attention_norm(x)
        attended = self.attention(query, x, attention_mask=attention_mask, training=training)
        x = query + self.dropout(attended, training=training)
        hidden = self.ffn_norm(x)
        x = hidden + self.dropout(self.ffn_out(self.dropout(self.ffn_in(hidden), training=training)), training=training)
        return x * padding


class SASRec(Backbone):
    Options = SASRecOptions

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.position_embedding = keras.layers.Embedding(
            self.max_len, self.dim, embeddings_initializer=keras.initializers.TruncatedNormal(stddev=0.02)
        )
        self.input_dropout = keras.layers.Dropout(self.dropout_rate)
        self.blocks = [
            TransformerBlock(self.dim, self.num_heads, self.dropout_rate, self.dim * self.options.ffn_multiplier)
            for _ in range(self.num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-8)

    def encode(self, item_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        seq_len = tf.shape(item_ids)[1]
        padding = self.padding_mask(item_ids)
        x = self.item_embedding(item_ids) * (self.dim**0.5)
        # Right-aligned: identical to range(seq_len) at seq_len == max_len, and a shorter left-padded window gives
        # the most recent item the same position vector as in training.
        x += self.position_embedding(right_aligned_positions(seq_len, self.max_len))[tf.newaxis]
        x = self.input_dropout(x, training=training) * padding
        causal = tf.linalg.band_part(tf.ones((seq_len, seq_len), tf.bool), -1, 0)
        # A query may attend only to earlier real items; padded queries attend to themselves to avoid NaNs.
        keys_real = tf.not_equal(item_ids, 0)[:, tf.newaxis, :]
        attention_mask = tf.logical_or(
            tf.logical_and(causal[tf.newaxis], keys_real), tf.eye(seq_len, dtype=tf.bool)[tf.newaxis]
        )
        for block in self.blocks:
            x = block(x, attention_mask, padding, training=training)
        return self.final_norm(x) * padding
