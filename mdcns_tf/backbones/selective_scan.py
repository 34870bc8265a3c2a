"""The selective scan of Mamba (S6) in pure TensorFlow: a time loop compiled with XLA that never stores the states.

``h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t`` (element-wise over ``(d_inner, d_state)``, ``h_{-1} = 0``),
``y_t = C_t . h_t + D u_t``, optionally gated ``y_t * silu(z_t)`` and with ``Δ = softplus(delta)``: the contract of
mamba_ssm's ``selective_scan_fn(u, delta, A, B, C, D, z, delta_softplus)``. The naive formulation materialises
``exp(Δ A)``, ``Δ u B`` and all states, each ``(batch, L, d_inner, d_state)`` (52M floats at batch 256, length 50,
d_inner 128, d_state 32), and then its cost is memory traffic, not arithmetic. Here, as in the fused CUDA kernel, the
output contraction is fused into the recurrence and nothing of that size exists:

- forward: for a tile of a few batch rows at a time, a `tf.while_loop` over time updates the `(rows, d_state,
  d_inner)` state and contracts it with ``C_t`` at once; only ``y`` leaves the loop.
- backward (`tf.custom_gradient`): the tile's states are recomputed into a tile-sized buffer that stays in cache
  (``dC_t = h_t . dy_t`` and ``dz_t`` on the way), then the adjoint recurrence
  ``g_t = exp(Δ_{t+1} A) g_{t+1} + C_t dy_t`` runs backwards in time and contracts at every step:
  ``dx_t = B_t . g_t`` (``x = Δ u``), ``dB_t = g_t . x_t``, ``dΔ_t = sum_n A q_t + dx_t u_t`` and
  ``dA = sum q_t Δ_t`` with ``q_t = g_t exp(Δ_t A) h_{t-1}``.

The `(batch, L, d_inner)` element-wise work around the scan (softplus, ``Δ u``, ``D u``, the gate) is done inside
the loops too: as separate TF ops, forward and backward, it cost about as much as a third of the scan.

Why this shape of code (measured on a 2-core Xeon, TF 2.21): XLA fuses each step into a handful of loops, where a
plain TF while loop runs ~15 separate ops per step; small tiles (4 rows: 64 KB states) keep a step in L1/L2, where a
whole-batch step (4 MB) spills; contractions are dots (batched GEMV), which XLA:CPU vectorises, while a fused
``reduce_sum`` over ``d_state`` becomes strided gathers; the state layout is ``(rows, d_state, d_inner)`` so the
element-wise updates run along the contiguous ``d_inner``. ``exp`` is then about half of what is left (three passes:
forward, recompute, adjoint; keeping the decays for the adjoint instead was slower). On AVX-512 machines XLA:CPU
still emits 256-bit vectors by default; `prefer_wide_vectors` asks for 512 (forward 1.4x, forward + backward
1.25x faster at Beauty's shapes) unless ``XLA_FLAGS`` already says otherwise.

Shapes that vary (length-bucketed batches, the last partial batch, serving) would make XLA compile once per shape,
so the kernels only ever see ``(BLOCK, padded_len, ...)``: the batch is padded to a multiple of `BLOCK` rows and
split into blocks (a `tf.map_fn`, whose iterations run concurrently in a graph), and the length is padded at the end
to the next value of the ladder in `padded_length`; the loops run over the real length and the real rows only, so
padding costs copies, not scan steps. Under ``jit_compile=True`` around the whole model the same code is inlined.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import tensorflow as tf

# Batch rows one kernel call handles (compiled shapes are (BLOCK, padded length, ...)); blocks run concurrently.
BLOCK = 64
# Batch rows a time step works on: the (TILE, d_state, d_inner) state of one step stays in L1/L2 on CPU. On a GPU a
# step covers the whole block instead (see `_tile_rows`).
TILE = 4

VECTOR_WIDTH_FLAG = "--xla_cpu_prefer_vector_width"


def cpu_has_avx512() -> bool:
    """Whether this (Linux) CPU reports AVX-512F; False where /proc/cpuinfo cannot tell."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("flags") and " avx512f" in line for line in cpuinfo)
    except OSError:
        return False


