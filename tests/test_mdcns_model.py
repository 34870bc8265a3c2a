"""MDCNS on hand-made tensors: pool, top-M, teacher, KL, gradient paths, submodel updates, export contents."""

from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from conftest import training_batch

import mdcns_tf  # noqa: F401
from mdcns_tf import losses
from mdcns_tf.backbones import BACKBONES
from mdcns_tf.batch import EXCLUSION_IDS, INPUT_IDS, TARGET_IDS
from mdcns_tf.config_loader import load_config
from mdcns_tf.features import Metadata
from mdcns_tf.samplers.candidates import sample_excluding, sample_position_pools, top_m_uniform_pick
from mdcns_tf.savedmodel.publish import export_saved_model
from mdcns_tf.training.mdcns_model import ConsensusTeacher, build_mdcns_model, positive_and_pool_scores

N_ITEMS, MAX_LEN = 40, 8
PEER = "gru4rec" if "gru4rec" in BACKBONES else "sasrec"


def tiny_metadata() -> Metadata:
    return Metadata(1, 10, N_ITEMS, [1] * (N_ITEMS + 1), {}, {}, {})


def tiny_model(*overrides: str):
    config = load_config(
        None,
        [
            "trainer=mdcns",
            f"mdcns.peer_backbone={PEER}",
            "mdcns.pool_size=10",
            "model.dim=16",
            "model.dropout=0.0",
            f"data.max_len={MAX_LEN}",
            *overrides,
        ],
    )
    model = build_mdcns_model(config, tiny_metadata())
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    model.build_for_input(MAX_LEN)
    return model, config


def tiny_batch() -> dict[str, tf.Tensor]:
    return training_batch(N_ITEMS, MAX_LEN)


def test_pool_never_contains_history_or_target():
    generator = tf.random.Generator.from_seed(0)
    exclusions = tf.constant([[1, 2, 3, 4, 5, 6, 7, 0], [8, 9, 10, 11, 12, 13, 14, 15]])
    pool = sample_excluding(generator, exclusions, n_items=20, num_samples=500).numpy()
    assert pool.min() >= 1 and pool.max() <= 20
    for row, excluded in zip(pool, exclusions.numpy(), strict=True):
        assert not set(row.tolist()) & set(excluded.tolist())
        assert len(set(row.tolist())) == 20 - len(set(excluded.tolist()) - {0})  # every allowed item is reachable


def test_position_pools_are_fresh_per_position_and_exclude_the_sequence():
    generator = tf.random.Generator.from_seed(0)
    exclusions = tf.constant([[1, 2, 3, 0], [4, 5, 6, 7]])
    pools = sample_position_pools(generator, exclusions, n_items=1000, seq_len=tf.constant(3), pool_size=50).numpy()
    assert pools.shape == (2, 3, 50)
    for sequence_pools, excluded in zip(pools, exclusions.numpy(), strict=True):
        assert not set(sequence_pools.ravel().tolist()) & set(excluded.tolist())
        # Three independent draws of 50 from ~1,000 items: equal pools would mean one pool shared by the positions.
        assert len({tuple(pool) for pool in sequence_pools.tolist()}) == 3


def test_position_pool_scores_are_each_positions_own_dot_products():
    states = tf.constant([[[1.0, 0.0], [0.0, 2.0]]])  # (1, 2, 2)
    table = tf.constant([[0.0, 0.0], [1.0, 1.0], [3.0, -1.0], [-2.0, 5.0]])
    targets = tf.constant([[1, 3]])
    pools = tf.constant([[[2, 3], [3, 2]]])  # position 0 sees items 2, 3; position 1 sees 3, 2
    scores = positive_and_pool_scores(states, table, targets, pools).numpy()
    # position 0: state (1, 0) -> target 1: 1, item 2: 3, item 3: -2; position 1: (0, 2) -> 10, item 3: 10, item 2: -2
    np.testing.assert_allclose(scores, [[[1.0, 3.0, -2.0], [10.0, 10.0, -2.0]]])


def test_top_m_picks_exactly_the_expected_indices():
    generator = tf.random.Generator.from_seed(0)
    scores = tf.constant([[[0.1, 0.9, 0.3, 0.8, 0.2]]])  # (batch 1, len 1, N 5)
    assert top_m_uniform_pick(generator, scores, m=1).numpy().ravel().tolist() == [1]
    picks = top_m_uniform_pick(generator, scores, m=2, num_picks=400).numpy().ravel()
    assert set(picks.tolist()) == {1, 3}
    assert 150 < (picks == 1).sum() < 250  # uniform among the top 2


