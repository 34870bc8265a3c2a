"""Mamba4Rec (Liu et al., 2024; code chengkai-liu/Mamba4Rec): selective state-space layers, in pure TensorFlow.

No CUDA kernel: the selective scan ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t``, ``y_t = C_t . h_t`` is
`selective_scan.selective_scan`, a time loop compiled with XLA that fuses the output contraction into the recurrence
and recomputes states in the backward pass, so the `(batch, L, d_inner, d_state)` states are never stored (see that
module). The previous implementation, a parallel odd-even scan over materialised states (~12x the scan's CPU time and
~4x its peak memory at Beauty's shapes), is kept with the other reference scans in `reference_scans`.

Architecture, as in the authors' code: item embedding -> dropout -> LayerNorm(eps 1e-12), then ``num_layers`` x
``MambaLayer``: ``h = Mamba(x)``; ``h = LN(Dropout(h))`` for a single layer, ``LN(Dropout(h) + x)`` when stacked;
then the FFN ``LN(x + Dropout(W2 Dropout(gelu(W1 x))))`` with inner size ``4 dim``. No position embeddings (the
recurrence is order-aware). The Mamba block (Gu & Dao 2023, ``mamba_simple.Mamba``): in-proj to ``2 d_inner`` (no
bias) -> causal depthwise conv1d (width ``d_conv``, bias) -> SiLU -> selective SSM with input-dependent Δ (rank
``ceil(dim / 16)`` projection + softplus), B, C, ``A = -exp(A_log)`` (S4D-real init ``A_log = log(1..d_state)``),
D skip -> gate with ``SiLU(z)`` -> out-proj (no bias). Defaults d_state 32, d_conv 4, expand 2 (Mamba4Rec's
``config.yaml``).

Initialisation follows what the authors' code actually runs: RecBole's ``_init_weights`` re-initialises every
``nn.Linear`` inside Mamba to N(0, 0.02) with zero bias, which overrides Mamba's own Δ-bias init (so Δ starts near
softplus(0) = 0.69). ``dt_init="mamba"`` restores Mamba's init instead (Δ log-uniform in [1e-3, 0.1], dt_proj
weights U(±rank^-0.5)). The conv keeps PyTorch's default init (U(±1/sqrt(d_conv)) for weights and bias).

Padding (inputs are left-padded; the authors' RecBole data is right-padded, where trailing padding cannot reach
real positions): the SSM input is zeroed at padded positions after the conv, so the state stays exactly 0 until the
first real item, and the in-proj has no bias, so the conv sees zeros on padded slots just like its own causal zero
padding. States are therefore left-padding invariant, and padded states are zeroed after every layer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from mdcns_tf.backbones.base import Backbone
from mdcns_tf.backbones.layers import FeedForward, normal_initializer
from mdcns_tf.backbones.selective_scan import selective_scan

DT_INITS = ("mamba4rec", "mamba")


@dataclasses.dataclass
class Mamba4RecOptions:
    """``d_state``: SSM state size per channel (32); ``d_conv``: causal conv width (4); ``expand``: d_inner / dim
    (2); ``dt_rank``: rank of the Δ projection, 0 = ``ceil(dim / 16)``; ``inner_multiplier``: FFN width / dim (4);
    ``layer_norm_eps`` (1e-12); ``dt_init``: ``mamba4rec`` (what the authors' code runs) or ``mamba``."""

    d_state: int = 32
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0
    inner_multiplier: int = 4
    layer_norm_eps: float = 1e-12
    dt_init: str = "mamba4rec"

    def __post_init__(self) -> None:
        for name in ("d_state", "d_conv", "expand", "inner_multiplier"):
            if getattr(self, name) < 1:
                raise ValueError(f"mamba4rec.{name} must be >= 1, got {getattr(self, name)}")
        if self.dt_rank < 0:
            raise ValueError(f"mamba4rec.dt_rank must be >= 0 (0 = ceil(dim / 16)), got {self.dt_rank}")
        if self.dt_init not in DT_INITS:
            raise ValueError(f"mamba4rec.dt_init must be one of {list(DT_INITS)}, got {self.dt_init!r}")


class MambaMixer(keras.layers.Layer):
    """The Mamba block (``mamba_simple.Mamba`` without the fused kernels): x `(batch, L, dim)` -> `(batch, L, dim)`."""

    def __init__(self, dim: int, max_len: int, options: Mamba4RecOptions, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = dim
        self.max_len = max_len
        self.d_inner = options.expand * dim
        self.d_state = options.d_state
        self.d_conv = options.d_conv
        self.dt_rank = options.dt_rank or math.ceil(dim / 16)
        self.dt_init = options.dt_init
        self.in_proj = keras.layers.Dense(
            2 * self.d_inner, use_bias=False, kernel_initializer=normal_initializer(), name="in_proj"
        )
        self.x_proj = keras.layers.Dense(
            self.dt_rank + 2 * self.d_state, use_bias=False, kernel_initializer=normal_initializer(), name="x_proj"
        )
        if self.dt_init == "mamba":
            dt_kernel_init: keras.initializers.Initializer = keras.initializers.RandomUniform(
                -(self.dt_rank**-0.5), self.dt_rank**-0.5
            )
            dt_bias_init: Any = self._mamba_dt_bias
        else:
            dt_kernel_init, dt_bias_init = normal_initializer(), "zeros"
        self.dt_proj = keras.layers.Dense(
            self.d_inner, kernel_initializer=dt_kernel_init, bias_initializer=dt_bias_init, name="dt_proj"
        )
        self.out_proj = keras.layers.Dense(
            dim, use_bias=False, kernel_initializer=normal_initializer(), name="out_proj"
        )
        # `selective_scan.selective_scan`; tests swap in the references of `reference_scans`.
        self.scan = selective_scan

    @staticmethod
    def _mamba_dt_bias(shape: Any, dtype: Any = None, **kwargs: Any) -> tf.Tensor:
        """Mamba's Δ-bias init: inverse softplus of Δ ~ log-uniform [1e-3, 0.1], floored at 1e-4."""
        dt = tf.exp(tf.random.uniform(shape, math.log(1e-3), math.log(1e-1)))
        dt = tf.maximum(dt, 1e-4)
        return tf.cast(dt + tf.math.log(-tf.math.expm1(-dt)), dtype or tf.float32)

    def build(self, input_shape: tf.TensorShape) -> None:
        bound = 1.0 / math.sqrt(self.d_conv)  # PyTorch's default Conv1d init for a depthwise kernel
        self.conv_kernel = self.add_weight(
            name="conv_kernel",
            shape=(self.d_conv, self.d_inner),
            initializer=keras.initializers.RandomUniform(-bound, bound),
        )
        self.conv_bias = self.add_weight(
            name="conv_bias", shape=(self.d_inner,), initializer=keras.initializers.RandomUniform(-bound, bound)
        )
        a_log = np.log(np.tile(np.arange(1, self.d_state + 1, dtype=np.float32), (self.d_inner, 1)))
        self.a_log = self.add_weight(
            name="A_log", shape=(self.d_inner, self.d_state), initializer=keras.initializers.Constant(a_log)
        )
        self.d_skip = self.add_weight(name="D", shape=(self.d_inner,), initializer="ones")
        super().build(input_shape)

    def causal_depthwise_conv(self, u: tf.Tensor) -> tf.Tensor:
        """``out[t] = bias + sum_k w[k] u[t - (d_conv - 1) + k]`` with zeros before the start; u `(batch, L, C)`."""
        padded = tf.expand_dims(tf.pad(u, [[0, 0], [self.d_conv - 1, 0], [0, 0]]), 1)  # (batch, 1, L + d_conv - 1, C)
        # One depthwise conv op: forward + backward ~4x cheaper on CPU than d_conv shifted multiply-adds, whose
        # slice gradients (a padded scatter each) and per-tap weight reductions cost more than the rest of the
        # block's non-scan work. expand_dims/squeeze/bias_add rather than [:, None]/[:, 0]/+ for the same reason:
        # their gradients are reshapes and BiasAddGrad, not StridedSliceGrad and a broadcast Sum.
        kernel = tf.reshape(self.conv_kernel, [1, self.d_conv, self.d_inner, 1])
        out = tf.squeeze(tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID"), 1)
        return tf.nn.bias_add(out, self.conv_bias)

    def call(self, x: tf.Tensor, padding: tf.Tensor) -> tf.Tensor:
        """x `(batch, L, dim)` (0 on padded slots), padding `(batch, L, 1)` -> `(batch, L, dim)`."""
        u, gate = tf.split(self.in_proj(x), 2, axis=-1)  # each (batch, L, d_inner)
        # Zeroing the SSM input on padded slots keeps the state exactly 0 until the first real item.
        u = tf.nn.silu(self.causal_depthwise_conv(u)) * padding
        dt, b_in, c_out = tf.split(self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], axis=-1)
        a = -tf.exp(self.a_log)  # (d_inner, d_state), < 0: a stable, decaying state
        # Δ = softplus(dt_proj(dt)) > 0; y = (C . h + D u) * silu(gate), all fused into the scan.
        y = self.scan(
            u, self.dt_proj(dt), a, b_in, c_out, d=self.d_skip, z=gate, delta_softplus=True, max_len=self.max_len
        )
        return self.out_proj(y)


class MambaLayer(keras.layers.Layer):
    """Mamba4Rec's layer: ``LN(Dropout(Mamba(x)) [+ x])`` then the FFN; the residual only when layers are stacked."""

    def __init__(self, dim: int, max_len: int, dropout: float, residual: bool, options: Mamba4RecOptions, **kwargs):
        super().__init__(**kwargs)
        self.residual = residual
        self.mixer = MambaMixer(dim, max_len, options, name="mamba")
        self.dropout = keras.layers.Dropout(dropout)
        self.norm = keras.layers.LayerNormalization(epsilon=options.layer_norm_eps)
        self.ffn = FeedForward(
            dim,
            dim * options.inner_multiplier,
            dropout,
            activation="gelu",
            inner_dropout=True,
            epsilon=options.layer_norm_eps,
            name="ffn",
        )

    def call(self, x: tf.Tensor, padding: tf.Tensor, training: bool = False) -> tf.Tensor:
        """x `(batch, L, dim)`, padding `(batch, L, 1)` -> `(batch, L, dim)`, 0 on padded slots."""
        hidden = self.dropout(self.mixer(x, padding), training=training)
        hidden = self.norm(hidden + x if self.residual else hidden)
        return self.ffn(hidden, training=training) * padding


class Mamba4Rec(Backbone):
    """Mamba4Rec backbone; see the module docstring. ``num_heads`` is unused."""

    Options = Mamba4RecOptions

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        opts: Mamba4RecOptions = self.options
        self.input_dropout = keras.layers.Dropout(self.dropout_rate)
        self.input_norm = keras.layers.LayerNormalization(epsilon=opts.layer_norm_eps)
        self.mamba_layers = [
            MambaLayer(self.dim, self.max_len, self.dropout_rate, self.num_layers > 1, opts, name=f"mamba_layer_{i}")
            for i in range(self.num_layers)
        ]

    def encode(self, item_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        """item_ids `(batch, seq_len)` -> states `(batch, seq_len, dim)`, 0 at padding. With a dynamic ``seq_len``
        (unknown at trace time), ``seq_len <= max_len``."""
        padding = self.padding_mask(item_ids)
        x = self.input_norm(self.input_dropout(self.item_embedding(item_ids), training=training)) * padding
        for layer in self.mamba_layers:
            x = layer(x, padding, training=training)
        return x