def prefer_wide_vectors(environ: dict[str, str] | Any = os.environ) -> bool:
    """Appends ``--xla_cpu_prefer_vector_width=512`` to ``XLA_FLAGS`` on an AVX-512 CPU, unless the flag is set.

    XLA reads ``XLA_FLAGS`` once, at the process's first XLA compilation, so this runs when the module is imported
    (before the scan kernels compile); a process that compiled something with XLA earlier keeps its flags. Returns
    whether the flag was added. A user's own ``XLA_FLAGS`` with a vector width wins.
    """
    flags = environ.get("XLA_FLAGS", "")
    if VECTOR_WIDTH_FLAG in flags or not cpu_has_avx512():
        return False
    environ["XLA_FLAGS"] = f"{flags} {VECTOR_WIDTH_FLAG}=512".strip()
    return True


prefer_wide_vectors()


def static_length_ladder(max_len: int) -> list[int]:
    """The lengths a dynamic-length scan is padded to: 8, 12, 16, 24, ... (powers of two and 1.5x powers of two)
    below ``max_len``, then ``max_len`` (e.g. 8, 12, 16, 24, 32, 48, 50): few compiled shapes, at most 1.5x padding
    (plus 8)."""
    ladder = [n for k in range(3, 12) for n in (2**k, 3 * 2 ** (k - 1)) if n < max_len]
    return ladder + [max_len]


_LADDER = [n for k in range(3, 30) for n in (2**k, 3 * 2 ** (k - 1))]  # 8, 12, 16, 24, ..., 3 * 2^28


def padded_length(length: tf.Tensor | int, max_len: int | None) -> tf.Tensor | int:
    """The smallest of 8, 12, 16, 24, 32, 48, 64, ... that is >= ``length``, or ``max_len`` when that is smaller and
    still holds ``length``: `static_length_ladder` extended beyond ``max_len``. An int for an int ``length``, else
    an int32 scalar tensor."""
    if isinstance(length, int):
        rung = min(n for n in _LADDER if n >= length)
        return min(rung, max_len) if max_len is not None and length <= max_len else rung
    ladder = tf.constant(_LADDER, tf.int32)
    rung = tf.reduce_min(tf.where(ladder >= length, ladder, tf.int32.max))
    if max_len is None:
        return rung
    return tf.where(length <= max_len, tf.minimum(rung, max_len), rung)