def test_divergence_reranking_moves_the_pick_toward_disagreement():
    model, _ = tiny_model("mdcns.beta_d=10.0")
    self_pool = tf.constant([[[1.0, 0.9, 0.0]]])
    peer_pool = tf.constant([[[1.0, -0.9, 0.0]]])  # item 1: self 0.9 vs peer -0.9 -> divergence 1.8
    views = model.view_negatives(self_pool, peer_pool, 0.5 * (self_pool + peer_pool))
    assert {view: int(p.numpy().ravel()[0]) for view, p in views["picks"].items()} == {
        "self": 1,
        "peer": 1,
        "teacher": 1,
    }
    model.params.no_divergence = True
    views = model.view_negatives(self_pool, peer_pool, 0.5 * (self_pool + peer_pool))
    assert int(views["picks"]["peer"].numpy().ravel()[0]) == 0  # without divergence the peer picks its own max


def test_teacher_equals_the_consensus():
    a, b = tf.constant([1.0, -2.0]), tf.constant([3.0, 4.0])
    np.testing.assert_allclose(ConsensusTeacher("mean")(a, b).numpy(), [2.0, 1.0])
    np.testing.assert_allclose(ConsensusTeacher("sum")(a, b).numpy(), [4.0, 2.0])


def test_kl_distillation_by_hand():
    logits = tf.constant([[0.3, -1.0, 2.0]])
    assert abs(float(losses.kl_distillation(logits, logits, tau=2.0)[0])) < 1e-6
    teacher, student, tau = np.array([1.0, 0.0]), np.array([0.0, 1.0]), 2.0
    p = np.exp(teacher / tau) / np.exp(teacher / tau).sum()
    q = np.exp(student / tau) / np.exp(student / tau).sum()
    expected = tau**2 * float((p * np.log(p / q)).sum())
    got = float(losses.kl_distillation(tf.constant([teacher]), tf.constant([student]), tau)[0])
    assert math.isclose(got, expected, rel_tol=1e-5)


def test_no_gradient_flows_from_the_self_loss_into_the_peer():
    model, _ = tiny_model()
    with tf.GradientTape() as tape:
        terms = model.compute_losses(tiny_batch())
    # The self loss uses negatives picked by the peer's and the teacher's views and the divergence: all of
    # them are stop-gradient, so the peer receives nothing from it.
    gradients = tape.gradient(terms["self_loss"], model.peer.trainable_variables)
    assert all(g is None or float(tf.reduce_max(tf.abs(tf.convert_to_tensor(g)))) == 0.0 for g in gradients)


def test_a_step_updates_both_students():
    model, _ = tiny_model()
    before_self = [v.numpy().copy() for v in model.encoder.trainable_variables]
    before_peer = [v.numpy().copy() for v in model.peer.trainable_variables]
    logs = model.train_step(tiny_batch())
    assert {"self_loss", "peer_loss", "distill_kl", "divergence", "view_agreement"} <= set(logs)
    assert any(
        not np.allclose(b, v.numpy()) for b, v in zip(before_self, model.encoder.trainable_variables, strict=True)
    )
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(before_peer, model.peer.trainable_variables, strict=True))


def test_a_step_with_a_pool_per_position_trains_both_students():
    model, _ = tiny_model("mdcns.pool_scope=position")
    before = [v.numpy().copy() for v in model.peer.trainable_variables]
    logs = model.train_step(tiny_batch())
    assert np.isfinite(float(logs["loss"]))
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(before, model.peer.trainable_variables, strict=True))


def test_pools_per_position_are_drawn_for_trained_positions_only(monkeypatch):
    # Left padding: rows with 0, 2, 5 and 7 padded items (8, 7, 4 and 2 trained targets at MAX_LEN 8). Only the
    # P trained positions get a pool, each outside its own sequence.
    from mdcns_tf.training import mdcns_model as mdcns_module

    model, _ = tiny_model("mdcns.pool_scope=position")
    batch = tiny_batch()
    padding = np.zeros([4, MAX_LEN + 1], bool)
    for row, pad in enumerate([0, 2, 5, MAX_LEN - 1]):
        padding[row, :pad] = True
    sequences = np.concatenate([batch[INPUT_IDS].numpy(), batch[TARGET_IDS].numpy()[:, -1:]], axis=1)
    sequences[padding] = 0
    batch = {
        **batch,
        INPUT_IDS: tf.constant(sequences[:, :-1]),
        TARGET_IDS: tf.constant(sequences[:, 1:]),
        EXCLUSION_IDS: tf.constant(sequences),
    }
    drawn = []
    original = mdcns_module.sample_excluding
    monkeypatch.setattr(
        mdcns_module, "sample_excluding", lambda *a, **k: drawn.append((a[1], original(*a, **k))) or drawn[-1][1]
    )
    terms = model.compute_losses(batch, training=False)
    ((exclusions, pools),) = drawn
    trained_rows = np.nonzero(sequences[:, 1:])[0]
    assert pools.shape == (len(trained_rows), 10) and len(trained_rows) == 8 + 7 + 4 + 2
    for row, exclusion, pool in zip(trained_rows, exclusions.numpy(), pools.numpy(), strict=True):
        np.testing.assert_array_equal(exclusion, sequences[row])
        assert not set(pool.tolist()) & set(sequences[row].tolist())
    assert all(np.isfinite(float(terms[name])) for name in ("loss", "self_loss", "peer_loss", "distill_kl"))


