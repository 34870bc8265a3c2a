"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence.

Two published variants of the same model, chosen by ``model.sasrec.variant``:

* ``sasrec`` (default), the authors' reference code: ``sqrt(dim)``-scaled item embeddings + positions, pre-LN
  blocks (LN eps 1e-8) whose attention residual adds the *normalised* query, a ReLU FFN of width ``dim``, and a
  final LayerNorm.
* ``s3rec``, the implementation behind the SASRec rows of S3-Rec (Zhou et al., CIKM 2020; code RUCAIBox/CIKM2020-S3Rec)
  and of most later full-ranking tables (RecBole, FMLP-Rec, ICLRec): ``Dropout(LN(E[item] + P[position]))`` without
  scaling, BERT-style post-LN blocks (LN eps 1e-12), a GELU FFN of width ``4 dim``, N(0, 0.02) initialisation, no
  final LayerNorm. Its input and FFN are the shared `PositionalInput` / `FeedForward` of FMLP-Rec and LinRec.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tf_keras as keras

from mdcns_tf.backbones.base import Backbone
from mdcns_tf.backbones.layers import FeedForward, PositionalInput, normal_initializer, right_aligned_positions

VARIANTS = ("sasrec", "s3rec")


@dataclasses.dataclass
class SASRecOptions:
    """``variant``: ``sasrec`` or ``s3rec`` (module docstring); ``ffn_multiplier``: width of the point-wise
    feed-forward layer as a multiple of ``dim``, 0 = the variant's own (1 for sasrec, 4 for s3rec)."""

    variant: str = "sasrec"
    ffn_multiplier: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"sasrec.variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        if self.ffn_multiplier < 0:
            raise ValueError(f"sasrec.ffn_multiplier must be >= 0 (0 = the variant's), got {self.ffn_multiplier}")
        if not self.ffn_multiplier:
            self.ffn_multiplier = 4 if self.variant == "s3rec" else 1


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


class PostLNTransformerBlock(keras.layers.Layer):
    """BERT-style post-LN causal self-attention + GELU FFN, as in the S3-Rec code's SASRec:
    ``x = LN(x + Dropout(MHA(x)))``, then ``LN(x + Dropout(W2 gelu(W1 x)))``."""

    def __init__(self, dim: int, num_heads: int, dropout: float, ffn_dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.attention = keras.layers.MultiHeadAttention(
            num_heads, dim // num_heads, dropout=dropout, kernel_initializer=normal_initializer()
        )
        self.dropout = keras.layers.Dropout(dropout)
        self.attention_norm = keras.layers.LayerNormalization(epsilon=1e-12)
        self.ffn = FeedForward(dim, ffn_dim, dropout, activation="gelu", epsilon=1e-12, name="ffn")

    def call(self, x: tf.Tensor, attention_mask: tf.Tensor, padding: tf.Tensor, training: bool = False):
        """x `(batch, seq_len, dim)`, attention_mask `(batch, seq_len, seq_len)` bool, padding `(batch, seq_len, 1)`."""
        attended = self.attention(x, x, attention_mask=attention_mask, training=training)
        x = self.attention_norm(x + self.dropout(attended, training=training))
        return self.ffn(x, training=training) * padding


class SASRec(Backbone):
    Options = SASRecOptions

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.post_ln = self.options.variant == "s3rec"
        ffn_dim = self.dim * self.options.ffn_multiplier
        if self.post_ln:
            self.positional_input = PositionalInput(self.max_len, self.dim, self.dropout_rate, 1e-12, name="input")
            self.blocks = [
                PostLNTransformerBlock(self.dim, self.num_heads, self.dropout_rate, ffn_dim, name=f"block_{i}")
                for i in range(self.num_layers)
            ]
            return
        self.position_embedding = keras.layers.Embedding(
            self.max_len, self.dim, embeddings_initializer=keras.initializers.TruncatedNormal(stddev=0.02)
        )
        self.input_dropout = keras.layers.Dropout(self.dropout_rate)
        self.blocks = [
            TransformerBlock(self.dim, self.num_heads, self.dropout_rate, ffn_dim) for _ in range(self.num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-8)

    def encode(self, item_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        seq_len = tf.shape(item_ids)[1]
        padding = self.padding_mask(item_ids)
        if self.post_ln:
            x = self.positional_input(self.item_embedding(item_ids), padding, training=training)
        else:
            x = self.item_embedding(item_ids) * (self.dim**0.5)
            # Right-aligned: identical to range(seq_len) at seq_len == max_len, and a shorter left-padded window
            # gives the most recent item the same position vector as in training.
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
        return x if self.post_ln else self.final_norm(x) * padding