def selective_scan(
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
    """``y_t = C_t . h_t + D u_t`` (times ``silu(z_t)`` if ``z``), ``h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t``, with
    ``Δ = softplus(delta)`` if ``delta_softplus`` else ``delta``.

    u, delta, z `(batch, L, d_inner)`; a `(d_inner, d_state)`; b, c `(batch, L, d_state)`; d `(d_inner,)` -> y
    `(batch, L, d_inner)`. Differentiable with respect to every tensor input. ``L`` may be unknown at trace time;
    ``max_len`` only caps the length a batch is padded to (see `padded_length`). float32 or float64.
    """
    d_inner, d_state = a.shape
    if d_inner is None or d_state is None:
        raise ValueError(f"selective_scan needs static d_inner and d_state, got a of shape {a.shape}")
    options = _ScanOptions(bool(delta_softplus), gated=z is not None)
    # The kernels need static channel counts; A has them.
    u, delta = (tf.ensure_shape(t, [None, None, d_inner]) for t in (u, delta))
    b, c = (tf.ensure_shape(t, [None, None, d_state]) for t in (b, c))
    inputs = [u, delta, b, c, a, d if d is not None else tf.zeros([d_inner], u.dtype)]
    if z is not None:
        inputs.append(tf.ensure_shape(z, [None, None, d_inner]))

    @tf.custom_gradient
    def scan(*inputs: tf.Tensor) -> tuple[tf.Tensor, Any]:
        # Cut from the tape: only the custom gradient below is wanted, and a recorded XLA call would make TF
        # rebuild the kernel with every loop intermediate kept for an autodiff gradient.
        u, delta, b, c, a, d, *z = (tf.stop_gradient(t) for t in inputs)
        layout = _BlockLayout(u, max_len)
        a_t = tf.transpose(a)  # (d_state, d_inner): the kernels' state layout
        sequences = [layout.to_blocks(t) for t in (u, delta, b, c, *z)]

        def forward(block: tuple[tf.Tensor, ...]) -> tf.Tensor:
            *block_sequences, rows = block
            return _forward_block(*block_sequences, rows, a_t, d, layout.length_tensor, options)

        y = tf.map_fn(
            forward, (*sequences, layout.rows), fn_output_signature=tf.TensorSpec([BLOCK, None, d_inner], u.dtype)
        )

        def grad(dy: tf.Tensor) -> list[tf.Tensor]:
            def backward(block: tuple[tf.Tensor, ...]) -> tuple[tf.Tensor, ...]:
                *block_sequences, block_dy, rows = block
                return _backward_block(*block_sequences, block_dy, rows, a_t, d, layout.length_tensor, options)

            per_step = [tf.TensorSpec([BLOCK, None, n], u.dtype) for n in (d_inner, d_inner, d_state, d_state)]
            signature = (*per_step, tf.TensorSpec([d_state, d_inner], u.dtype), tf.TensorSpec([d_inner], u.dtype))
            if options.gated:
                signature += (tf.TensorSpec([BLOCK, None, d_inner], u.dtype),)
            grads = tf.map_fn(backward, (*sequences, layout.to_blocks(dy), layout.rows), fn_output_signature=signature)
            d_u, d_delta, d_b, d_c = (layout.from_blocks(g) for g in grads[:4])
            d_a = tf.transpose(tf.reduce_sum(grads[4], axis=0))
            d_d = tf.reduce_sum(grads[5], axis=0)
            return [d_u, d_delta, d_b, d_c, d_a, d_d] + [layout.from_blocks(g) for g in grads[6:]]

        return layout.from_blocks(y), grad

    return scan(*inputs)


class _ScanOptions(NamedTuple):
    """Static flags of the kernels (Python bools: part of their trace key)."""

    delta_softplus: bool
    gated: bool


class _BlockLayout:
    """Pads `(batch, L, C)` tensors to `(n_blocks * BLOCK, padded_len, C)` and splits them into blocks; inverse."""

    def __init__(self, reference: tf.Tensor, max_len: int | None) -> None:
        self.static_shape = reference.shape[:2]
        batch, length = self.static_shape
        self.batch = batch if batch is not None else tf.shape(reference)[0]
        self.length = length if length is not None else tf.shape(reference)[1]
        self.padded_len = padded_length(self.length, max_len)
        self.length_tensor = tf.convert_to_tensor(self.length, tf.int32)  # a tensor: no retrace per length
        self.n_blocks = (self.batch + BLOCK - 1) // BLOCK
        # Real rows of every block: BLOCK, ..., BLOCK, the remainder.
        self.rows = tf.clip_by_value(self.batch - BLOCK * tf.range(self.n_blocks), 0, BLOCK)
        # A batch of whole blocks at a ladder length (Beauty's 256 x 50) needs neither a pad nor a slice (copies).
        self.unpadded = (
            batch is not None and batch % BLOCK == 0 and isinstance(self.padded_len, int) and self.padded_len == length
        )

    def to_blocks(self, t: tf.Tensor) -> tf.Tensor:
        """`(batch, L, C)` -> `(n_blocks, BLOCK, padded_len, C)`, zero-padded (a zero step leaves h unchanged)."""
        if not self.unpadded:
            t = tf.pad(t, [[0, self.n_blocks * BLOCK - self.batch], [0, self.padded_len - self.length], [0, 0]])
        return tf.reshape(t, [self.n_blocks, BLOCK, self.padded_len, t.shape[-1]])

    def from_blocks(self, t: tf.Tensor) -> tf.Tensor:
        """`(n_blocks, BLOCK, padded_len, C)` -> `(batch, L, C)`."""
        channels = t.shape[-1]
        t = tf.reshape(t, [self.n_blocks * BLOCK, self.padded_len, channels])
        if not self.unpadded:
            t = t[: self.batch, : self.length]
        return tf.ensure_shape(t, self.static_shape.concatenate([channels]))


def _tile_rows() -> int:
    """Rows per time step: `TILE` on CPU; the whole block on a GPU, where small steps would be launch-bound."""
    return BLOCK if tf.config.list_logical_devices("GPU") else TILE


def _to_tiles(t: tf.Tensor, tile: int) -> tf.Tensor:
    """`(BLOCK, L, C)` -> `(BLOCK / tile, L, tile, C)`: one time step of one tile is a contiguous `(tile, C)`."""
    return tf.transpose(tf.reshape(t, [BLOCK // tile, tile, tf.shape(t)[1], t.shape[-1]]), [0, 2, 1, 3])


def _from_tiles(written: tf.TensorArray, tile: int, channels: int) -> tf.Tensor:
    """A TensorArray of `(tile, C)` steps at index ``k * L + t`` -> `(BLOCK, L, C)`."""
    t = tf.reshape(written.stack(), [BLOCK // tile, -1, tile, channels])
    return tf.reshape(tf.transpose(t, [0, 2, 1, 3]), [BLOCK, -1, channels])


def _tiles(tensors: dict[str, tf.Tensor], tile: int) -> dict[str, tf.Tensor]:
    return {name: _to_tiles(t, tile) for name, t in tensors.items()}


def _unpack(args: tuple[Any, ...], with_dy: bool) -> tuple[dict[str, tf.Tensor], tuple[Any, ...]]:
    """Splits a kernel's arguments into its `(BLOCK, L, C)` sequences (by name) and the rest."""
    options = args[-1]
    names = ("u", "delta", "b", "c") + (("z",) if options.gated else ()) + (("dy",) if with_dy else ())
    return dict(zip(names, args[: len(names)], strict=True)), args[len(names) :]


def _block_terms(seq: dict[str, tf.Tensor], options: _ScanOptions) -> tuple[tf.Tensor, tf.Tensor]:
    """Δ and x = Δ u of a whole block `(BLOCK, L, d_inner)`: element-wise work done once per block, vectorised,
    rather than per `(tile, d_inner)` step, where every small op costs a kernel launch."""
    delta = tf.nn.softplus(seq["delta"]) if options.delta_softplus else seq["delta"]
    return delta, delta * seq["u"]


@tf.function(jit_compile=True)
def _forward_block(*args: Any) -> tf.Tensor:
    """y of one block. Arguments: u, delta `(BLOCK, L, d_inner)`; b, c `(BLOCK, L, d_state)`; [z `(BLOCK, L,
    d_inner)` if gated]; rows (real rows, int32); a_t `(d_state, d_inner)`; d `(d_inner,)`; length (real steps,
    int32); options -> y `(BLOCK, L, d_inner)` (garbage-free zeros of the scan beyond rows and length)."""
    seq, (rows, a_t, d, length, options) = _unpack(args, with_dy=False)
    tile = _tile_rows()
    padded_len = tf.shape(seq["u"])[1]
    d_state, d_inner = a_t.shape
    dtype = a_t.dtype
    delta, x = _block_terms(seq, options)
    tiles = _tiles({"delta": delta, "x": x, "b": seq["b"], "c": seq["c"]}, tile)
    ys = tf.TensorArray(dtype, size=(BLOCK // tile) * padded_len, element_shape=[tile, d_inner])

    def tile_body(k: tf.Tensor, ys: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
        def step(t: tf.Tensor, h: tf.Tensor, ys: tf.TensorArray) -> tuple[tf.Tensor, tf.Tensor, tf.TensorArray]:
            delta_t, x_t, b_t, c_t = (tiles[name][k, t] for name in ("delta", "x", "b", "c"))
            h = tf.exp(a_t * delta_t[:, None, :]) * h + b_t[:, :, None] * x_t[:, None, :]
            return t + 1, h, ys.write(k * padded_len + t, tf.einsum("bnd,bn->bd", h, c_t))

        h0 = tf.zeros([tile, d_state, d_inner], dtype)
        _, _, ys = tf.while_loop(lambda t, *_: t < length, step, (0, h0, ys))
        return k + 1, ys

    n_tiles = (rows + tile - 1) // tile
    _, ys = tf.while_loop(lambda k, _: k < n_tiles, tile_body, (0, ys))
    y = _from_tiles(ys, tile, d_inner) + seq["u"] * d
    return y * tf.nn.silu(seq["z"]) if options.gated else y


@tf.function(jit_compile=True)
def _backward_block(*args: Any) -> tuple[tf.Tensor, ...]:
    """Gradients of one block. Arguments as `_forward_block` with dy `(BLOCK, L, d_inner)` after the sequences ->
    d_u, d_delta `(BLOCK, L, d_inner)`, d_b, d_c `(BLOCK, L, d_state)`, d_a_t `(d_state, d_inner)` and d_d
    `(d_inner,)` (this block's shares), [d_z `(BLOCK, L, d_inner)` if gated]."""
    seq, (rows, a_t, d, length, options) = _unpack(args, with_dy=True)
    tile = _tile_rows()
    padded_len = tf.shape(seq["u"])[1]
    d_state, d_inner = a_t.shape
    dtype = a_t.dtype
    delta, x = _block_terms(seq, options)
    # The gradient reaching C . h + D u: dy, times silu(z) when gated.
    dy = seq["dy"] * tf.nn.silu(seq["z"]) if options.gated else seq["dy"]
    tiles = _tiles({"delta": delta, "x": x, "b": seq["b"], "c": seq["c"], "dy": dy}, tile)
    size = (BLOCK // tile) * padded_len
    widths = {"dx": d_inner, "d_delta": d_inner, "db": d_state, "dc": d_state, "y": d_inner}
    if not options.gated:
        del widths["y"]
    outputs = {name: tf.TensorArray(dtype, size=size, element_shape=[tile, n]) for name, n in widths.items()}
    # One tile's states, states[t + 1] = h_t and states[0] = h_{-1} = 0, reused by every tile (a fresh buffer per
    # tile would be zero-filled every time).
    states = tf.TensorArray(dtype, size=padded_len + 1, element_shape=[tile, d_state, d_inner], clear_after_read=False)
    states = states.write(0, tf.zeros([tile, d_state, d_inner], dtype))
    ones = tf.ones([tile, d_state], dtype)

    def tile_body(k: tf.Tensor, states: tf.TensorArray, q_delta: tf.Tensor, outs: dict[str, tf.TensorArray]) -> tuple:
        def recompute(t: tf.Tensor, h: tf.Tensor, states: tf.TensorArray, outs: dict[str, tf.TensorArray]) -> tuple:
            delta_t, x_t, b_t, c_t, dy_t = (tiles[name][k, t] for name in ("delta", "x", "b", "c", "dy"))
            h = tf.exp(a_t * delta_t[:, None, :]) * h + b_t[:, :, None] * x_t[:, None, :]
            index = k * padded_len + t
            outs = {**outs, "dc": outs["dc"].write(index, tf.einsum("bnd,bd->bn", h, dy_t))}
            if options.gated:  # C . h again, for the gradient of the gate
                outs["y"] = outs["y"].write(index, tf.einsum("bnd,bn->bd", h, c_t))
            return t + 1, h, states.write(t + 1, h), outs

        h0 = tf.zeros([tile, d_state, d_inner], dtype)
        _, _, states, outs = tf.while_loop(lambda t, *_: t < length, recompute, (0, h0, states, outs))

        def adjoint(i: tf.Tensor, carry: tf.Tensor, q_delta: tf.Tensor, outs: dict[str, tf.TensorArray]) -> tuple:
            t = length - 1 - i
            delta_t, x_t, b_t, c_t, dy_t = (tiles[name][k, t] for name in ("delta", "x", "b", "c", "dy"))
            # carry = exp(Δ_{t+1} A) g_{t+1}, the adjoint h_t receives from step t + 1 (0 at the last step).
            g = carry + c_t[:, :, None] * dy_t[:, None, :]
            carry = g * tf.exp(a_t * delta_t[:, None, :])
            q = carry * states.read(t)  # g_t exp(Δ_t A) h_{t-1}: no cancellation, unlike g_t (h_t - Δ_t u_t B_t)
            index = k * padded_len + t
            outs = {
                **outs,
                "dx": outs["dx"].write(index, tf.einsum("bnd,bn->bd", g, b_t)),
                "d_delta": outs["d_delta"].write(index, tf.einsum("bnd,bn->bd", q * a_t, ones)),
                "db": outs["db"].write(index, tf.einsum("bnd,bd->bn", g, x_t)),
            }
            return i + 1, carry, q_delta + q * delta_t[:, None, :], outs

        carry0 = tf.zeros([tile, d_state, d_inner], dtype)
        _, _, q_delta, outs = tf.while_loop(lambda i, *_: i < length, adjoint, (0, carry0, q_delta, outs))
        return k + 1, states, q_delta, outs

    n_tiles = (rows + tile - 1) // tile
    q_delta0 = tf.zeros([tile, d_state, d_inner], dtype)  # sum of q_t Δ_t over steps and tiles, per row of a tile
    _, _, q_delta, outs = tf.while_loop(lambda k, *_: k < n_tiles, tile_body, (0, states, q_delta0, outputs))
    per_step = {name: _from_tiles(outs[name], tile, n) for name, n in widths.items()}
    u = seq["u"]
    d_delta = per_step["d_delta"] + per_step["dx"] * u  # x = Δ u
    if options.delta_softplus:
        d_delta *= tf.sigmoid(seq["delta"])
    grads = (
        per_step["dx"] * delta + dy * d,
        d_delta,
        per_step["db"],
        per_step["dc"],
        tf.reduce_sum(q_delta, axis=0),
        tf.reduce_sum(dy * u, axis=[0, 1]),
    )
    if not options.gated:
        return grads
    z_sigmoid = tf.sigmoid(seq["z"])
    d_silu = z_sigmoid * (1 + seq["z"] * (1 - z_sigmoid))
    return (*grads, seq["dy"] * (per_step["y"] + u * d) * d_silu)


__all__ = [
    "BLOCK",
    "TILE",
    "padded_length",
    "selective_scan",
    "static_length_ladder",
]
