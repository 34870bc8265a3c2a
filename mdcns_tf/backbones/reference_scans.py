"""Reference implementations of the selective scan, kept to test and to measure the production one against.

Not used by any model: `selective_scan.selective_scan` is what Mamba4Rec runs. Here are

- `selective_scan_reference`: the recurrence step by step, every state materialised: the ground truth of the tests;
- `odd_even_selective_scan`: the implementation Mamba4Rec used before the fused scan, a parallel odd-even scan over
  materialised states `(batch, L, d_inner, d_state)` (`linear_recurrence_scan`), ~12x the fused scan's CPU time and
  ~4x its peak memory at Beauty's shapes (`benchmarks.speed`, ``speed_mamba``). Same contract as the fused scan.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from mdcns_tf.backbones.selective_scan import static_length_ladder


def selective_scan_reference(
    u: tf.Tensor,
    delta: tf.Tensor,
    a: tf.Tensor,
    b: tf.Tensor,
    c: tf.Tensor,
    d: tf.Tensor | None = None,
    z: tf.Tensor | None = None,
    delta_softplus: bool = False,
) -> tf.Tensor:
    """`selective_scan` as a plain step-by-step loop over a static length, every state materialised (for tests)."""
    if delta_softplus:
        delta = tf.nn.softplus(delta)
    h = tf.zeros(tf.concat([tf.shape(u)[:1], tf.shape(a)], axis=0), u.dtype)  # (batch, d_inner, d_state)
    ys = []
    for t in range(u.shape[1]):
        h = tf.exp(delta[:, t, :, None] * a) * h + (delta[:, t] * u[:, t])[:, :, None] * b[:, t, None, :]
        ys.append(tf.einsum("bdn,bn->bd", h, c[:, t]))
    y = tf.stack(ys, axis=1) if ys else tf.zeros_like(u)
    if d is not None:
        y += u * d
    return y * tf.nn.silu(z) if z is not None else y


def odd_even_scan(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """`linear_recurrence_scan` for a static length: pairs steps (2k, 2k+1) into one, recurses on the half-length
    recurrence (which yields the odd states), then fills in the even states; ``log2(L)`` levels, O(L) work."""
    length = a.shape[1]
    if length == 1:
        return b
    if length % 2:
        # One identity step at the end (a = 1, b = 0) makes the length even and cannot affect earlier states.
        pad = [[0, 0], [0, 1]] + [[0, 0]] * (a.shape.rank - 2)
        return odd_even_scan(tf.pad(a, pad, constant_values=1.0), tf.pad(b, pad))[:, :length]
    # Pairing by a reshape to (batch, L/2, 2, ...): step-2 strided slices are ~100x slower in TF on CPU.
    pairs_shape = tf.concat([tf.shape(a)[:1], [length // 2, 2], tf.shape(a)[2:]], axis=0)
    a_even, a_odd = tf.unstack(tf.reshape(a, pairs_shape), axis=2)
    b_even, b_odd = tf.unstack(tf.reshape(b, pairs_shape), axis=2)
    # h_{2k+1} = a_{2k+1} (a_{2k} h_{2k-1} + b_{2k}) + b_{2k+1}: a recurrence over the odd steps alone.
    h_odd = odd_even_scan(a_odd * a_even, a_odd * b_even + b_odd)
    h_before_even = tf.concat([tf.zeros_like(h_odd[:, :1]), h_odd[:, :-1]], axis=1)  # h_{2k-1}, h_{-1} = 0
    h_even = a_even * h_before_even + b_even
    interleaved = tf.stack([h_even, h_odd], axis=2)  # (batch, L/2, 2, ...)
    return tf.reshape(interleaved, tf.concat([tf.shape(a)[:1], [length], tf.shape(a)[2:]], axis=0))


@tf.custom_gradient
def scan_with_adjoint(a: tf.Tensor, b: tf.Tensor) -> tuple[tf.Tensor, Any]:
    """`odd_even_scan` with a hand-written backward pass (as the fused Mamba kernel and mamba.py's pscan do).

    The adjoint of ``h_t = a_t h_{t-1} + b_t`` is the same recurrence run backwards in time:
    ``g_t = dh_t + a_{t+1} g_{t+1}``, then ``db_t = g_t`` and ``da_t = g_t h_{t-1}``. One more scan instead of
    differentiating through every reshape/stack of the forward levels: ~1.7x less CPU for forward + backward and
    only ``a`` and ``h`` kept for the backward pass.
    """
    h = odd_even_scan(a, b)

    def grad(dh: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        a_next = tf.concat([a[:, 1:], tf.ones_like(a[:, :1])], axis=1)
        g = tf.reverse(odd_even_scan(tf.reverse(a_next, [1]), tf.reverse(dh, [1])), [1])
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
        return scan_with_adjoint(a, b)
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
            return scan_with_adjoint(a_padded, b_padded)[:, :length]

        return branch

    tf.debugging.assert_less_equal(length, max_len, message="linear_recurrence_scan: seq_len > max_len")
    branch_index = tf.reduce_sum(tf.cast(tf.constant(ladder) < length, tf.int32))
    return tf.switch_case(branch_index, [scan_padded_to(n) for n in ladder])


def odd_even_selective_scan(
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