def test_frozen_teacher_does_not_change(tmp_path):
    # A "pre-trained" single model: its encoder checkpoint is what a frozen teacher loads.
    source, _ = tiny_model()
    path = os.path.join(tmp_path, "weights")
    source.save_weights(path)
    model, _ = tiny_model("mdcns.teacher=frozen", f"mdcns.teacher_checkpoint={path}")
    teacher_weights = [v.numpy().copy() for v in model.teacher.backbone.weights]
    np.testing.assert_allclose(teacher_weights[0], source.encoder.weights[0].numpy())
    model.train_step(tiny_batch())
    for before, after in zip(teacher_weights, model.teacher.backbone.weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())


def test_ema_teacher_follows_the_self_model():
    model, _ = tiny_model("mdcns.teacher=ema", "mdcns.teacher_ema_decay=0.5")
    model.train_step(tiny_batch())
    table = model.teacher.backbone.item_embeddings.numpy()
    assert not np.allclose(table, model.encoder.item_embeddings.numpy())  # a lagging average, not a copy


@pytest.mark.parametrize("ablation", ["mdcns.no_distillation=true", "mdcns.self_view_only=true"])
def test_ablations_train(ablation):
    model, _ = tiny_model(ablation)
    logs = model.train_step(tiny_batch())
    if "distillation" in ablation:
        assert float(logs["distill_kl"]) == 0.0
    assert np.isfinite(float(logs["loss"]))


def test_export_holds_only_self_variables(tmp_path):
    model, _ = tiny_model()
    model.train_step(tiny_batch())
    path = export_saved_model(model.encoder, str(tmp_path), "m", MAX_LEN, top_k=5)
    stored = tf.train.list_variables(os.path.join(path, "variables", "variables"))
    exported_sizes = sorted(int(np.prod(shape)) for name, shape in stored if "OBJECT_GRAPH" not in name and shape)
    self_sizes = Counter(int(np.prod(v.shape)) for v in model.encoder.variables)
    # Everything stored is the self encoder, plus at most a copy of its item table (minus padding) and the ids in
    # a brute-force index; every self variable is there.
    allowed = self_sizes + Counter([N_ITEMS * 16, N_ITEMS])
    assert not Counter(exported_sizes) - allowed
    assert not self_sizes - Counter(exported_sizes)
    peer_only = {int(np.prod(v.shape)) for v in model.peer.variables} - set(allowed)
    assert peer_only and not peer_only & set(exported_sizes)


def _student_loss(loss: str, *overrides: str) -> tuple[np.ndarray, dict]:
    """One position: [positive, pool of 3] scores, picks own = 0, other = 2, teacher = 1."""
    model, config = tiny_model(f"loss.name={loss}", "mdcns.alpha=1.0", "mdcns.beta=0.5", "mdcns.gamma=2.0", *overrides)
    scores = tf.constant([[[1.0, 0.3, -0.4, 2.0]]])
    pick = lambda i: tf.constant([[i]])  # noqa: E731
    return model.student_loss(scores, pick(0), pick(2), pick(1)).numpy(), {"n_items": N_ITEMS, **vars(config.loss)}


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_pairwise_student_loss_weighs_each_view_pick_by_hand():
    got, _ = _student_loss("bce")
    # own pick 0.3 (alpha 1), other pick 2.0 (beta .5), teacher pick -0.4 (gamma 2); positive 1.0
    bce = lambda s: softplus(-1.0) + softplus(s)  # noqa: E731
    np.testing.assert_allclose(got, [[1.0 * bce(0.3) + 0.5 * bce(2.0) + 2.0 * bce(-0.4)]], rtol=1e-6)


