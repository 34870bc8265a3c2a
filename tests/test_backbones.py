"""Backbone contract tests, parametrised over every registered backbone, plus the pieces each one relies on.

Contract: left-padded ids `(batch, L)` -> states `(batch, L, dim)`; causal; 0 at padded positions; the same history
padded to a different length gives the same states; the registry and option errors are clear; and each backbone
learns a simple sequential pattern clearly better than popularity.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import mdcns_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS; conftest imports it before TensorFlow)
from mdcns_tf.backbones import BACKBONES, backbone_options, build_backbone, get_backbone_class
from mdcns_tf.backbones.fmlprec import causal_fft_convolution
from mdcns_tf.backbones.linrec import causal_linear_attention
from mdcns_tf.backbones.reference_scans import linear_recurrence_scan
from mdcns_tf.backbones.selective_scan import static_length_ladder
from mdcns_tf.config import ModelConfig

NAMES = sorted(BACKBONES)
# The contract tests also cover the options that change a backbone's architecture ("name/variant").
CONTRACT = [*NAMES, "sasrec/s3rec"]
# Tolerance relative to the states' scale (GRU4Rec's states are ~1e-4 at init, the others ~1): FFT round-off lets
# a later item move an earlier FMLP-Rec state by ~1e-7 of the scale; a real leak is of the order of the scale.
RTOL = 1e-5


def assert_same_states(actual: np.ndarray, expected: np.ndarray, err_msg: str = "") -> None:
    np.testing.assert_allclose(actual, expected, rtol=0, atol=RTOL * np.abs(expected).max(), err_msg=err_msg)


def make_backbone(name: str, n_items: int = 40, max_len: int = 16, dim: int = 16, dropout: float = 0.2, seed: int = 0):
    keras.utils.set_random_seed(seed)
    name, _, variant = name.partition("/")
    options = backbone_options(name, {"variant": variant} if variant else None)
    return get_backbone_class(name)(
        n_items=n_items,
        max_len=max_len,
        dim=dim,
        num_layers=2,
        num_heads=2,
        dropout=dropout,
        options=options,
        name=name,
    )


def left_padded_ids(rng: np.random.Generator, lengths: list[int], seq_len: int, n_items: int) -> np.ndarray:
    ids = np.zeros((len(lengths), seq_len), np.int32)
    for row, length in enumerate(lengths):
        ids[row, seq_len - length :] = rng.integers(1, n_items + 1, length)
    return ids


# ---------------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", CONTRACT)
def test_shapes_and_zero_padded_states(name: str) -> None:
    model = make_backbone(name)
    ids = left_padded_ids(np.random.default_rng(1), [12, 5, 1, 0], 12, 40)
    states = model(tf.constant(ids), training=False).numpy()
    assert states.shape == (4, 12, 16)
    assert np.all(np.isfinite(states))
    assert np.all(states[ids == 0] == 0.0), "padded positions must have exactly zero states"
    assert np.all(np.abs(states[ids != 0]).sum(-1) > 0)
    # Also in training mode (dropout on): padding stays zero.
    assert np.all(model(tf.constant(ids), training=True).numpy()[ids == 0] == 0.0)


@pytest.mark.parametrize("name", CONTRACT)
def test_causal(name: str) -> None:
    """Changing the items from position t on never changes a state before t (dropout off)."""
    model = make_backbone(name)
    rng = np.random.default_rng(2)
    ids = left_padded_ids(rng, [12, 9, 4], 12, 40)
    base = model(tf.constant(ids)).numpy()
    for t in (3, 8, 11):
        changed = ids.copy()
        changed[:, t:] = rng.integers(1, 41, (3, 12 - t))
        states = model(tf.constant(changed)).numpy()
        assert_same_states(states[:, :t], base[:, :t], err_msg=f"{name}: position {t} leaked")
        assert np.abs(states[:, t:] - base[:, t:]).max() > 1e-2 * np.abs(base).max(), "the change must reach later"


@pytest.mark.parametrize("name", CONTRACT)
def test_left_padding_invariant(name: str) -> None:
    """The same histories padded to 10 or to 16 slots give the same states at the real positions."""
    model = make_backbone(name)
    ids = left_padded_ids(np.random.default_rng(3), [10, 6, 2], 10, 40)
    short = model(tf.constant(ids)).numpy()
    longer = model(tf.constant(np.pad(ids, [[0, 0], [6, 0]]))).numpy()
    assert_same_states(longer[:, 6:], short)
    assert np.all(longer[:, :6] == 0.0)


@pytest.mark.parametrize("name", CONTRACT)
def test_xla_forward_matches_eager(name: str) -> None:
    model = make_backbone(name)
    ids = tf.constant(left_padded_ids(np.random.default_rng(4), [16, 7], 16, 40))
    eager = model(ids).numpy()
    compiled = tf.function(lambda x: model(x, training=False), jit_compile=True)(ids).numpy()
    assert_same_states(compiled, eager)


@pytest.mark.parametrize("name", CONTRACT)
def test_dynamic_length_signature(name: str) -> None:
    """A `tf.function` traced with an unknown length (as a serving signature may be) gives the eager states."""
    model = make_backbone(name)
    ids = left_padded_ids(np.random.default_rng(5), [9, 3], 9, 40)
    fn = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec([None, None], tf.int32)])
    assert_same_states(fn(tf.constant(ids)).numpy(), model(tf.constant(ids)).numpy())


@pytest.mark.parametrize("name", CONTRACT)
def test_every_weight_gets_a_gradient(name: str) -> None:
    model = make_backbone(name)
    ids = tf.constant(left_padded_ids(np.random.default_rng(6), [16, 8], 16, 40))
    with tf.GradientTape() as tape:
        states = model(ids, training=True)
        loss = tf.reduce_sum(tf.matmul(states[:, -1], model.item_embeddings, transpose_b=True) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    missing = [v.name for v, g in zip(model.trainable_variables, grads, strict=True) if g is None]
    assert not missing, f"weights without gradient: {missing}"


# ---------------------------------------------------------------------------------------------------- registry


def test_unknown_backbone_error_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'transformer4rec'") as info:
        get_backbone_class("transformer4rec")
    for name in NAMES:
        assert repr(name) in str(info.value)


def test_registry_has_the_five_backbones() -> None:
    assert set(NAMES) == {"sasrec", "gru4rec", "fmlprec", "linrec", "mamba4rec"}


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_rejected(name: str) -> None:
    with pytest.raises(ValueError, match=rf"model\.options\.{name}: unknown option\(s\) \['no_such_option'\]"):
        backbone_options(name, {"no_such_option": 1})
    assert backbone_options(name, None) == get_backbone_class(name).Options()


@pytest.mark.parametrize(
    ("name", "block"),
    [
        ("gru4rec", {"hidden_size": 0}),
        ("gru4rec", {"projection_init": "xavier"}),
        ("fmlprec", {"hidden_act": "no_such_activation"}),
        ("linrec", {"causal_mode": "full"}),
        ("mamba4rec", {"d_state": 0}),
        ("mamba4rec", {"dt_init": "s4"}),
        ("sasrec", {"variant": "bert4rec"}),
        ("sasrec", {"ffn_multiplier": -1}),
    ],
)
def test_bad_option_values_rejected(name: str, block: dict) -> None:
    with pytest.raises(ValueError):
        backbone_options(name, block)


def test_gru4rec_uniform_fan_in_projection_starts_every_state_at_a_shared_bias() -> None:
    # PyTorch's nn.Linear default, U(+-1/sqrt(fan_in)) for kernel and bias: with hidden 64 the bias entries lie in
    # +-1/8 with std 1/8/sqrt(3) ~ .072, and at initialisation the GRU's output is tiny, so every state is ~ the bias
    # (the authors' peer scores items by bias . e(item) from the first step); the default starts states near 0.
    ids = tf.constant([[0, 0, 3, 5, 7], [1, 2, 4, 6, 8]])
    states = {}
    for init in ("normal", "uniform_fan_in"):
        tf.random.set_seed(0)
        config = ModelConfig(
            backbone="gru4rec", dim=32, options={"gru4rec": {"hidden_size": 64, "projection_init": init}}
        )
        model = build_backbone(config, n_items=20, max_len=5)
        states[init] = model(ids).numpy()[:, -1]
        bias = model.projection.bias.numpy()
        if init == "normal":
            assert not bias.any()
        else:
            assert np.abs(bias).max() <= 1 / 8 and 0.05 < bias.std() < 0.1
            np.testing.assert_allclose(states[init], np.broadcast_to(bias, states[init].shape), atol=0.02)
    assert (
        np.linalg.norm(states["uniform_fan_in"], axis=-1).min() > 20 * np.linalg.norm(states["normal"], axis=-1).max()
    )


def test_build_backbone_passes_options() -> None:
    config = ModelConfig(backbone="mamba4rec", dim=16, options={"mamba4rec": {"d_state": 8, "expand": 1}})
    model = build_backbone(config, n_items=20, max_len=8)
    assert dataclasses.asdict(model.options)["d_state"] == 8
    model(tf.ones((2, 8), tf.int32))
    assert model.mamba_layers[0].mixer.a_log.shape == (16, 8)


def test_sequence_longer_than_max_len_is_rejected() -> None:
    model = make_backbone("fmlprec", max_len=8)
    with pytest.raises(ValueError, match="exceeds the backbone's max_len 8"):
        model(tf.ones((1, 9), tf.int32))


# ---------------------------------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("length", [1, 2, 7, 16, 50])
def test_parallel_scan_matches_loop(length: int) -> None:
    rng = np.random.default_rng(length)
    a = rng.uniform(0.0, 1.0, (2, length, 3, 4)).astype(np.float32)
    b = rng.normal(size=(2, length, 3, 4)).astype(np.float32)
    state, expected = np.zeros((2, 3, 4), np.float32), []
    for t in range(length):
        state = a[:, t] * state + b[:, t]
        expected.append(state)
    np.testing.assert_allclose(linear_recurrence_scan(tf.constant(a), tf.constant(b)), np.stack(expected, 1), atol=1e-5)
    dynamic = tf.function(lambda x, y: linear_recurrence_scan(x, y, max_len=50), reduce_retracing=True)
    spec = tf.TensorSpec([None, None, 3, 4], tf.float32)
    got = dynamic.get_concrete_function(spec, spec)(tf.constant(a), tf.constant(b))
    np.testing.assert_allclose(got, np.stack(expected, 1), atol=1e-5)


def test_parallel_scan_gradient_matches_loop() -> None:
    """The hand-written adjoint of the scan equals autodiff through a step-by-step reference."""
    rng = np.random.default_rng(0)
    a = tf.constant(rng.uniform(0.0, 1.0, (2, 11, 3, 4)).astype(np.float32))
    b = tf.constant(rng.normal(size=(2, 11, 3, 4)).astype(np.float32))
    weight = tf.constant(rng.normal(size=(2, 11, 3, 4)).astype(np.float32))

    def loop(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        state, states = tf.zeros_like(b[:, 0]), []
        for t in range(11):
            state = a[:, t] * state + b[:, t]
            states.append(state)
        return tf.stack(states, axis=1)

    def loss_and_grads(scan: Any, a: tf.Tensor, b: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            loss = tf.reduce_sum(scan(a, b) * weight)
        return tape.gradient(loss, [a, b])

    expected = loss_and_grads(loop, a, b)
    # The dynamic-length path (length-bucketed batches) pads to a ladder length inside a tf.switch_case branch.
    spec = tf.TensorSpec([None, None, 3, 4], tf.float32)
    dynamic = tf.function(lambda x, y: loss_and_grads(lambda p, q: linear_recurrence_scan(p, q, max_len=50), x, y))
    for got_grads in (loss_and_grads(linear_recurrence_scan, a, b), dynamic.get_concrete_function(spec, spec)(a, b)):
        for got, want in zip(got_grads, expected, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5)


def test_static_length_ladder() -> None:
    """Dynamic lengths are padded by at most 1.5x (beyond 8) and never beyond max_len."""
    assert static_length_ladder(50) == [8, 12, 16, 24, 32, 48, 50]
    assert static_length_ladder(8) == [8]
    assert static_length_ladder(200)[-3:] == [128, 192, 200]


def test_causal_fft_convolution_matches_direct_sum() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 3)).astype(np.float32)
    kernel = rng.normal(size=(3, 12)).astype(np.float32)  # longer than the sequence, as when seq_len < max_len
    expected = np.zeros_like(x)
    for t in range(9):
        for s in range(t + 1):
            expected[:, t] += kernel[:, s] * x[:, t - s]
    np.testing.assert_allclose(causal_fft_convolution(tf.constant(x), tf.constant(kernel)), expected, atol=1e-4)


def test_fmlp_kernel_is_the_papers_circular_filter() -> None:
    """irfft(W) is the kernel the paper's ortho rfft -> * W -> irfft filter circularly convolves with."""
    model = make_backbone("fmlprec", max_len=8)
    model(tf.ones((1, 8), tf.int32))
    layer = model.filters[0]
    weight = layer.complex_weight.numpy()
    x = np.random.default_rng(0).normal(size=(8, 16))
    paper = np.fft.irfft(np.fft.rfft(x, axis=0, norm="ortho") * (weight[..., 0] + 1j * weight[..., 1]), 8, 0, "ortho")
    kernel = layer.kernel().numpy()  # (dim, max_len)
    circular = np.stack([sum(kernel[:, s] * x[(t - s) % 8] for s in range(8)) for t in range(8)])
    np.testing.assert_allclose(circular, paper, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 32])
