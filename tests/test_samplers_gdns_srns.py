"""GDNS and SRNS over model snapshots, and the DNS per-position pools (issue 15).

Scores are made by hand with 1-d embeddings (item j's embedding is its score, a state is +1), or with 2-d ones where
a snapshot must be told apart from another; expected values are computed here from the formulas, on tiny tensors.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import scored_context

import mdcns_tf  # noqa: F401
from mdcns_tf.samplers import SAMPLERS, sampler_params
from mdcns_tf.samplers.base import Negatives
from mdcns_tf.samplers.candidates import sample_excluding, sample_position_pools
from mdcns_tf.samplers.gdns import chained_gain, draw_logits, expected_gap, proportional_picks
from mdcns_tf.samplers.snapshots import ModelSnapshots
from mdcns_tf.samplers.srns import history_std

# Chi-square critical value at p = 0.001, 3 degrees of freedom.
CHI2_CRITICAL_001_DF3 = 16.266


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def logit(p):
    p = np.asarray(p, dtype=np.float64)
    return np.log(p / (1.0 - p))


def chi_square(counts: np.ndarray, probabilities: np.ndarray) -> float:
    expected = probabilities * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def make_sampler(name, n_items, n_users=4, k=1, seed=0, dim=1, loss_name="bce", **params):
    return SAMPLERS[name](
        params=sampler_params(name, params),
        n_items=n_items,
        n_users=n_users,
        num_negatives=k,
        item_counts=[0] + [1] * n_items,
        loss_name=loss_name,
        seed=seed,
        name=name,
        embedding_dim=dim,
    )


def record_1d(snapshots: ModelSnapshots, user: int, item_scores, epoch: int, state: float = 1.0) -> None:
    snapshots.record(
        tf.constant([user]),
        tf.constant([[state]], tf.float32),
        tf.constant(np.asarray(item_scores, np.float32)[:, None]),
        epoch,
    )


# --- Snapshots ----------------------------------------------------------------------------------------------------


def test_snapshots_give_past_scores_oldest_first_for_recorded_epochs_only():
    snapshots = ModelSnapshots(n_users=2, n_items=3, dim=2, window=2)
    tables = [np.array([[0, 0], [1, 2], [3, 4], [5, 6]], np.float32) * (e + 1) for e in range(4)]
    states = [np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), np.array([[1.0, 1.0]]), np.array([[2.0, 0.0]])]
    items = tf.constant([[1, 3], [1, 3]])
    for epoch in range(3):  # user 1 only; user 2 is never visited
        snapshots.record(tf.constant([1]), tf.constant(states[epoch], tf.float32), tables[epoch], epoch)

    scores, valid = snapshots.past_scores(tf.constant([1, 2]), items, 2)
    # Epoch 0: state (1, 0) . rows 1, 3 of table 0 = 1, 5; epoch 1: (0, 1) . rows of 2 x table = 4, 12.
    np.testing.assert_allclose(scores.numpy()[0], [[1.0, 5.0], [4.0, 12.0]])
    np.testing.assert_array_equal(valid.numpy(), [[True, True], [False, False]])

    # Epoch 3 takes the ring slot of epoch 0: at epoch 4 the window is epochs 2 and 3.
    snapshots.record(tf.constant([1]), tf.constant(states[3], tf.float32), tables[3], 3)
    scores, valid = snapshots.past_scores(tf.constant([1]), items[:1], 4)
    # Epoch 2: (1, 1) . 3 x rows = 9, 33; epoch 3: (2, 0) . 4 x rows = 8, 40.
    np.testing.assert_allclose(scores.numpy()[0], [[9.0, 33.0], [8.0, 40.0]])
    assert valid.numpy().all()
    # Slots still holding older epochs do not count: at epoch 7 the window is epochs 5 and 6, never recorded.
    _, valid = snapshots.past_scores(tf.constant([1]), items[:1], 7)
    assert not valid.numpy().any()


def test_history_std_is_the_population_std_over_valid_snapshots():
    history = tf.constant([[[0.6, 0.1], [0.9, 0.9], [0.3, 0.5]]])  # (1, window 3, 2 items)
    std = history_std(history, tf.constant([[True, True, False]])).numpy()
    np.testing.assert_allclose(std, [[0.15, 0.4]], rtol=1e-5)  # |0.6 - 0.9| / 2, |0.1 - 0.9| / 2
    assert history_std(history, tf.constant([[False, True, False]])).numpy().tolist() == [[0.0, 0.0]]


# --- SRNS ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha, expected", [(0.0, 3), (1.0, 4)])
def test_srns_std_comes_from_the_snapshots_for_items_new_to_the_memory(alpha, expected):
    # User 1's memory is set just now to items 3, 4, 5: none of them was ever in it, yet their likelihood history
    # over epochs 0..4 comes from the model snapshots. Positive: item 1, scored 0 in every snapshot.
    likelihoods = {
        3: [0.8, 0.8, 0.8, 0.8, 0.8],  # stable: a likely false negative, std 0
        4: [0.6, 0.9, 0.7, 0.95, 0.8],  # fluctuating
        5: [0.05, 0.95, 0.05, 0.95, 0.05],  # most variable, but scored low now
    }
    sampler = make_sampler("srns", n_items=20, memory_size=3, fresh_size=3, alpha=alpha, warmup_epochs=5)
    for epoch in range(5):
        table = np.zeros(21)
        for item, series in likelihoods.items():
            table[item] = logit(series[epoch])  # sig(s_j - s_1) = the series value
        record_1d(sampler.snapshots, 1, table, epoch)
    sampler.memory_ids.scatter_nd_update([[1]], [[3, 4, 5]])
    sampler.epoch.assign(5)  # = warmup: the std weight is alpha
    now = np.zeros(21, np.float32)
    now[[3, 4, 5]] = [2.1, 2.0, -3.0]
    pick = sampler.sample(scored_context(now, [[1.0]], [[1]], [[1, 2]], user_index=[1])).ids.numpy().item()

    criterion = {j: sigmoid(now[j]) + alpha * np.std(series) for j, series in likelihoods.items()}
    # By hand: .8909 + 0, .8808 + .128 alpha, .0474 + .44 alpha.
    assert max(criterion, key=criterion.get) == expected == pick


def test_srns_variance_weight_ramps_over_the_warmup():
    sampler = make_sampler("srns", n_items=20, alpha=5.0, warmup_epochs=50)
    assert float(sampler.variance_weight()) == 0.0
    sampler.on_epoch_end(9)  # epoch 10 starts
    assert float(sampler.variance_weight()) == pytest.approx(5.0 * 10 / 50)
    sampler.epoch.assign(80)
    assert float(sampler.variance_weight()) == pytest.approx(5.0)


def test_srns_records_the_last_trained_state_and_the_item_table():
    item_scores = np.arange(11, dtype=np.float32)
    sampler = make_sampler("srns", n_items=10, memory_size=2, fresh_size=2, history_epochs=5)
    sampler.epoch.assign(7)
    # Positions 0..2, the last one untrained: the last trained position is 1 (state -2).
    sampler.sample(scored_context(item_scores, [[0.5, -2.0, 3.0]], [[1, 2, 0]], [[1, 2]], user_index=[1]))
    slot = 7 % 6
    assert sampler.snapshots.user_state.numpy()[1, slot, 0] == -2.0
    assert sampler.snapshots.user_epoch.numpy()[1].tolist() == [-1, 7, -1, -1, -1, -1]
    np.testing.assert_array_equal(sampler.snapshots.table.numpy()[slot, :, 0], item_scores)
    assert sampler.snapshots.table_epoch.numpy()[slot] == 7


def test_srns_with_bpr_trains_the_official_loss():
    sampler = make_sampler("srns", n_items=10, loss_name="bpr")
    positive, negative = tf.constant([[1.0, -0.5]]), tf.constant([[[0.0], [1.5]]])
    loss = sampler.loss(None, Negatives(ids=tf.ones([1, 2, 1], tf.int32)), positive, negative).numpy()
    np.testing.assert_allclose(loss, np.log1p(np.exp([[0.0 - 1.0, 1.5 + 0.5]])), rtol=1e-6)  # -log sig(s+ - s-)


# --- GDNS ---------------------------------------------------------------------------------------------------------


def test_gdns_expected_gap_averages_over_the_trained_positives():
    candidates = tf.constant([[0.0, 2.0]])
    positives = tf.constant([[1.0, -1.0, 5.0]])
    trained = tf.constant([[True, True, False]])
    gap = expected_gap(candidates, positives, trained).numpy()
    expected = [(sigmoid(0 - 1) + sigmoid(0 + 1)) / 2, (sigmoid(2 - 1) + sigmoid(2 + 1)) / 2]
    np.testing.assert_allclose(gap, [expected], rtol=1e-6)


def test_gdns_gain_chains_the_ema_over_the_snapshots():
    # H of two items at epochs t-2, t-1 and now; a = 0.7.
    history = tf.constant([[[0.4, 0.5], [0.2, 0.5]]])
    current = tf.constant([[0.05, 0.6]])
    gain = chained_gain(history, tf.constant([[True, True]]), current, ema=0.7, eps=0.0, initial_gain=0.5)
    # Item 1: sig(.2 / .2) = .731059 starts it, then .7 . .731059 + .3 . sig(.15 / .05) = .797513.
    # Item 2: sig(0) = .5, then .7 . .5 + .3 . sig(-.1 / .6) = .35 + .3 . .458430 = .487529.
    np.testing.assert_allclose(gain.numpy(), [[0.797513, 0.487529]], atol=1e-6)
    # Epoch t-2 missing: the one change t-1 -> now is the gain; no earlier epoch at all: the initial gain.
    gain = chained_gain(history, tf.constant([[False, True]]), current, ema=0.7, eps=0.0, initial_gain=0.5)
    np.testing.assert_allclose(gain.numpy(), [[sigmoid(3.0), sigmoid(-1 / 6)]], atol=1e-6)
    gain = chained_gain(history, tf.constant([[False, False]]), current, ema=0.7, eps=0.0, initial_gain=0.4)
    np.testing.assert_allclose(gain.numpy(), [[0.4, 0.4]])


def test_gdns_pool_gains_use_the_previous_epochs_scores_of_fresh_candidates():
    ema, eps = 0.6, 1e-6
    sampler = make_sampler("gdns", n_items=8, pool_size=2, history_epochs=2, ema=ema, eps=eps)
    # Epochs 0 and 1 snapshot user 1 (state 1); items 1, 2 are its positives, 5 and 6 the candidates of today,
    # never seen as candidates before.
    tables = [np.array([0, 1.0, 0.5, 0, 0, 0.8, 0.2, 0, 0]), np.array([0, 1.2, 0.4, 0, 0, 0.3, 0.5, 0, 0])]
    for epoch, table in enumerate(tables):
        record_1d(sampler.snapshots, 1, table, epoch)
    sampler.epoch.assign(2)
    now = np.array([0, 1.5, 0.6, 0, 0, -0.5, 1.2, 0, 0], np.float32)
    targets = tf.constant([[1, 2, 0]])
    gains = sampler.pool_gains(
        tf.constant([1]), tf.constant([[1.0]]), targets, tf.constant(now[:, None]), tf.constant([[5, 6]])
    ).numpy()

    def h(table, j):  # mean over the two trained positives
        return np.mean([sigmoid(table[j] - table[1]), sigmoid(table[j] - table[2])])

    expected = []
    for j in (5, 6):
        h0, h1, h2 = h(tables[0], j), h(tables[1], j), h(now, j)
        g = sigmoid((h0 - h1) / (h1 + eps))
        expected.append(ema * g + (1 - ema) * sigmoid((h1 - h2) / (h2 + eps)))
    np.testing.assert_allclose(gains, [expected], rtol=1e-5)
    assert expected[0] > 0.5 > expected[1]  # item 5's gap shrank (learned negative), item 6's grew


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_gdns_draws_are_proportional_to_the_gain(power):
    weights = np.array([0.2, 0.5, 0.8, 0.5])
    logits = draw_logits(tf.constant([weights]), power)
    picks = proportional_picks(tf.random.Generator.from_seed(3), logits, 4000, 2).numpy()
    assert picks.shape == (1, 4000, 2)
    counts = np.bincount(picks.ravel(), minlength=4)
    probabilities = weights**power / (weights**power).sum()  # power 1: .1, .25, .4, .25
    assert chi_square(counts, probabilities) < CHI2_CRITICAL_001_DF3


def test_gdns_logs_how_far_its_draw_is_from_uniform():
    sampler = make_sampler("gdns", n_items=8, power=2.0)
    assert sampler.metrics()["gdns_top_share"].numpy() == 1.0  # nothing drawn yet
    gains = np.array([[0.5, 0.5, 0.5, 0.5], [0.2, 0.4, 0.4, 0.8]], np.float32)
    sampler.record_draw_shape(tf.constant(gains), draw_logits(tf.constant(gains), 2.0))
    logged = {name: value.numpy() for name, value in sampler.metrics().items()}
    # Pool 1 is flat: its likeliest candidate has uniform's 1/4. Pool 2 draws .8^2 / (.04 + .16 + .16 + .64) = .64,
    # 2.56 times 1/4.
    np.testing.assert_allclose(logged["gdns_top_share"], (1.0 + 2.56) / 2, rtol=1e-5)
    np.testing.assert_allclose(logged["gdns_gain_spread"], (0.0 + np.std([0.2, 0.4, 0.4, 0.8])) / 2, rtol=1e-5)


def test_gdns_cannot_feed_on_itself():
    """Simulated training: each epoch pushes every drawn negative's score down (as the loss does) and the
    positives' scores up. The old sticky-pool argmax re-picked the pushed items (2 distinct negatives a user, 96%
    repeats between epochs); fresh pools and proportional draws keep the negatives diverse."""
    rng = np.random.default_rng(0)
    n_items, n_users, seq_len, k, epochs = 300, 32, 5, 1, 10
    sampler = make_sampler("gdns", n_items=n_items, n_users=n_users, k=k, seed=5, pool_size=64)
    scores = rng.normal(0.0, 0.5, n_items + 1)
    histories = np.stack([rng.choice(np.arange(1, n_items + 1), seq_len + 1, replace=False) for _ in range(n_users)])
    targets = histories[:, 1:]
    drawn = []
    for epoch in range(epochs):
        context = scored_context(scores, np.ones([n_users, seq_len]), targets, histories)
        ids = sampler.sample(context).ids.numpy()
        drawn.append(ids.reshape(n_users, -1))
        np.subtract.at(scores, ids.ravel(), 0.5)  # the loss pushes the negatives down
        scores[targets.ravel()] += 0.1  # and the positives up
        sampler.on_epoch_end(epoch)
    drawn = np.stack(drawn, axis=1)  # (users, epochs, seq_len * k)
    distinct = np.mean([len(set(row.ravel())) for row in drawn]) / (epochs * seq_len * k)
    repeats = np.mean(
        [
            len(set(drawn[u, e]) & set(drawn[u, e - 1])) / len(set(drawn[u, e]))
            for u in range(n_users)
            for e in range(1, epochs)
        ]
    )
    assert distinct > 0.8, f"only {distinct:.0%} of a user's negatives are distinct"
    assert repeats < 0.15, f"{repeats:.0%} of a user's negatives repeat from the previous epoch"
    # The positions of one visit do not share one negative.
    assert np.mean([len(set(drawn[u, -1])) for u in range(n_users)]) > 0.8 * seq_len * k


# --- DNS per-position pools ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dns", "dns_mn"])
def test_dns_position_pools_give_distinct_picks_across_positions(name):
    n_items, batch, seq_len, pool_size = 1000, 4, 20, 5
    top_m = {"dns_mn": {"top_m": 1}}.get(name, {})
    item_scores = np.arange(n_items + 1, dtype=np.float32)  # every position ranks items by id
    exclusion = np.tile([1, 2], [batch, 1])
    context = scored_context(item_scores, np.ones([batch, seq_len]), np.ones([batch, seq_len]), exclusion)

    shared = make_sampler(name, n_items=n_items, seed=1, pool_size=pool_size, **top_m).sample(context).ids.numpy()
    assert all(len(set(row)) == 1 for row in shared[..., 0]), "one pool a sequence: every position has its maximum"

    sampler = make_sampler(name, n_items=n_items, seed=1, pool_size=pool_size, pool_scope="position", **top_m)
    twin = tf.random.Generator.from_state(sampler.generator.state.read_value(), sampler.generator.algorithm)
    pools = sample_position_pools(twin, tf.constant(exclusion), n_items, seq_len, pool_size).numpy()
    ids = sampler.sample(context).ids.numpy()
    np.testing.assert_array_equal(ids[..., 0], pools.max(axis=-1))  # each position's maximum of its own pool
    assert min(len(set(row)) for row in ids[..., 0]) >= 15


def test_dns_mn_position_pools_keep_k_negatives_from_their_own_sub_pools():
    n_items, seq_len, pool_size, k = 500, 6, 4, 3
    sampler = make_sampler("dns_mn", n_items=n_items, k=k, seed=2, pool_size=pool_size, top_m=1, pool_scope="position")
    twin = tf.random.Generator.from_state(sampler.generator.state.read_value(), sampler.generator.algorithm)
    pools = sample_position_pools(twin, tf.constant([[1]]), n_items, seq_len, k * pool_size).numpy()
    context = scored_context(np.arange(n_items + 1), np.ones([1, seq_len]), np.ones([1, seq_len]), [[1]])
    ids = sampler.sample(context).ids.numpy()
    np.testing.assert_array_equal(ids, pools.reshape(1, seq_len, k, pool_size).max(axis=-1))


def test_unknown_pool_scope_is_refused():
    with pytest.raises(ValueError, match="pool_scope"):
        make_sampler("dns", n_items=10, pool_scope="user")


# --- Declared facts -----------------------------------------------------------------------------------------------


def test_samplers_with_state_written_in_the_step_declare_it():
    for name in ("srns", "gdns", "autosample"):
        assert SAMPLERS[name].replica_local_state, name
    for name in ("uniform", "popularity", "dns", "dns_mn"):
        assert not SAMPLERS[name].replica_local_state, name
    assert SAMPLERS["srns"].needs_inference_states and SAMPLERS["gdns"].needs_inference_states
    assert not SAMPLERS["dns"].needs_inference_states


def test_sample_excluding_is_unchanged_for_the_sequence_pools():
    # The sequence scope draws exactly what sample_excluding draws (same generator stream as before the option).
    sampler = make_sampler("dns", n_items=50, seed=4, pool_size=6)
    twin = tf.random.Generator.from_state(sampler.generator.state.read_value(), sampler.generator.algorithm)
    pool = sample_excluding(twin, tf.constant([[1, 2]]), 50, 6).numpy()
    context = scored_context(np.arange(51), np.ones([1, 3]), np.ones([1, 3]), [[1, 2]])
    assert sampler.sample(context).ids.numpy()[0, 0, 0] == pool.max()
