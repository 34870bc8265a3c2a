"""The fused selective scan (`mdcns_tf.backbones.selective_scan`) against a step-by-step reference, and Mamba4Rec
against its previous implementation (shifted multiply-add conv, materialised odd-even scan)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import mdcns_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS; conftest imports it before TensorFlow)
from mdcns_tf.backbones import selective_scan as ss
from mdcns_tf.backbones.mamba4rec import Mamba4Rec, MambaMixer
from mdcns_tf.backbones.reference_scans import linear_recurrence_scan, odd_even_selective_scan, selective_scan_reference
from mdcns_tf.backbones.selective_scan import padded_length, selective_scan

D_INNER, D_STATE = 6, 4
NAMES = ("u", "delta", "a", "b", "c", "d", "z")


def scan_inputs(batch: int, length: int, dtype: tf.DType, seed: int = 0, pad: list[int] | None = None) -> dict:
    """Random inputs as the Mamba block makes them: raw Δ for softplus, ``A < 0``; with ``pad[row]`` leading padded
    steps of a row, where the block zeroes u (its Δ stays softplus(bias), as in the model)."""
    rng = np.random.default_rng(seed)
    inputs = {
        "u": rng.normal(size=(batch, length, D_INNER)),
        "delta": rng.normal(size=(batch, length, D_INNER)),
        "a": -np.exp(rng.normal(size=(D_INNER, D_STATE))),
        "b": rng.normal(size=(batch, length, D_STATE)),
        "c": rng.normal(size=(batch, length, D_STATE)),
        "d": rng.normal(size=(D_INNER,)),
        "z": rng.normal(size=(batch, length, D_INNER)),
    }
    for row, n in enumerate(pad or []):
        inputs["u"][row, :n] = 0.0
    return {name: tf.constant(value, dtype) for name, value in inputs.items()}


def call(scan: Any, inputs: dict, full: bool, **kwargs: Any) -> tf.Tensor:
    """The full Mamba form (softplus Δ, D skip, gate) or the bare recurrence on a positive Δ."""
    if full:
        return scan(**inputs, delta_softplus=True, **kwargs)
    bare = {name: inputs[name] for name in ("u", "a", "b", "c")}
    return scan(delta=tf.nn.softplus(inputs["delta"]), **bare, **kwargs)


def value_and_grads(scan: Any, inputs: dict, full: bool, **kwargs: Any) -> list[tf.Tensor]:
    """[y, dL/d input for every input] with L = sum(y * w), w a fixed function of the inputs (works traced)."""
    names = NAMES if full else ("u", "delta", "a", "b", "c")
    weight = tf.cos(3.0 * inputs["z"] + 1.0)
    watched = [inputs[name] for name in names]
    with tf.GradientTape() as tape:
        tape.watch(watched)
        y = call(scan, {**inputs, **dict(zip(names, watched, strict=True))}, full, **kwargs)
        loss = tf.reduce_sum(y * weight)
    return [y, *tape.gradient(loss, watched)]


def assert_close(actual: list[tf.Tensor], expected: list[tf.Tensor], rtol: float) -> None:
    """Each tensor within ``rtol`` of the expected one's scale (gradients of an unused A are exactly 0)."""
    for i, (got, want) in enumerate(zip(actual, expected, strict=True)):
        scale = max(float(np.abs(want).max()), 1e-30)
        np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale, err_msg=f"output {i}")


# ---------------------------------------------------------------------------------------------------- fused scan


