"""FMLP-Rec (Zhou et al., WWW 2022): filter-enhanced MLP, made causal.

Deviation from the paper (deliberate, required by the backbone contract): FMLP-Rec multiplies the sequence's
``rfft`` (length ``L``) by a learnable complex filter and transforms back. That is a *circular* convolution of the
sequence with the kernel ``k = irfft(W)``: the output at position t mixes ``x[t - s mod L]``, i.e. for ``s > t`` it
reads *future* items. Here the same learnable frequency-domain parameter ``W`` (same shape ``(L//2 + 1, dim)``, same
initialisation) defines the kernel ``k = irfft(W, L)`` whose ``L`` taps are used as causal lags ``0 .. L-1`` only:
``y[t] = sum_{s <= t} k[s] x[t - s]``, computed by FFT with both signals zero-padded to ``2 L`` so the circular
convolution becomes a linear one and the wrap-around (negative lags) vanishes. Everything else follows the authors'
code (``Woeee/FMLP-Rec``): item + position embeddings, LayerNorm(eps 1e-12), dropout; per layer
``LN(x + Dropout(filter(x)))`` then ``LN(x + Dropout(W2 gelu(W1 x)))`` with inner size ``4 dim``; no final norm.

Other deviations: positions are right-aligned (see `right_aligned_positions`) and states are zeroed at padded
positions after every layer, so padding never feeds the filter (the authors' code lets padded slots, which carry
``LN(E[0] + P[t])``, flow through the filter).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf
import tf_keras as keras

from mdcns_tf.backbones.layers import PositionalFFNBackbone, normal_initializer


@dataclasses.dataclass
class FMLPRecOptions:
    """``inner_multiplier``: FFN width / dim (paper 4); ``hidden_act``: FFN activation (paper gelu);
    ``layer_norm_eps``: LayerNorm epsilon (paper 1e-12); ``filter_init_std``: std of the filter's real and
    imaginary parts at init (paper 0.02)."""

    inner_multiplier: int = 4
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    filter_init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.inner_multiplier < 1:
            raise ValueError(f"fmlprec.inner_multiplier must be >= 1, got {self.inner_multiplier}")
        keras.activations.get(self.hidden_act)  # unknown names raise here, before any graph is built


def causal_fft_convolution(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """Per-channel causal convolution ``y[b, t, c] = sum_{s=0}^{t} kernel[c, s] x[b, t - s, c]`` via FFT.

    x `(batch, seq_len, channels)`, kernel `(channels, kernel_len)` with tap s = lag s >= 0 -> `(batch, seq_len,
    channels)`. Both are zero-padded to ``n >= seq_len + kernel_len - 1`` so the FFT's circular convolution equals
    the linear one on the first ``seq_len`` outputs (no tap wraps around to a later position).
    """
    seq_len = x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]
    kernel_len = kernel.shape[-1]
    n_fft = seq_len + kernel_len  # static when seq_len is, which XLA needs for the FFT length
    signal = tf.transpose(x, [0, 2, 1])  # tf.signal transforms the innermost axis
    spectrum = tf.signal.rfft(signal, fft_length=[n_fft]) * tf.signal.rfft(kernel, fft_length=[n_fft])[tf.newaxis]
    y = tf.signal.irfft(spectrum, fft_length=[n_fft])[:, :, :seq_len]
    return tf.transpose(y, [0, 2, 1])


class CausalFilterLayer(keras.layers.Layer):
    """``LN(x + Dropout(causal_filter(x)))``; x `(batch, seq_len, dim)` with ``seq_len <= max_len``."""

    def __init__(self, dim: int, max_len: int, dropout: float, epsilon: float, init_std: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = dim
        self.max_len = max_len
        self.init_std = init_std
        self.dropout = keras.layers.Dropout(dropout)
        self.norm = keras.layers.LayerNormalization(epsilon=epsilon)

    def build(self, input_shape: tf.TensorShape) -> None:
        # Real and imaginary parts of the paper's complex filter, one per rfft bin of a max_len sequence.
        self.complex_weight = self.add_weight(
            name="complex_weight",
            shape=(self.max_len // 2 + 1, self.dim, 2),
            initializer=normal_initializer(self.init_std),
        )
        super().build(input_shape)

    def kernel(self) -> tf.Tensor:
        """The causal kernel `(dim, max_len)`: tap s multiplies the item s steps back.

        ``irfft`` (backward normalisation) of the filter is exactly the kernel the paper's ortho-normalised
        ``irfft(rfft(x) * W)`` circularly convolves with, so a filter trained here means the same as the paper's.
        """
        weight = tf.complex(self.complex_weight[..., 0], self.complex_weight[..., 1])  # (bins, dim)
        return tf.signal.irfft(tf.transpose(weight), fft_length=[self.max_len])

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        filtered = causal_fft_convolution(x, self.kernel())
        return self.norm(x + self.dropout(filtered, training=training))


class FMLPRec(PositionalFFNBackbone):
    """Causal FMLP-Rec: item + position embeddings, then ``num_layers`` x (causal filter, FFN). ``num_heads`` unused.

    See the module docstring for the deviations from the paper (causal linear convolution instead of the circular,
    future-reading one; right-aligned positions; padded states zeroed).
    """

    Options = FMLPRecOptions

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        opts: FMLPRecOptions = self.options
        self.filters = [
            CausalFilterLayer(
                self.dim, self.max_len, self.dropout_rate, opts.layer_norm_eps, opts.filter_init_std, name=f"filter_{i}"
            )
            for i in range(self.num_layers)
        ]
        self.ffns = self.feed_forward_stack()

    def encode(self, item_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        """item_ids `(batch, seq_len)`, ``seq_len <= max_len`` -> states `(batch, seq_len, dim)`, 0 at padding."""
        x, padding = self.embedded_input(item_ids, training=training)
        for filter_layer, ffn in zip(self.filters, self.ffns, strict=True):
            # Zeroing after each sub-layer keeps padded slots at exactly 0, so they add nothing to the convolution.
            x = filter_layer(x, training=training) * padding
            x = ffn(x, training=training) * padding
        return x