def test_linrec_causal_modes_agree(chunk_size: int) -> None:
    rng = np.random.default_rng(chunk_size)
    q, k, v = (tf.constant(rng.normal(size=(2, 7, 2, 4)).astype(np.float32)) for _ in range(3))
    masked = causal_linear_attention(q, k, v, "masked")
    np.testing.assert_allclose(causal_linear_attention(q, k, v, "cumsum"), masked, atol=1e-5)
    np.testing.assert_allclose(causal_linear_attention(q, k, v, "chunked", chunk_size), masked, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- learning

N_ITEMS, SEQ_LEN = 50, 12


def synthetic_sequences(rng: np.random.Generator, successor: np.ndarray, popularity: np.ndarray, n: int) -> np.ndarray:
    """Left-padded `(n, SEQ_LEN + 1)` walks: the next item is ``successor[item]`` with prob 0.85, otherwise a draw
    from the skewed ``popularity`` (which also picks the start); lengths 3 .. SEQ_LEN + 1."""
    seqs = np.zeros((n, SEQ_LEN + 1), np.int32)
    for row in range(n):
        length = rng.integers(3, SEQ_LEN + 2)
        walk = [rng.choice(N_ITEMS, p=popularity) + 1]
        for _ in range(length - 1):
            noise = rng.random() < 0.15
            walk.append(rng.choice(N_ITEMS, p=popularity) + 1 if noise else successor[walk[-1]])
        seqs[row, SEQ_LEN + 1 - length :] = walk
    return seqs


def hit_rate_at_10(scores: np.ndarray, targets: np.ndarray) -> float:
    scores = scores.copy()
    scores[:, 0] = -np.inf  # the padding item is never recommended
    top = np.argsort(-scores, axis=1)[:, :10]
    return float(np.mean(np.any(top == targets[:, None], axis=1)))


@pytest.fixture(scope="module")
def synthetic_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    order = rng.permutation(N_ITEMS) + 1  # one 50-cycle over the items
    successor = np.zeros(N_ITEMS + 1, np.int32)
    successor[order] = np.roll(order, -1)
    popularity = 1.0 / np.arange(1, N_ITEMS + 1) ** 0.8
    popularity = rng.permutation(popularity / popularity.sum())
    train = synthetic_sequences(rng, successor, popularity, 2000)
    test = synthetic_sequences(rng, successor, popularity, 500)
    counts = np.bincount(train[:, 1:][train[:, 1:] > 0], minlength=N_ITEMS + 1).astype(np.float64)
    pop_hr = hit_rate_at_10(np.tile(counts, (len(test), 1)), test[:, -1])
    return {"train": train, "test": test, "pop_hr": np.float64(pop_hr)}


@pytest.mark.parametrize("name", CONTRACT)
def test_learns_sequential_pattern(name: str, synthetic_data: dict[str, np.ndarray]) -> None:
    """A few hundred full-softmax steps beat popularity's HR@10 on held-out sequences by at least 2x."""
    train, test, pop_hr = synthetic_data["train"], synthetic_data["test"], float(synthetic_data["pop_hr"])
    model = make_backbone(name, n_items=N_ITEMS, max_len=SEQ_LEN, dim=32, dropout=0.1, seed=7)
    optimizer = keras.optimizers.Adam(3e-3)

    @tf.function
    def train_step(batch: tf.Tensor) -> tf.Tensor:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        with tf.GradientTape() as tape:
            states = model(inputs, training=True)
            logits = tf.einsum("bld,nd->bln", states, model.item_embeddings)
            logits = tf.concat([tf.fill(tf.shape(logits[..., :1]), -1e9), logits[..., 1:]], axis=-1)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
            # Only positions with a real input and a real target are trained.
            weight = tf.cast((inputs > 0) & (targets > 0), tf.float32)
            loss = tf.reduce_sum(ce * weight) / tf.reduce_sum(weight)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    rng = np.random.default_rng(0)
    for _ in range(200):
        train_step(tf.constant(train[rng.integers(0, len(train), 64)]))
    states = model(tf.constant(test[:, :-1]), training=False)[:, -1]
    scores = tf.matmul(states, model.item_embeddings, transpose_b=True).numpy()
    hr = hit_rate_at_10(scores, test[:, -1])
    assert hr >= 2 * pop_hr, f"{name}: HR@10 {hr:.3f} vs popularity {pop_hr:.3f}"