@pytest.mark.parametrize("full", [False, True], ids=["bare", "softplus+D+gate"])
@pytest.mark.parametrize("length", [1, 2, 7, 50])
def test_matches_sequential_scan_float64(length: int, full: bool) -> None:
    """Forward and every gradient equal the step-by-step loop; 70 rows = a full block of 64 plus a partial one,
    several rows left-padded."""
    inputs = scan_inputs(70, length, tf.float64, seed=length, pad=[length - 1, length // 2, 0, 1][: min(4, length)])
    expected = value_and_grads(selective_scan_reference, inputs, full)
    assert_close(value_and_grads(selective_scan, inputs, full, max_len=50), expected, rtol=1e-12)


@pytest.mark.parametrize("full", [False, True], ids=["bare", "softplus+D+gate"])
def test_matches_sequential_scan_float32(full: bool) -> None:
    inputs = scan_inputs(9, 50, tf.float32, seed=1)
    expected = value_and_grads(selective_scan_reference, inputs, full)
    assert_close(value_and_grads(selective_scan, inputs, full, max_len=50), expected, rtol=1e-5)


def test_left_padding_invariant() -> None:
    """A history left-padded (u = 0, as the block masks it) gives, at its real steps, the unpadded history's
    outputs, and its padded steps get no gradient through u."""
    short = scan_inputs(3, 7, tf.float64, seed=2)
    padded = {name: tf.pad(t, [[0, 0], [5, 0], [0, 0]]) if t.shape.rank == 3 else t for name, t in short.items()}
    y_short = call(selective_scan, short, full=True)
    y_padded = call(selective_scan, padded, full=True)
    np.testing.assert_allclose(y_padded[:, 5:], y_short, rtol=0, atol=1e-12)
    np.testing.assert_allclose(y_padded[:, :5], 0.0, atol=0)


@pytest.mark.parametrize(
    ("batch", "length"), [(None, None), (None, 9), (70, None)], ids=["both unknown", "batch unknown", "length unknown"]
)
def test_dynamic_shapes(batch: int | None, length: int | None) -> None:
    """Traced with an unknown batch and/or length (length-bucketed training, evaluation, serving), one concrete
    function gives the reference results at every size it is called with."""
    spec = {
        name: tf.TensorSpec([batch, length, t.shape[-1]] if t.shape.rank == 3 else t.shape, tf.float64)
        for name, t in scan_inputs(1, 1, tf.float64).items()
    }
    traced = tf.function(lambda inputs: value_and_grads(selective_scan, inputs, True, max_len=50))
    concrete = traced.get_concrete_function(spec)
    for rows, steps in [(3, 9), (70, 50), (1, 1), (65, 9)]:
        inputs = scan_inputs(batch or rows, length or steps, tf.float64, seed=rows)
        assert_close(concrete(inputs), value_and_grads(selective_scan_reference, inputs, True), rtol=1e-12)


def test_under_xla() -> None:
    """Inside a model compiled whole with ``jit_compile=True`` the kernels are inlined."""
    inputs = scan_inputs(5, 12, tf.float64, seed=3)
    compiled = tf.function(lambda inputs: value_and_grads(selective_scan, inputs, True), jit_compile=True)
    assert_close(compiled(inputs), value_and_grads(selective_scan_reference, inputs, True), rtol=1e-12)


def test_lengths_share_compiled_kernels() -> None:
    """Lengths 9..12 are padded to the same ladder length (12): one trace, one XLA compilation for all of them."""
    before = ss._forward_block.experimental_get_tracing_count()
    for length in (9, 10, 11, 12):
        selective_scan(**scan_inputs(2, length, tf.float32, seed=length), max_len=50)
    assert ss._forward_block.experimental_get_tracing_count() - before == 1


def test_padded_length() -> None:
    lengths = tf.constant([1, 8, 9, 12, 13, 49, 50, 51, 200])
    dynamic = [int(padded_length(n, 50)) for n in lengths]
    assert dynamic == [8, 8, 12, 12, 16, 50, 50, 64, 256]
    assert [padded_length(int(n), 50) for n in lengths] == dynamic  # the static (Python) path agrees
    assert padded_length(50, None) == 64


def test_old_scan_matches_fused_scan() -> None:
    """The previous materialised odd-even scan (kept as `odd_even_selective_scan`) computes the same function."""
    inputs = scan_inputs(4, 11, tf.float64, seed=4)
    expected = value_and_grads(selective_scan_reference, inputs, True)
    assert_close(value_and_grads(odd_even_selective_scan, inputs, True), expected, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------- Mamba4Rec


def make_mamba(max_len: int) -> Mamba4Rec:
    keras.utils.set_random_seed(0)
    return Mamba4Rec(n_items=40, max_len=max_len, dim=16, num_layers=2, num_heads=2, dropout=0.2, name="mamba4rec")


def left_padded_ids(rng: np.random.Generator, lengths: list[int], seq_len: int, n_items: int) -> np.ndarray:
    ids = np.zeros((len(lengths), seq_len), np.int32)
    for row, length in enumerate(lengths):
        ids[row, seq_len - length :] = rng.integers(1, n_items + 1, length)
    return ids


def previous_mixer_call(self: MambaMixer, x: tf.Tensor, padding: tf.Tensor) -> tf.Tensor:
    """`MambaMixer.call` as it was before the fused scan: d_conv shifted multiply-adds, then the decays, drives and
    states materialised and scanned by `linear_recurrence_scan`."""
    u, gate = tf.split(self.in_proj(x), 2, axis=-1)
    seq_len = tf.shape(u)[1]
    padded = tf.pad(u, [[0, 0], [self.d_conv - 1, 0], [0, 0]])
    conv = self.conv_bias
    for k in range(self.d_conv):
        conv = conv + padded[:, k : k + seq_len] * self.conv_kernel[k]
    u = tf.nn.silu(conv) * padding
    dt, b_in, c_out = tf.split(self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], axis=-1)
    delta = tf.nn.softplus(self.dt_proj(dt))
    a = -tf.exp(self.a_log)
    decay = tf.exp(delta[..., tf.newaxis] * a)
    drive = (delta * u)[..., tf.newaxis] * b_in[:, :, tf.newaxis, :]
    states = linear_recurrence_scan(decay, drive, self.max_len)
    y = tf.einsum("bldn,bln->bld", states, c_out) + u * self.d_skip
    return self.out_proj(y * tf.nn.silu(gate))


def states_and_grads(model: Any, ids: tf.Tensor) -> list[np.ndarray]:
    with tf.GradientTape() as tape:
        states = model(ids, training=False)
        loss = tf.reduce_sum(tf.matmul(states[:, -1], model.item_embeddings, transpose_b=True) ** 2)
    return [states.numpy(), *(g.numpy() for g in tape.gradient(loss, model.trainable_variables))]


@pytest.mark.parametrize("seq_len", [12, 16])
def test_mamba4rec_unchanged(seq_len: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """States and every weight's gradient equal the previous implementation's within 1e-5 of their scale
    (left-padded rows; 12 is off the ladder's powers of two, 16 on them)."""
    model = make_mamba(max_len=16)
    ids = tf.constant(left_padded_ids(np.random.default_rng(seq_len), [seq_len, 9, 3, 1], seq_len, 40))
    fused = states_and_grads(model, ids)
    monkeypatch.setattr(MambaMixer, "call", previous_mixer_call)
    assert_close(fused, states_and_grads(model, ids), rtol=1e-5)


@pytest.mark.parametrize(
    ("avx512", "before", "after"),
    [
        (True, None, "--xla_cpu_prefer_vector_width=512"),
        (True, "--xla_dump_to=/tmp/x", "--xla_dump_to=/tmp/x --xla_cpu_prefer_vector_width=512"),
        (True, "--xla_cpu_prefer_vector_width=256", "--xla_cpu_prefer_vector_width=256"),  # the user's choice wins
        (False, None, None),
    ],
)
def test_wide_vectors_are_asked_for_only_on_avx512_and_never_over_the_users_flags(
    monkeypatch: pytest.MonkeyPatch, avx512: bool, before: str | None, after: str | None
) -> None:
    monkeypatch.setattr(ss, "cpu_has_avx512", lambda: avx512)
    environ = {} if before is None else {"XLA_FLAGS": before}
    assert ss.prefer_wide_vectors(environ) == (after is not None and after != before)
    assert environ.get("XLA_FLAGS") == after
