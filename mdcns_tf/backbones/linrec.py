"""LinRec (Liu et al., SIGIR 2023): SASRec-style encoder with L2-normalised linear attention, made causal.

The authors' attention ("ELU-Norm"): ``Q' = elu(Q) / ||elu(Q)||``, ``K' = elu(K) / ||elu(K)||`` (each query and each
key L2-normalised over the head dimension, as in their code), ``A = Q' (K'^T V) / sqrt(d_head)``. The paper's
``K'^T V`` sums over the *whole* sequence, so every state reads future items. Here it is the causal prefix sum
``S_t = sum_{s <= t} k'_s v_s^T`` and ``out_t = q'_t S_t / sqrt(d_head)``: the same attention restricted to past
and present keys, still linear in the sequence length:

* ``causal_mode="chunked"`` (default): the sequence is cut into chunks of ``chunk_size``; within a chunk the
  masked quadratic form below, across chunks a prefix sum of the per-chunk states ``sum_s k'_s v_s^T``:
  O(L c d_head + (L / c) d_head^2), linear in L, and the state tensor is c times smaller than with ``cumsum``.
* ``causal_mode="cumsum"``: ``cumsum`` over the per-position outer products ``k'_s v_s^T``, O(L d_head^2) time
  and memory per head (the recurrent view); memory-bound on CPU (6x SASRec's step at L 50, d_head 32).
* ``causal_mode="masked"``: ``((Q' K'^T) * lower_triangle) V``, O(L^2 d_head): quadratic in L.

All three give the same numbers (tested).

Padded keys are zeroed so they add nothing to ``S_t``; there is no softmax, so no denominator to fix. Like the
authors' code: no attention dropout (their ``attn_dropout`` is unused), post-LN residual blocks, FFN inner size
``4 dim`` with gelu, LayerNorm eps 1e-12, item + position embeddings -> LayerNorm -> dropout, no final norm.
Deviations: causality (above), right-aligned positions (see `right_aligned_positions`), padded states zeroed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import tensorflow as tf
import tf_keras as keras

from mdcns_tf.backbones.layers import PositionalFFNBackbone, normal_initializer

CAUSAL_MODES = ("chunked", "cumsum", "masked")


@dataclasses.dataclass
class LinRecOptions:
    """``inner_multiplier``: FFN width / dim (4); ``hidden_act``: FFN activation (gelu); ``layer_norm_eps``
    (1e-12); ``causal_mode``: ``chunked``, ``cumsum`` or ``masked`` (same outputs, different cost, see the module
    docstring); ``chunk_size``: chunk length of ``chunked`` (default 32, about d_head, which balances the two
    terms of its cost)."""

    inner_multiplier: int = 4
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    causal_mode: str = "chunked"
    chunk_size: int = 32

    def __post_init__(self) -> None:
        if self.inner_multiplier < 1:
            raise ValueError(f"linrec.inner_multiplier must be >= 1, got {self.inner_multiplier}")
        if self.causal_mode not in CAUSAL_MODES:
            raise ValueError(f"linrec.causal_mode must be one of {list(CAUSAL_MODES)}, got {self.causal_mode!r}")
        if self.chunk_size < 1:
            raise ValueError(f"linrec.chunk_size must be >= 1, got {self.chunk_size}")
        keras.activations.get(self.hidden_act)


def causal_linear_attention(
    query: tf.Tensor, key: tf.Tensor, value: tf.Tensor, mode: str = "chunked", chunk_size: int = 32
) -> tf.Tensor:
    """``out_t = q_t . sum_{s <= t} k_s v_s^T`` for every head, without normalisation.

    query, key `(batch, seq_len, heads, d_k)`, value `(batch, seq_len, heads, d_v)` -> `(batch, seq_len, heads, d_v)`.
    """
    if mode == "cumsum":
        state = tf.cumsum(tf.einsum("blhd,blhe->blhde", key, value), axis=1)  # S_t, (batch, L, heads, d_k, d_v)
        return tf.einsum("blhd,blhde->blhe", query, state)
    if mode == "masked":
        seq_len = tf.shape(query)[1]
        scores = tf.einsum("blhd,bshd->bhls", query, key)
        causal = tf.linalg.band_part(tf.ones((seq_len, seq_len), scores.dtype), -1, 0)
        return tf.einsum("bhls,bshe->blhe", scores * causal, value)
    # Chunked: pad the end to whole chunks (zero keys add nothing; the padded outputs are cut off).
    seq_len = tf.shape(query)[1]
    n_chunks = (seq_len + chunk_size - 1) // chunk_size
    pad = [[0, 0], [0, n_chunks * chunk_size - seq_len], [0, 0], [0, 0]]

    def chunks(x: tf.Tensor) -> tf.Tensor:  # (batch, L, heads, d) -> (batch, chunks, chunk_size, heads, d)
        x = tf.pad(x, pad)
        return tf.reshape(x, tf.concat([tf.shape(x)[:1], [n_chunks, chunk_size], tf.shape(x)[2:]], axis=0))

    q, k, v = chunks(query), chunks(key), chunks(value)
    causal = tf.linalg.band_part(tf.ones((chunk_size, chunk_size), query.dtype), -1, 0)
    intra = tf.einsum("bnhls,bnshe->bnlhe", tf.einsum("bnlhd,bnshd->bnhls", q, k) * causal, v)
    chunk_states = tf.einsum("bnshd,bnshe->bnhde", k, v)  # each chunk's sum of k v^T
    earlier = tf.cumsum(chunk_states, axis=1, exclusive=True)  # the state entering each chunk
    out = intra + tf.einsum("bnlhd,bnhde->bnlhe", q, earlier)
    out = tf.reshape(out, tf.concat([tf.shape(out)[:1], [n_chunks * chunk_size], tf.shape(out)[3:]], axis=0))
    return out[:, :seq_len]


class LinRecAttention(keras.layers.Layer):
    """Causal ELU-Norm linear attention with the post-LN residual: ``LN(x + Dropout(W_o A(x)))``."""

    def __init__(
        self, dim: int, num_heads: int, dropout: float, epsilon: float, mode: str, chunk_size: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"linrec: dim {dim} must be a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.mode = mode
        self.chunk_size = chunk_size
        self.query = keras.layers.Dense(dim, kernel_initializer=normal_initializer(), name="query")
        self.key = keras.layers.Dense(dim, kernel_initializer=normal_initializer(), name="key")
        self.value = keras.layers.Dense(dim, kernel_initializer=normal_initializer(), name="value")
        self.output_dense = keras.layers.Dense(dim, kernel_initializer=normal_initializer(), name="output")
        self.dropout = keras.layers.Dropout(dropout)
        self.norm = keras.layers.LayerNormalization(epsilon=epsilon)

    def _heads(self, x: tf.Tensor) -> tf.Tensor:
        """`(batch, seq_len, dim)` -> `(batch, seq_len, heads, head_dim)`."""
        return tf.reshape(x, tf.concat([tf.shape(x)[:2], [self.num_heads, self.head_dim]], axis=0))

    def call(self, x: tf.Tensor, padding: tf.Tensor, training: bool = False) -> tf.Tensor:
        """x `(batch, seq_len, dim)`, padding `(batch, seq_len, 1)` -> `(batch, seq_len, dim)`."""
        # l2_normalize clamps the squared norm at 1e-16, i.e. the authors' norm.clamp_min(1e-8).
        query = tf.math.l2_normalize(tf.nn.elu(self._heads(self.query(x))), axis=-1, epsilon=1e-16)
        key = tf.math.l2_normalize(tf.nn.elu(self._heads(self.key(x))), axis=-1, epsilon=1e-16)
        key *= padding[..., tf.newaxis]  # padded keys contribute nothing to any state
        value = self._heads(self.value(x))
        context = causal_linear_attention(query, key, value, self.mode, self.chunk_size) / math.sqrt(self.head_dim)
        context = tf.reshape(context, tf.shape(x))
        return self.norm(x + self.dropout(self.output_dense(context), training=training))


class LinRec(PositionalFFNBackbone):
    """Causal LinRec: item + position embeddings, then ``num_layers`` x (linear attention, FFN); see module doc."""

    Options = LinRecOptions

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        opts: LinRecOptions = self.options
        self.attentions = [
            LinRecAttention(
                self.dim,
                self.num_heads,
                self.dropout_rate,
                opts.layer_norm_eps,
                opts.causal_mode,
                opts.chunk_size,
                name=f"attn_{i}",
            )
            for i in range(self.num_layers)
        ]
        self.ffns = self.feed_forward_stack()

    def encode(self, item_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        """item_ids `(batch, seq_len)`, ``seq_len <= max_len`` -> states `(batch, seq_len, dim)`, 0 at padding."""
        x, padding = self.embedded_input(item_ids, training=training)
        for attention, ffn in zip(self.attentions, self.ffns, strict=True):
            x = ffn(attention(x, padding, training=training), training=training) * padding
        return x
