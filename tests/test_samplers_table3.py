"""MixGCF, MixGCF+, AdaSIR and GNNO (the MDCNS paper's Table 3 baselines): each selection rule on hand-made scores.

As in test_samplers.py, scores come from 1-d embeddings: item j's embedding is its score and a position's state is
+1, so ``score(l, j) = e_j`` is known exactly. Statistical checks use chi-square statistics against hard-coded
critical values at p = 0.001, with fixed seeds.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from conftest import scored_context

import mdcns_tf  # noqa: F401
from mdcns_tf.backbones.sasrec import SASRec
from mdcns_tf.samplers import SAMPLERS, sampler_params
from mdcns_tf.samplers.adasir import draws_with_replacement, merge_pools
from mdcns_tf.samplers.candidates import sample_excluding
from mdcns_tf.samplers.gnno import SimilarityTable, graph_negatives, item_jaccard
from mdcns_tf.samplers.mixgcf import mix_with_positive
from mdcns_tf.training.single_model import SequentialRecommender

CHI2_CRITICAL_001 = {1: 10.828, 2: 13.816, 3: 16.266}
TABLE3 = ["mixgcf", "mixgcf_plus", "adasir", "gnno"]


def chi_square(counts: np.ndarray, probabilities: np.ndarray) -> float:
    expected = probabilities * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def make_sampler(name: str, n_items: int, n_users: int = 4, k: int = 1, seed: int = 0, **params):
    return SAMPLERS[name](
        params=sampler_params(name, params),
        n_items=n_items,
        n_users=n_users,
        num_negatives=k,
        item_counts=[0] + [1] * n_items,
        loss_name="bce",
        seed=seed,
        name=name,
    )


def twin(generator: tf.random.Generator) -> tf.random.Generator:
    """A copy of ``generator`` that replays its next draws."""
    return tf.random.Generator.from_state(generator.state.read_value(), generator.algorithm)


# --- MixGCF / MixGCF+ ---------------------------------------------------------------------------------------------


def test_positive_mixing_by_hand():
    # alpha 0.25: 0.25 . (4, 0) + 0.75 . (0, 8) = (1, 6); alpha 1 gives the positive back.
    mixed = mix_with_positive(
        tf.constant([[0.25, 1.0]]), tf.constant([[[4.0, 0.0], [4.0, 0.0]]]), tf.constant([[[[0.0, 8.0]], [[0.0, 8.0]]]])
    )
    np.testing.assert_allclose(mixed.numpy(), [[[[1.0, 6.0]], [[4.0, 0.0]]]])


def test_mixgcf_mixes_the_positive_into_the_hardest_candidate():
    # 12 items scored by id; the sequence holds 1, 2, 12: the hardest allowed candidate is 11 (a pool of 300 over
    # the 9 allowed items holds them all). The target is item 1 (e = 1): each negative is alpha . 1 + (1 - alpha) .
    # 11 = 11 - 10 alpha with alpha ~ U(0, 1), one per position.
    sampler = make_sampler("mixgcf", n_items=12, n_users=400, pool_size=300, seed=1)
    context = scored_context(np.arange(13), np.ones([400, 5]), np.ones([400, 5]), np.tile([1, 2, 12], [400, 1]))
    negatives = sampler.sample(context)
    assert (negatives.ids.numpy() == 11).all()
    alpha = (11.0 - negatives.embeddings.numpy()[..., 0, 0]) / 10.0
    assert ((alpha >= 0) & (alpha < 1)).all()
    # U(0, 1): mean 1/2, variance 1/12 over 2000 positions; distinct per position.
    assert abs(alpha.mean() - 0.5) < 4 * math.sqrt(1 / 12 / alpha.size)
    assert abs(alpha.var() - 1 / 12) < 0.01
    assert len(np.unique(alpha)) > 1900


def test_mixgcf_plus_mixes_a_top_m_candidate_of_its_pool():
    # 2000 items scored by id; pools of 10 re-drawn from a twin generator. Each negative's source is among the
    # top-3 of its own pool, uniformly, and its embedding is the mix of that source with the target (item 7).
    n_items, batch, pool_size = 2000, 600, 10
    sampler = make_sampler("mixgcf_plus", n_items=n_items, n_users=batch, pool_size=pool_size, top_m=3, seed=3)
    exclusion = np.tile([1, 7], [batch, 1])
    pools = sample_excluding(twin(sampler.generator), tf.constant(exclusion), n_items, pool_size).numpy()
    context = scored_context(np.arange(n_items + 1), np.ones([batch, 1]), np.full([batch, 1], 7), exclusion)
    negatives = sampler.sample(context)
    picks, mixes = negatives.ids.numpy()[:, 0, 0], negatives.embeddings.numpy()[:, 0, 0, 0]
    ranks = []
    for pool, pick in zip(pools, picks, strict=True):
        top = np.sort(pool)[::-1][:3]
        assert pick in top, "MixGCF+ mixed a candidate outside the top-M of its pool"
        if len(set(top)) == 3:
            ranks.append(int(np.where(top == pick)[0][0]))
    alpha = (picks - mixes) / (picks - 7.0)  # mix = alpha . 7 + (1 - alpha) . pick
    assert ((alpha > -1e-4) & (alpha < 1 + 1e-4)).all()
    counts = np.bincount(ranks, minlength=3)
    assert chi_square(counts, np.full(3, 1 / 3)) < CHI2_CRITICAL_001[2]


@pytest.mark.parametrize("pool_scope, shared", [("sequence", True), ("position", False)])
def test_mixgcf_pool_scope(pool_scope, shared):
    # Items scored by id, all positions ranking alike (state +1), M = 1: one pool per sequence gives every position
    # the same hardest candidate; a pool per position gives (almost always) different ones.
    sampler = make_sampler("mixgcf", n_items=2000, n_users=8, pool_size=5, pool_scope=pool_scope, seed=12)
    context = scored_context(np.arange(2001), np.ones([8, 6]), np.ones([8, 6]), np.ones([8, 1]))
    ids = sampler.sample(context).ids.numpy()[..., 0]
    assert (ids == ids[:, :1]).all() == shared


def test_mixgcf_negative_gradient_reaches_the_positive_and_the_candidate_rows():
    # The trainer scores state . mix; d/d table of softplus(h . mix) lands on the target's and the source's rows
    # only, in the proportions alpha and 1 - alpha.
    table = tf.Variable(np.arange(8, dtype=np.float32)[:, None] / 10.0)
    sampler = make_sampler("mixgcf", n_items=7, n_users=1, pool_size=50, seed=4)
    with tf.GradientTape() as tape:
        context = scored_context(np.zeros(8), [[1.0]], [[2]], [[1, 2]])
        context.item_embeddings = tf.convert_to_tensor(table)
        negatives = sampler.sample(context)
        score = tf.einsum("bld,blkd->blk", context.states, negatives.embeddings)
        loss = tf.reduce_sum(tf.math.softplus(score))
    gradient = tf.convert_to_tensor(tape.gradient(loss, table)).numpy()[:, 0]
    source = int(negatives.ids.numpy().item())
    assert source == 7  # the highest-scoring allowed item
    alpha = (0.7 - float(negatives.embeddings.numpy().item())) / (0.7 - 0.2)
    sig = 1.0 / (1.0 + math.exp(-float(score.numpy().item())))
    expected = np.zeros(8)
    expected[2], expected[7] = alpha * sig, (1 - alpha) * sig
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-6)


# --- AdaSIR -------------------------------------------------------------------------------------------------------


def test_adasir_resampling_draws_follow_the_softmax_with_replacement():
    logits = tf.constant(np.tile([[0.0, 1.0, 2.0]], [200, 1]), tf.float32)
    draws = draws_with_replacement(tf.random.Generator.from_seed(5), logits, 50).numpy()
    assert draws.shape == (200, 50)
    counts = np.bincount(draws.ravel(), minlength=3)
    probabilities = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    assert chi_square(counts, probabilities) < CHI2_CRITICAL_001[2]


def test_adasir_pool_merge_keeps_old_and_fresh_items_uniformly():
    old = tf.constant([[1, 2], [0, 0]] * 2000)
    fresh = tf.constant([[3, 4], [5, 6]] * 2000)
    empty = tf.constant([False, True] * 2000)
    merged = merge_pools(tf.random.Generator.from_seed(6), old, fresh, empty).numpy()
    np.testing.assert_array_equal(merged[1::2], np.tile([[5, 6]], [2000, 1]))  # a first visit takes the fresh pool
    # The others: 2 draws with replacement from {1, 2, 3, 4}, each item 1/4.
    counts = np.bincount(merged[0::2].ravel(), minlength=5)[1:]
    assert chi_square(counts, np.full(4, 0.25)) < CHI2_CRITICAL_001[3]
    assert (merged[0::2, 0] == merged[0::2, 1]).mean() == pytest.approx(0.25, abs=0.04)  # with replacement


def test_adasir_picks_from_the_pool_then_refreshes_it_by_importance_resampling():
    # 20 items scored by id, sequences {1, 2, 20}: the best allowed item is 19, and at temperature 1e-3 the
    # resampling takes the argmax of its 200 uniform draws (19: missed with probability (16/17)^200 ~ 5e-6).
    sampler = make_sampler("adasir", n_items=20, n_users=2, k=2, pool_size=3, temperature=1e-3, seed=7)
    sampler.pool_ids.scatter_nd_update([[1]], [[5, 6, 7]])  # user 1 has a pool; user 2 is new
    context = scored_context(np.arange(21), np.ones([2, 40]), np.ones([2, 40]), [[1, 2, 20]] * 2, user_index=[1, 2])
    ids = sampler.sample(context).ids.numpy()
    assert ids.shape == (2, 40, 2)
    # User 1's negatives: uniform over its old pool (80 draws).
    counts = np.array([(ids[0] == i).sum() for i in (5, 6, 7)])
    assert counts.sum() == 80 and chi_square(counts, np.full(3, 1 / 3)) < CHI2_CRITICAL_001[2]
    # User 2's first visit: the freshly resampled pool, all 19.
    assert (ids[1] == 19).all()
    pools = sampler.pool_ids.numpy()
    np.testing.assert_array_equal(pools[2], [19, 19, 19])
    assert set(pools[1]) <= {5, 6, 7, 19}


# --- GNNO ---------------------------------------------------------------------------------------------------------


def table(keys, values) -> dict[tuple[int, int], float]:
    width = 5
    return {(int(k) // width, int(k) % width): float(v) for k, v in zip(keys, values, strict=True)}


def test_gnno_jaccard_of_neighbourhoods_by_hand():
    # Path 1-2-3-4 with window 1: N(1) = {2}, N(2) = {1, 3}, N(3) = {2, 4}, N(4) = {3}.
    # J(1, 3) = |{2}| / |{2, 4}| = 1/2, J(2, 4) = 1/2; J(1, 2) = J(2, 3) = J(1, 4) = 0 (absent); J(i, i) = 1.
    keys, values = item_jaccard([np.array([1, 2, 3, 4])], n_items=4, window=1)
    assert (np.diff(keys) > 0).all()
    expected = {(1, 3): 0.5, (3, 1): 0.5, (2, 4): 0.5, (4, 2): 0.5, (1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0, (4, 4): 1.0}
    assert table(keys, values) == pytest.approx(expected)
    # Window 2 on 1-2-3: a triangle, N(i) = the other two; J(1, 2) = |{3}| / |{1, 2, 3}| = 1/3.
    keys, values = item_jaccard([np.array([1, 2, 3])], n_items=4, window=2)
    assert table(keys, values)[(1, 2)] == pytest.approx(1 / 3)
    # min_similarity drops the pairs at or below it.
    keys, values = item_jaccard([np.array([1, 2, 3, 4])], n_items=4, window=1, min_similarity=0.5)
    assert set(table(keys, values)) == {(1, 1), (2, 2), (3, 3), (4, 4)}


def test_gnno_jaccard_matches_the_authors_dense_formula():
    rng = np.random.default_rng(8)
    n_items = 30
    sequences = [rng.integers(1, n_items + 1, rng.integers(2, 9)) for _ in range(40)]
    adjacency = np.zeros([n_items + 1, n_items + 1])
    for s in sequences:
        for k in (1, 2, 3):
            for a, b in zip(s[:-k], s[k:], strict=True):
                adjacency[a, b] = adjacency[b, a] = 1.0
    common = adjacency @ adjacency.T
    degree = np.diag(common)
    with np.errstate(invalid="ignore", divide="ignore"):
        dense = np.nan_to_num(common / (degree[:, None] + degree[None, :] - common))
    keys, values = item_jaccard(sequences, n_items)
    rows, cols = np.nonzero(dense)
    np.testing.assert_allclose(
        SimilarityTable(keys, values, n_items)(rows, cols).numpy(),
        dense[rows, cols],
        rtol=1e-6,
    )
    assert len(keys) == len(rows)
    assert SimilarityTable(keys, values, n_items)([5], [0]).numpy() == [0.0]  # absent pairs: 0


def test_gnno_graph_draws_follow_exp_overlap_below_the_hardness():
    # Target 1 (its sequence: {1}); J(1, 2) = .3, J(1, 3) = .1, J(1, 4) = 0. At hardness .2, item 2 is excluded and
    # p(3) : p(4) = e^.1 : 1; at hardness .4 all three: e^.3 : e^.1 : 1.
    similarity = SimilarityTable([1 * 5 + 2, 1 * 5 + 3], [0.3, 0.1], n_items=4)
    exclusion, targets = tf.ones([400, 1], tf.int32), tf.ones([400, 5], tf.int32)
    generator = tf.random.Generator.from_seed(9)
    for hardness, allowed, weights in [(0.2, [3, 4], [0.1, 0.0]), (0.4, [2, 3, 4], [0.3, 0.1, 0.0])]:
        ids = graph_negatives(generator, similarity, exclusion, targets, 4, 20, tf.constant(hardness)).numpy()
        assert ids.shape == (400, 5, 20) and set(np.unique(ids)) == set(allowed)
        counts = np.array([(ids == i).sum() for i in allowed])
        probabilities = np.exp(weights) / np.exp(weights).sum()
        assert chi_square(counts, probabilities) < CHI2_CRITICAL_001[len(allowed) - 1]
        uniform = np.full(len(allowed), 1 / len(allowed))
        assert chi_square(counts, uniform) > CHI2_CRITICAL_001[len(allowed) - 1]  # the overlap weights matter


def test_gnno_graph_draws_keep_their_last_proposal_when_every_item_is_too_similar():
    # Every pair of target 1 overlaps .9 > hardness .05: no proposal is ever accepted, and after MAX_ROUNDS each
    # draw keeps its last uniform proposal from outside the sequence instead of looping forever.
    similarity = SimilarityTable([1 * 6 + j for j in range(1, 6)], [0.9] * 5, n_items=5)
    exclusion, targets = tf.constant([[1, 2]] * 50), tf.ones([50, 3], tf.int32)
    ids = graph_negatives(tf.random.Generator.from_seed(3), similarity, exclusion, targets, 5, 4, tf.constant(0.05))
    assert ids.shape == (50, 3, 4) and set(np.unique(ids.numpy())) == {3, 4, 5}


def test_gnno_hardness_curriculum():
    sampler = make_sampler("gnno", n_items=10)
    assert float(sampler.hardness()) == pytest.approx(0.05)
    sampler.on_epoch_end(0)
    assert float(sampler.hardness()) == pytest.approx(0.06)
    sampler.on_epoch_end(100)
    assert float(sampler.hardness()) == pytest.approx(0.4)


@pytest.mark.parametrize("hardness_max, expected_share_of_6", [(0.4, 0.2), (0.6, 1.0)])
def test_gnno_picks_the_best_of_uniform_and_graph_candidates(hardness_max, expected_share_of_6):
    # 6 items scored by id, sequences {1}, target 1; J(1, 6) = .5 (a likely false negative under hardness .4).
    # 1 uniform + 60 graph candidates, top-1: the graph draws cover {2, 3, 4, 5} (missing 5: (3/4)^60 ~ 3e-8) and
    # never 6 while the hardness is below .5, so the pick is 6 only when the single uniform candidate is 6 (1/5);
    # once the hardness admits 6 the graph draws hold it and the pick is always 6.
    sampler = make_sampler(
        "gnno", n_items=6, n_users=300, pool_size=61, graph_negatives=60, top_m=1, hardness_max=hardness_max, seed=10
    )
    sampler.similarity = SimilarityTable([1 * 7 + 6], [0.5], n_items=6)
    sampler.epoch.assign(1000)  # hardness = hardness_max
    context = scored_context(np.arange(7), np.ones([300, 4]), np.ones([300, 4]), np.ones([300, 1]))
    ids = sampler.sample(context).ids.numpy()
    assert set(np.unique(ids)) <= {5, 6}
    share = (ids == 6).mean()
    if expected_share_of_6 == 1.0:
        assert share == 1.0
    else:
        # One uniform candidate per sequence, shared by its 4 positions: 300 independent trials.
        assert abs(share - 0.2) < 4 * math.sqrt(0.2 * 0.8 / ids.shape[0])


def test_gnno_prepare_builds_the_graph_of_the_training_sequences():
    sampler = make_sampler("gnno", n_items=4, window=1, min_similarity=0.0)
    sampler.prepare([np.array([1, 2, 3, 4])])
    found = sampler.similarity([1, 2, 1], [3, 4, 2]).numpy()
    np.testing.assert_allclose(found, [0.5, 0.5, 0.0])


# --- Configuration and training -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, params",
    [
        ("mixgcf_plus", {"top_m": 0}),
        ("mixgcf_plus", {"pool_size": 5, "top_m": 6}),
        ("mixgcf", {"pool_scope": "user"}),
        ("adasir", {"pool_size": 0}),
        ("adasir", {"temperature": 0.0}),
        ("gnno", {"graph_negatives": 100}),
        ("gnno", {"min_similarity": 0.05}),
    ],
)
def test_invalid_parameters_are_rejected(name, params):
    with pytest.raises(ValueError, match=name):
        make_sampler(name, n_items=200, **params)


def test_authors_defaults():
    assert sampler_params("mixgcf", None).pool_size == 100
    assert (sampler_params("mixgcf_plus", None).pool_size, sampler_params("mixgcf_plus", None).top_m) == (100, 10)
    adasir = sampler_params("adasir", None)
    assert (adasir.sample_size, adasir.pool_size, adasir.temperature) == (200, 10, 1.0)
    gnno = sampler_params("gnno", None)
    assert (gnno.pool_size, gnno.graph_negatives, gnno.top_m, gnno.window) == (100, 10, 10, 3)
    assert (gnno.hardness_start, gnno.hardness_step, gnno.hardness_max) == (0.05, 0.01, 0.4)


@pytest.mark.parametrize("name", TABLE3)
def test_a_tiny_model_trains_a_few_steps(name):
    rng = np.random.default_rng(11)
    n_items, batch, max_len = 60, 16, 8
    sequences = np.stack([rng.choice(np.arange(1, n_items + 1), max_len + 1, replace=False) for _ in range(batch)])
    data = {
        "input_ids": tf.constant(sequences[:, :-1], tf.int32),
        "target_ids": tf.constant(sequences[:, 1:], tf.int32),
        "exclusion_ids": tf.constant(sequences, tf.int32),
        "user_index": tf.range(1, batch + 1),
    }
    sampler = make_sampler(name, n_items=n_items, n_users=batch, **({} if name == "adasir" else {"pool_size": 20}))
    if sampler.needs_train_sequences:
        sampler.prepare(list(sequences))
    encoder = SASRec(n_items=n_items, max_len=max_len, dim=8, num_layers=1, num_heads=1, dropout=0.1)
    model = SequentialRecommender(encoder, sampler, "bce")
    model.build_for_input(max_len)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    step = tf.function(model.train_step)
    losses = [float(step(data)["loss"]) for _ in range(4)]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] != losses[0]  # the weights moved


def test_training_builds_the_gnno_graph_from_the_training_split(tiny_dataset, tmp_path, caplog):
    from mdcns_tf.config_loader import load_config
    from mdcns_tf.train import run

    overrides = [
        f"data.dir={tiny_dataset}",
        f"output_dir={tmp_path}",
        "data.max_len=12",
        "data.batch_size=512",
        "model.dim=16",
        "model.num_layers=1",
        "model.num_heads=1",
        "train.epochs=1",
        "train.verbose=0",
        "train.tensorboard=false",
        "eval.test=false",
        "export.enabled=false",
        "sampler.name=gnno",
        "sampler.gnno={pool_size: 20, graph_negatives: 5, top_m: 2}",
    ]
    with caplog.at_level(logging.INFO, logger="mdcns_tf.samplers.gnno"):
        result = run(load_config(None, overrides))
    built = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gnno:")]
    assert built and int(built[0].split()[1]) > 0, "the item graph was not built from the training split"
    assert math.isfinite(result["history"][0]["loss"])