def test_pool_softmax_student_loss_counts_the_picks_weight_times_more():
    got, _ = _student_loss("sampled_softmax")
    partition = (
        math.exp(1.0)
        + math.exp(0.3)
        + math.exp(-0.4)
        + math.exp(2.0)
        + 1.0 * math.exp(0.3)
        + 0.5 * math.exp(2.0)
        + 2.0 * math.exp(-0.4)
    )
    np.testing.assert_allclose(got, [[math.log(partition) - 1.0]], rtol=1e-6)


def test_pool_gbce_student_loss_by_hand():
    got, loss = _student_loss("gbce")
    beta = losses.gbce_beta(3, N_ITEMS, loss["gbce_t"])
    pool = softplus(0.3) + softplus(-0.4) + softplus(2.0)
    # The paper's BCE on each pick, its own positive term included, weighted alpha 1 / beta .5 / gamma 2.
    picks = sum(w * (softplus(-1.0) + softplus(s)) for w, s in ((1.0, 0.3), (0.5, 2.0), (2.0, -0.4)))
    np.testing.assert_allclose(got, [[beta * softplus(-1.0) + pool + picks]], rtol=1e-6)


@pytest.mark.parametrize("loss", ["sampled_softmax", "gbce"])
def test_pool_losses_train_both_students(loss):
    model, _ = tiny_model(f"loss.name={loss}")
    before = [v.numpy().copy() for v in model.encoder.trainable_variables]
    logs = model.train_step(tiny_batch())
    assert np.isfinite(float(logs["loss"]))
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(before, model.encoder.trainable_variables, strict=True))


def test_pool_softmax_with_a_popularity_pool_subtracts_each_items_log_q_by_hand():
    model, _ = tiny_model("loss.name=sampled_softmax", "mdcns.alpha=1.0", "mdcns.beta=0.5", "mdcns.gamma=2.0")
    scores = tf.constant([[[1.0, 0.3, -0.4, 2.0]]])
    logq = tf.constant([[[-1.0, -2.0, -3.0]]])  # log q of the three pool items
    pick = lambda i: tf.constant([[i]])  # noqa: E731
    got = model.student_loss(scores, pick(0), pick(2), pick(1), pool_logq=logq).numpy()
    pool = [0.3 + 1.0, -0.4 + 2.0, 2.0 + 3.0]  # corrected: s - log q
    # picks own 0 (alpha 1), other 2 (beta .5), teacher 1 (gamma 2): copies of the corrected scores
    partition = math.exp(1.0) + sum(math.exp(s) for s in pool)
    partition += 1.0 * math.exp(pool[0]) + 0.5 * math.exp(pool[2]) + 2.0 * math.exp(pool[1])
    np.testing.assert_allclose(got, [[math.log(partition) - 1.0]], rtol=1e-6)


def test_a_popularity_pool_draws_in_proportion_to_count_plus_one_and_trains():
    counts = [0] + [99] + [0] * (N_ITEMS - 1)  # item 1: 99 interactions, the rest none
    config = load_config(
        None,
        [
            "trainer=mdcns",
            f"mdcns.peer_backbone={PEER}",
            "mdcns.pool_size=10",
            "mdcns.pool_alpha=1.0",
            "loss.name=sampled_softmax",
            "model.dim=16",
            f"data.max_len={MAX_LEN}",
        ],
    )
    model = build_mdcns_model(config, Metadata(1, 10, N_ITEMS, counts, {}, {}, {}))
    # weights (count + 1)^1: item 1 has 100, each of the other 39 has 1
    probs = np.exp(model.pool_log_probs.numpy()[1:])
    np.testing.assert_allclose(probs, np.array([100.0] + [1.0] * (N_ITEMS - 1)) / 139.0, rtol=1e-5)
    pools = sample_excluding(
        tf.random.Generator.from_seed(0), tf.zeros([2000, 1], tf.int32), N_ITEMS, 1, model.pool_log_weights
    )
    assert abs(float(np.mean(pools.numpy() == 1)) - 100 / 139) < 0.03
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    model.build_for_input(MAX_LEN)
    assert np.isfinite(float(model.train_step(tiny_batch())["loss"]))
    # The paper's uniform pool draws without weights.
    assert tiny_model()[0].pool_log_weights is None


def test_a_negative_pool_alpha_is_a_config_error():
    from mdcns_tf.config import ConfigError

    with pytest.raises(ConfigError, match="mdcns.pool_alpha: must be >= 0"):
        load_config(None, ["trainer=mdcns", "mdcns.pool_alpha=-0.5"])
