"""Mamba4Rec (Liu et al., 2024; code chengkai-liu/Mamba4Rec): selective state-space layers, in pure TensorFlow.

No CUDA kernel: the selective scan ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t``, ``y_t = C_t . h_t`` is
`selective_scan.selective_scan`, a time loop compiled with XLA that fuses the output contraction into the recurrence
and recomputes states in the backward pass, so the `(batch, L, d_inner, d_state)` states are never stored (see that
module). The previous implementation, a parallel odd-even scan over materialised states (`linear_recurrence_scan`;
~12x the scan's CPU time and ~4x its peak memory at Beauty's shapes), stays here as `_odd_even_selective_scan`, the
reference the tests compare to.

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
from mdcns_tf.backbones.selective_scan import selective_scan, static_length_ladder

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


def _odd_even_scan(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """`linear_recurrence_scan` for a static length: pairs steps (2k, 2k+1) into one, recurses on the half-length
    recurrence (which yields the odd states), then fills in the even states; ``log2(L)`` levels, O(L) work."""
    length = a.shape[1]
    if length == 1:
        return b
    if length % 2:
        # One identity step at the end (a = 1, b = 0) makes the length even and cannot affect earlier states.
        pad = [[0, 0], [0, 1]] + [[0, 0]] * (a.shape.rank - 2)
        return _odd_even_scan(tf.pad(a, pad, constant_values=1.0), tf.pad(b, pad))[:, :length]
    # Pairing by a reshape to (batch, L/2, 2, ...): step-2 strided slices are ~100x slower in TF on CPU.
    pairs_shape = tf.concat([tf.shape(a)[:1], [length // 2, 2], tf.shape(a)[2:]], axis=0)
    a_even, a_odd = tf.unstack(tf.reshape(a, pairs_shape), axis=2)
    b_even, b_odd = tf.unstack(tf.reshape(b, pairs_shape), axis=2)
    # h_{2k+1} = a_{2k+1} (a_{2k} h_{2k-1} + b_{2k}) + b_{2k+1}: a recurrence over the odd steps alone.
    h_odd = _odd_even_scan(a_odd * a_even, a_odd * b_even + b_odd)
    h_before_even = tf.concat([tf.zeros_like(h_odd[:, :1]), h_odd[:, :-1]], axis=1)  # h_{2k-1}, h_{-1} = 0
    h_even = a_even * h_before_even + b_even
    interleaved = tf.stack([h_even, h_odd], axis=2)  # (batch, L/2, 2, ...)
    return tf.reshape(interleaved, tf.concat([tf.shape(a)[:1], [length], tf.shape(a)[2:]], axis=0))


@tf.custom_gradient
def _scan_with_adjoint(a: tf.Tensor, b: tf.Tensor) -> tuple[tf.Tensor, Any]:
    """`_odd_even_scan` with a hand-written backward pass (as the fused Mamba kernel and mamba.py's pscan do).

    The adjoint of ``h_t = a_t h_{t-1} + b_t`` is the same recurrence run backwards in time:
    ``g_t = dh_t + a_{t+1} g_{t+1}``, then ``db_t = g_t`` and ``da_t = g_t h_{t-1}``. One more scan instead of
    differentiating through every reshape/stack of the forward levels: ~1.7x less CPU for forward + backward and
    only ``a`` and ``h`` kept for the backward pass.
    """
    h = _odd_even_scan(a, b)

    def grad(dh: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        a_next = tf.concat([a[:, 1:], tf.ones_like(a[:, :1])], axis=1)
        g = tf.reverse(_odd_even_scan(tf.reverse(a_next, [1]), tf.reverse(dh, [1])), [1])
        h_prev = tf.concat([tf.zeros_like(h[:, :1]), h[:, :-1]], axis=1)
        return g * h_prev, g

    return h, grad


def linear_recurrence_scan(a: tf.Tensor, b: tf.Tensor, max_len: int | None = None) -> tf.Tensor:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` (element-wise, ``h_{-1} = 0``) along axis 1, in parallel.

    a, b `(batch, seq_len, ...)` -> h `(batch, seq_len, ...)`. The scan is unrolled for the static ``seq_len``. When
    that is unknown (a `tf.function` traced with a `None` length, e.g. length-bucketed training batches), the inputs
    are padded at the end with identity steps to the shortest length of `static_length_ladder(max_len)` that holds
    them, one `tf.switch_case` branch per ladder length, and the result is cut back; ``seq_len <= max_len`` is then
    required. Padding every batch to ``max_len`` instead would make the scan cost as much on a 9-item Amazon batch
    as on a full one (5x the work on Beauty).
    """
    if a.shape[1] is not None:
        return _scan_with_adjoint(a, b)
    if max_len is None:
        raise ValueError("linear_recurrence_scan: the sequence length is not static; pass max_len")
    length = tf.shape(a)[1]
    ladder = static_length_ladder(max_len)

    def scan_padded_to(static_len: int) -> Any:
        def branch() -> tf.Tensor:
            pad = [[0, 0], [0, static_len - length]] + [[0, 0]] * (a.shape.rank - 2)
            static_shape = [None, static_len] + a.shape[2:].as_list()
            a_padded = tf.ensure_shape(tf.pad(a, pad, constant_values=1.0), static_shape)
            b_padded = tf.ensure_shape(tf.pad(b, pad), static_shape)
            return _scan_with_adjoint(a_padded, b_padded)[:, :length]

        return branch

    tf.debugging.assert_less_equal(length, max_len, message="linear_recurrence_scan: seq_len > max_len")
    branch_index = tf.reduce_sum(tf.cast(tf.constant(ladder) < length, tf.int32))
    return tf.switch_case(branch_index, [scan_padded_to(n) for n in ladder])


def _odd_even_selective_scan(
    u: tf.Tensor,
    delta: tf.Tensor,
    a: tf.Tensor,
    b: tf.Tensor,
    c: tf.Tensor,
    d: tf.Tensor | None = None,
    z: tf.Tensor | None = None,
    delta_softplus: bool = False,
    max_len: int | None = None,
) -> tf.Tensor:
    """The previous selective scan, with the contract of `selective_scan.selective_scan` (u, delta, z
    `(batch, L, d_inner)`; a `(d_inner, d_state)`; b, c `(batch, L, d_state)`; d `(d_inner,)` -> y
    `(batch, L, d_inner)`): materialises the decays, the drives and all states `(batch, L, d_inner, d_state)` and
    scans them with `linear_recurrence_scan`. Kept as the reference the fused scan is tested against."""
    if delta_softplus:
        delta = tf.nn.softplus(delta)
    decay = tf.exp(delta[..., tf.newaxis] * a)  # (batch, L, d_inner, d_state), in (0, 1)
    drive = (delta * u)[..., tf.newaxis] * b[:, :, tf.newaxis, :]  # Δ_t B_t u_t, same shape
    y = tf.einsum("bldn,bln->bld", linear_recurrence_scan(decay, drive, max_len), c)
    if d is not None:
        y += u * d
    return y * tf.nn.silu(z) if z is not None else y


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
        # The selective scan, `selective_scan.selective_scan`'s contract; tests swap in `_odd_even_selective_scan`.
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
