"""Baseline negative samplers: each picks what its definition says on hand-made scores (docs/design.md,
section "Samplers").

Scores are made by hand with 1-d embeddings: item j's embedding is its score, a position's state is +1 (or -1 to
reverse the order), so ``score(l, j) = state_l . e_j`` is known exactly. Statistical checks use a chi-square
statistic computed here against hard-coded critical values at p = 0.001 (no scipy), with fixed seeds.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import scored_context

import mdcns_tf  # noqa: F401
from mdcns_tf.samplers import SAMPLERS, SamplingContext, get_sampler_class, sampler_params
from mdcns_tf.samplers.autosample import RETRAIN, SEARCH, architecture_gradient
from mdcns_tf.samplers.base import Negatives
from mdcns_tf.samplers.candidates import gumbel_top_k, sample_excluding, score_items, top_m_uniform_pick
from mdcns_tf.samplers.pool_scoring import padded_rows, score_position_pools

# Chi-square critical values at p = 0.001 by degrees of freedom.
CHI2_CRITICAL_001 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515}


def chi_square(counts: np.ndarray, probabilities: np.ndarray) -> float:
    expected = probabilities * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def make_sampler(
    name: str, n_items: int, n_users: int = 4, k: int = 1, counts=None, seed: int = 0, embedding_dim: int = 1, **params
):
    cls = SAMPLERS[name]
    registry = {"sampler_class": get_sampler_class, "sampler_params": sampler_params} if cls.composes_samplers else {}
    return cls(
        **registry,
        params=sampler_params(name, params),
        n_items=n_items,
        n_users=n_users,
        num_negatives=k,
        item_counts=counts if counts is not None else [0] + [1] * n_items,
        loss_name="bce",
        seed=seed,
        name=name,
        embedding_dim=embedding_dim,
    )


# --- DNS and DNS(M,N) -------------------------------------------------------------------------------------------


def test_top_m_pick_with_m_1_is_the_argmax():
    scores = tf.constant([[[0.1, 3.0, -2.0, 2.9], [5.0, 0.0, 1.0, 4.0]]])
    picks = top_m_uniform_pick(tf.random.Generator.from_seed(0), scores, m=1, num_picks=3)
    np.testing.assert_array_equal(picks.numpy(), [[[1, 1, 1], [0, 0, 0]]])


def test_dns_takes_the_maximum_of_its_candidates_per_position():
    # 12 items scored by their id; the user's sequence holds 1, 2, 12 (12 would be the maximum). A pool of 300
    # draws over the 9 allowed items contains all of them (miss probability 9 . (8/9)^300 ~ 1e-14).
    item_scores = np.arange(13, dtype=np.float32)
    sampler = make_sampler("dns", n_items=12, pool_size=300)
    # Position 0 ranks by +score (max allowed id 11); position 1 by -score (so its maximum is id 3).
    context = scored_context(item_scores, [[1.0, -1.0]], [[2, 12]], [[1, 2, 12]])
    ids = sampler.sample(context).ids.numpy()
    np.testing.assert_array_equal(ids, [[[11], [3]]])


def test_dns_mn_picks_uniformly_among_the_top_m_only():
    # Hand-made pool scores: the top-3 are indices 1 (2.0), 5 (1.7) and 3 (1.5).
    scores = tf.constant([[[0.3, 2.0, -1.0, 1.5, 0.9, 1.7]]])
    picks = top_m_uniform_pick(tf.random.Generator.from_seed(1), scores, m=3, num_picks=6000).numpy().ravel()
    assert set(picks) == {1, 3, 5}
    counts = np.array([(picks == i).sum() for i in (1, 3, 5)])
    assert chi_square(counts, np.full(3, 1 / 3)) < CHI2_CRITICAL_001[2]


def test_sample_excluding_redraws_only_the_rejected_draws_and_stays_uniform():
    # Items 1-5 of 8 are excluded: about 5/8 of the first draws are rejected and drawn again, each checked against
    # its own row. Accepted first draws are kept as they were (a twin generator replays the first draw), and the
    # result is uniform over the three allowed items.
    batch, n = 400, 30
    exclusion = tf.constant(np.tile([1, 2, 3, 4, 5, 0], [batch, 1]), tf.int32)
    generator = tf.random.Generator.from_seed(7)
    twin = tf.random.Generator.from_state(generator.state.read_value(), generator.algorithm)
    first = twin.uniform([batch, n], minval=1, maxval=9, dtype=tf.int32).numpy()
    ids = sample_excluding(generator, exclusion, 8, n).numpy()
    assert set(np.unique(ids)) == {6, 7, 8}
    accepted = first >= 6
    assert 0.2 < accepted.mean() < 0.5
    np.testing.assert_array_equal(ids[accepted], first[accepted])
    counts = np.bincount(ids.ravel(), minlength=9)[6:]
    assert chi_square(counts, np.full(3, 1 / 3)) < CHI2_CRITICAL_001[2]


def test_sample_excluding_fails_loudly_when_a_history_covers_the_catalogue():
    generator = tf.random.Generator.from_seed(0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="covers .almost. the whole item catalogue"):
        sample_excluding(generator, tf.constant([[1, 2, 3], [1, 0, 0]], tf.int32), 3, 4)


def test_fused_position_pool_scores_match_the_gather_and_their_gradients():
    # Repeated ids within and across positions: the table gradient must sum every use. Checked eagerly and traced
    # with unknown batch and length (as under length-bucketed batches), against tf.gather + einsum.
    rng = np.random.default_rng(0)
    table = tf.Variable(rng.normal(size=[7, 4]).astype(np.float32))
    states = tf.constant(rng.normal(size=[2, 3, 4]).astype(np.float32))
    pool_ids = tf.constant(rng.integers(1, 7, size=[2, 3, 5]), tf.int32)
    upstream = tf.constant(rng.normal(size=[2, 3, 5]).astype(np.float32))

    def scores_and_gradients(score):
        with tf.GradientTape() as tape:
            tape.watch(states)
            scores = score(states, table, pool_ids)
            loss = tf.reduce_sum(scores * upstream)
        d_states, d_table = tape.gradient(loss, [states, table])
        return scores, d_states, tf.convert_to_tensor(d_table)

    expected = scores_and_gradients(score_items)
    spec = tf.TensorSpec([None, None, 4], tf.float32), tf.TensorSpec([None, None, 5], tf.int32)
    traced = tf.function(lambda s, ids: score_position_pools(s, table, ids), input_signature=spec)
    for got in (scores_and_gradients(score_position_pools), scores_and_gradients(lambda s, t, i: traced(s, i))):
        for want, have in zip(expected, got, strict=True):
            np.testing.assert_allclose(have.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    # by hand: position (0, 0), candidate 0
    item = int(pool_ids[0, 0, 0])
    assert np.isclose(float(expected[0][0, 0, 0]), float(np.dot(states[0, 0], table[item])), atol=1e-6)


def test_pool_rows_are_padded_to_a_ladder_of_few_sizes():
    # By hand: at least 256; then a multiple of 2^(floor(log2 rows) - 3).
    for rows, padded in ((1, 256), (256, 256), (257, 512), (2047, 2048), (2049, 2304), (4097, 4608), (12800, 13312)):
        assert int(padded_rows(tf.constant(rows))) == padded, rows
    sizes = padded_rows(tf.range(1, 20001)).numpy()
    rows = np.arange(1, 20001)
    assert (sizes >= rows).all() and (sizes - rows < np.maximum(256, rows / 8)).all()
    assert len(set(sizes[(rows > 2048) & (rows <= 4096)])) == 8  # compiled sizes an octave


def test_dns_mn_sampler_picks_among_the_top_m_of_its_pool_uniformly():
    # 2000 items scored by id, 600 sequences with a pool of 10. The pool is re-drawn from a copy of the sampler's
    # generator, so each pick can be ranked within its own pool.
    n_items, batch, pool_size = 2000, 600, 10
    sampler = make_sampler("dns_mn", n_items=n_items, n_users=batch, pool_size=pool_size, top_m=3, seed=3)
    exclusion = np.tile([1, 2], [batch, 1])
    twin = tf.random.Generator.from_state(sampler.generator.state.read_value(), sampler.generator.algorithm)
    pools = sample_excluding(twin, tf.constant(exclusion), n_items, pool_size).numpy()
    context = scored_context(np.arange(n_items + 1), np.ones([batch, 1]), np.full([batch, 1], 1), exclusion)
    picks = sampler.sample(context).ids.numpy()[:, 0, 0]
    ranks = []
    for pool, pick in zip(pools, picks, strict=True):
        assert pick in pool
        top = np.sort(pool)[::-1][:3]
        assert pick in top, "DNS(M,N) picked outside the top-M of its pool"
        if len(set(top)) == 3:  # rows whose top-3 holds a repeated draw are left out of the uniformity count
            ranks.append(int(np.where(top == pick)[0][0]))
    counts = np.bincount(ranks, minlength=3)
    assert counts.sum() > 500
    assert chi_square(counts, np.full(3, 1 / 3)) < CHI2_CRITICAL_001[2]


def test_dns_draws_k_independent_negatives():
    item_scores = np.arange(31, dtype=np.float32)
    sampler = make_sampler("dns", n_items=30, k=3, pool_size=5, seed=4)
    context = scored_context(item_scores, np.ones([64, 2]), np.full([64, 2], 1), np.ones([64, 1]))
    ids = sampler.sample(context).ids.numpy()
    assert ids.shape == (64, 2, 3)
    # Three sub-pools of 5: the negatives are not three copies of one maximum.
    assert (ids[..., 0] != ids[..., 1]).mean() > 0.5


# --- Popularity ---------------------------------------------------------------------------------------------------


def test_popularity_frequencies_follow_count_to_the_alpha():
    counts = [0, 1, 2, 5, 10, 20, 40]
    sampler = make_sampler("popularity", n_items=6, n_users=200, counts=counts, seed=5, alpha=0.75)
    # Item 4 is in every history: the draw is count^0.75 restricted to items {1, 2, 3, 5, 6}.
    context = scored_context(np.zeros(7), np.ones([200, 50]), np.full([200, 50], 4), np.full([200, 1], 4))
    ids = sampler.sample(context).ids.numpy().ravel()
    allowed = np.array([1, 2, 3, 5, 6])
    assert set(ids) <= set(allowed)
    weights = np.array([counts[i] for i in allowed], dtype=np.float64) ** 0.75
    observed = np.array([(ids == i).sum() for i in allowed])
    assert chi_square(observed, weights / weights.sum()) < CHI2_CRITICAL_001[4]


def test_popularity_logq_is_the_log_of_k_times_the_catalogue_probability():
    counts = [0, 1, 4, 9]
    sampler = make_sampler("popularity", n_items=3, k=2, counts=counts, alpha=1.0, logq_correction=True)
    negatives = sampler.sample(scored_context(np.zeros(4), np.ones([1, 2]), [[1, 1]], [[1]]))
    ids, logq = negatives.ids.numpy(), negatives.logq.numpy()
    np.testing.assert_allclose(logq, np.log(2 * np.array(counts)[ids] / 14.0), rtol=1e-5)
    # The correction enters the loss: scores minus log(k q) (BCE on -logq when all scores are 0).
    loss = sampler.loss(None, negatives, tf.zeros([1, 2]), tf.zeros([1, 2, 2])).numpy()
    expected = math.log(2) + np.log1p(np.exp(-logq)).sum(-1)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


# --- SRNS ---------------------------------------------------------------------------------------------------------


# The SRNS pick (likelihood + alpha . std over the model snapshots) is tested in test_samplers_gdns_srns.py.


def test_gumbel_top_k_draws_follow_the_softmax():
    scores, temperature = np.array([0.0, 10.0, 20.0, 30.0]), 10.0
    logits = tf.constant(np.tile(scores / temperature, [20000, 1]), tf.float32)
    picks = gumbel_top_k(tf.random.Generator.from_seed(6), logits, 1).numpy().ravel()
    probabilities = np.exp(scores / temperature) / np.exp(scores / temperature).sum()
    counts = np.bincount(picks, minlength=4)
    assert chi_square(counts, probabilities) < CHI2_CRITICAL_001[3]


def test_srns_memory_update_follows_softmax_of_score_over_temperature():
    # S1 = S2 = 1: each user keeps its memory item (id 2, score 20) or its fresh item f with probability
    # softmax over {2, f} of score / T, T = 10. Items 3..6 score 0, 10, 30, 40; item 1 is the history.
    n_users, temperature = 4000, 10.0
    item_scores = np.array([0, 0, 20, 0, 10, 30, 40], np.float32)
    sampler = make_sampler(
        "srns", n_items=6, n_users=n_users, memory_size=1, fresh_size=1, temperature=temperature, seed=7
    )
    sampler.memory_ids.assign(tf.fill([n_users + 1, 1], 2))
    context = scored_context(
        item_scores, np.ones([n_users, 1]), np.ones([n_users, 1]), np.ones([n_users, 1]), np.arange(1, n_users + 1)
    )
    sampler.sample(context)
    kept_memory = (sampler.memory_ids.numpy()[1:, 0] == 2).mean()
    # Fresh f uniform over {2, ..., 6}; f = 2 duplicates the memory item and is masked (memory kept).
    e = np.exp(item_scores / temperature)
    expected = np.mean([1.0] + [e[2] / (e[2] + e[f]) for f in (3, 4, 5, 6)])
    assert abs(kept_memory - expected) < 4 * math.sqrt(expected * (1 - expected) / n_users)


# --- GDNS ---------------------------------------------------------------------------------------------------------


# The gain, the proportional draw and the feedback-loop simulation are in test_samplers_gdns_srns.py.


def test_gdns_group_wise_margin_loss():
    sampler = make_sampler("gdns", n_items=10, margin=1.0)
    positive = tf.constant([[1.0, 0.0]])
    negative = tf.constant([[[0.5, -1.0], [0.2, 2.0]]])
    loss = sampler.loss(None, Negatives(ids=tf.zeros([1, 2, 2], tf.int32)), positive, negative).numpy()
    # Position 0: max(0, .5 - 1 + 1) + max(0, -1 - 1 + 1) = .5; position 1: (.2 + 1) + (2 + 1) = 4.2.
    np.testing.assert_allclose(loss, [[0.5, 4.2]], rtol=1e-6)


# --- AutoSample ---------------------------------------------------------------------------------------------------


def test_architecture_gradient_formula():
    weights, alignment = np.array([0.2, 0.3, 0.5]), np.array([1.0, -2.0, 0.5])
    mean = (weights * alignment).sum()
    np.testing.assert_allclose(
        architecture_gradient(tf.constant(weights), tf.constant(alignment)).numpy(), -weights * (alignment - mean)
    )


def test_autosample_weights_move_toward_the_sampler_whose_step_lowers_the_validation_loss():
    # A model with parameters theta. Validation loss |theta - a|^2; candidate A's training loss |theta - a|^2
    # (lower, and its step lowers the validation loss), candidate B's |theta - b|^2 (higher, and its step
    # moves theta away from a).
    sampler = make_sampler("autosample", n_items=10, candidates=["uniform", "popularity"], arch_learning_rate=0.05)
    theta = tf.Variable([0.0, 0.0])
    a, b = tf.constant([1.0, 0.0]), tf.constant([-2.0, 0.0])
    for _ in range(20):
        with tf.GradientTape(persistent=True) as tape:
            sampler.trace.component_losses = [tf.reduce_sum((theta - a) ** 2), tf.reduce_sum((theta - b) ** 2)]
            sampler.trace.validation_loss = tf.reduce_sum((theta - a) ** 2)
        sampler.update_from_tape(tape, [theta])
    weights = tf.nn.softmax(sampler.arch_logits).numpy()
    assert weights[0] > 0.7 > 0.3 > weights[1]
    # The search ends after search_epochs: the argmax candidate is selected.
    sampler.on_epoch_end(sampler.params.search_epochs - 1)
    assert int(sampler.phase.numpy()) == RETRAIN and int(sampler.selected.numpy()) == 0


def test_autosample_loss_is_the_weighted_mixture_and_the_retrain_uses_the_selection():
    sampler = make_sampler(
        "autosample", n_items=10, n_users=64, candidates=["uniform", "dns"], val_fraction=0.5, seed=3
    )
    sampler.arch_logits.assign([0.0, math.log(3.0)])  # weights 1/4, 3/4
    context = scored_context(np.zeros(11), np.ones([64, 1]), np.ones([64, 1]), np.ones([64, 1]))
    positive = tf.constant(np.linspace(-1, 1, 64, dtype=np.float32)[:, None])
    negative = tf.constant(np.tile([[[0.5, -0.5]]], [64, 1, 1]).astype(np.float32))
    negatives = Negatives(ids=tf.ones([64, 1, 2], tf.int32), logq=tf.zeros([64, 1, 2]))
    loss = sampler.loss(context, negatives, positive, negative).numpy()[:, 0]
    pos = positive.numpy()[:, 0]
    bce = lambda n: np.log1p(np.exp(-pos)) + np.log1p(np.exp(n))  # noqa: E731
    mixture = 0.25 * bce(0.5) + 0.75 * bce(-0.5)
    held_out = loss == 0.0
    assert 10 < held_out.sum() < 54  # about val_fraction of the users are held out for the validation loss
    np.testing.assert_allclose(loss[~held_out], mixture[~held_out], rtol=1e-5)

    sampler.phase.assign(RETRAIN)
    sampler.selected.assign(1)
    loss = sampler.loss(context, negatives, positive, negative).numpy()[:, 0]
    np.testing.assert_allclose(loss, bce(-0.5), rtol=1e-5)  # every user trains, on the selected candidate only
    assert SEARCH != RETRAIN


# --- Every sampler ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_no_sampler_returns_a_history_item_or_the_target(name):
    rng = np.random.default_rng(0)
    n_items, n_users, seq_len, k = 40, 16, 6, 2
    histories = [rng.choice(np.arange(1, n_items + 1), size=rng.integers(8, 30), replace=False) for _ in range(n_users)]
    width = max(len(h) for h in histories)
    exclusion = np.zeros([n_users, width], np.int32)
    targets = np.zeros([n_users, seq_len], np.int32)
    for u, history in enumerate(histories):
        exclusion[u, : len(history)] = history
        targets[u, -min(seq_len, len(history) - 1) :] = history[1 : seq_len + 1][: min(seq_len, len(history) - 1)]
    counts = [0] + list(rng.integers(1, 50, n_items))
    sampler = make_sampler(name, n_items=n_items, n_users=n_users, k=k, counts=counts, seed=1, embedding_dim=8)

    def check(epoch: int) -> None:
        context = SamplingContext(
            input_ids=tf.constant(targets),
            target_ids=tf.constant(targets),
            exclusion_ids=tf.constant(exclusion),
            user_index=tf.range(1, n_users + 1),
            states=tf.constant(rng.normal(size=[n_users, seq_len, 8]), tf.float32),
            item_embeddings=tf.constant(rng.normal(size=[n_items + 1, 8]), tf.float32),
        )
        ids = sampler.sample(context).ids.numpy()
        assert ids.shape[:2] == (n_users, seq_len) and ids.shape[2] % k == 0
        assert ((ids >= 1) & (ids <= n_items)).all()
        for u in range(n_users):
            assert not set(ids[u].ravel()) & set(histories[u]), f"{name} returned a history item for user {u}"
        sampler.on_epoch_end(epoch)

    for epoch in range(7):  # AutoSample's default search ends after 5 epochs: both stages are checked
        check(epoch)


# --- End to end ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_trains_end_to_end(name, tiny_dataset, tmp_path):
    from mdcns_tf.config_loader import load_config
    from mdcns_tf.train import run

    overrides = [
        f"data.dir={tiny_dataset}",
        f"output_dir={tmp_path}",
        "data.max_len=12",
        "data.batch_size=512",  # one step an epoch: one trace, no partial batch
        "data.bucket_by_length=false",
        "model.dim=16",
        "model.num_layers=1",
        "model.num_heads=1",
        "train.epochs=1",
        "train.verbose=0",
        "train.tensorboard=false",
        # The stateful samplers' variables go through the checkpoint of BackupAndRestore.
        f"train.backup_and_restore={str(SAMPLERS[name].replica_local_state).lower()}",
        "eval.test=false",
        "export.enabled=false",
        "export.top_k=10",
        f"sampler.name={name}",
    ]
    if name == "autosample":
        # One search epoch, then one retraining epoch with the selected candidate.
        overrides += [
            "train.epochs=2",
            "sampler.autosample={search_epochs: 1, candidate_params: {dns: {pool_size: 20}}}",
        ]
    result = run(load_config(None, overrides))
    assert result["epochs_run"] == (2 if name == "autosample" else 1)
    assert all(math.isfinite(epoch["loss"]) for epoch in result["history"])
    assert result["valid"]["ndcg@20"] > 0
    with open(os.path.join(tmp_path, "metrics.json")) as f:
        assert json.load(f)["valid"]
