"""Lazy item-table updates (`mdcns_tf.training.optimizers`, ``train.sparse_updates``) on tables small enough to
check by hand: LazyAdam against Keras's Adam, the fused pool scoring's sparse gradient against its dense one, and
train steps of both trainers that move only the rows they touched."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from conftest import training_batch

import mdcns_tf  # noqa: F401
from mdcns_tf.batch import EXCLUSION_IDS
from mdcns_tf.config_loader import load_config
from mdcns_tf.features import Metadata
from mdcns_tf.samplers import pool_scoring
from mdcns_tf.samplers.pool_scoring import distinct_ids, pool_rows, score_position_pools
from mdcns_tf.training import factory, mdcns_model
from mdcns_tf.training.optimizers import LAZY_MIN_ROWS, XLA_DENSE_MIN_ELEMENTS, LazyAdam, lazy_updates

ROWS, DIM = 6, 3


def table() -> tf.Variable:
    return tf.Variable(np.arange(ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM) / 10.0)


def sparse(rows: list[int], values: list[list[float]]) -> tf.IndexedSlices:
    return tf.IndexedSlices(tf.constant(values, tf.float32), tf.constant(rows, tf.int32), tf.constant([ROWS, DIM]))


def slots(optimizer: keras.optimizers.Optimizer) -> tuple[np.ndarray, np.ndarray]:
    return optimizer._momentums[0].numpy(), optimizer._velocities[0].numpy()


def test_first_step_moves_the_gradients_rows_exactly_as_adam_and_no_other():
    gradient = sparse([1, 3], [[1.0, -2.0, 0.5], [0.25, 0.0, -1.0]])
    lazy_table, dense_table = table(), table()
    lazy, dense = LazyAdam(0.1), keras.optimizers.Adam(0.1)
    lazy.apply_gradients([(gradient, lazy_table)])
    dense.apply_gradients([(tf.convert_to_tensor(gradient), dense_table)])  # the same gradient, dense
    before = table().numpy()
    np.testing.assert_array_equal(lazy_table.numpy()[[1, 3]], dense_table.numpy()[[1, 3]])
    np.testing.assert_array_equal(lazy_table.numpy()[[0, 2, 4, 5]], before[[0, 2, 4, 5]])
    for lazy_slot, dense_slot in zip(slots(lazy), slots(dense), strict=True):
        np.testing.assert_array_equal(lazy_slot[[1, 3]], dense_slot[[1, 3]])
        assert not lazy_slot[[0, 2, 4, 5]].any()


def test_untouched_rows_keep_value_and_moments_where_adam_moves_them_on():
    lazy_table, adam_table = table(), table()
    lazy, adam = LazyAdam(0.1), keras.optimizers.Adam(0.1)
    for optimizer, variable in ((lazy, lazy_table), (adam, adam_table)):
        optimizer.apply_gradients([(sparse([1, 3], [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]), variable)])
    after_first = lazy_table.numpy().copy(), *(s.copy() for s in slots(lazy))
    for optimizer, variable in ((lazy, lazy_table), (adam, adam_table)):
        optimizer.apply_gradients([(sparse([1], [[1.0, 1.0, 1.0]]), variable)])  # row 3 not in the second step
    np.testing.assert_array_equal(lazy_table.numpy()[3], after_first[0][3])
    np.testing.assert_array_equal(slots(lazy)[0][3], after_first[1][3])
    np.testing.assert_array_equal(slots(lazy)[1][3], after_first[2][3])
    assert not np.allclose(adam_table.numpy()[3], after_first[0][3])  # Keras's Adam: momentum moves it on
    assert not np.allclose(lazy_table.numpy()[1], after_first[0][1])


def test_rows_touched_at_every_step_follow_adam():
    lazy_table, dense_table = table(), table()
    lazy, dense = LazyAdam(0.05), keras.optimizers.Adam(0.05)
    rng = np.random.default_rng(0)
    for _ in range(4):
        gradient = sparse(list(range(ROWS)), rng.normal(size=(ROWS, DIM)).tolist())
        lazy.apply_gradients([(gradient, lazy_table)])
        dense.apply_gradients([(tf.convert_to_tensor(gradient), dense_table)])
    np.testing.assert_allclose(lazy_table.numpy(), dense_table.numpy(), rtol=1e-6, atol=1e-7)


def test_duplicate_ids_in_one_gradient_are_summed_once():
    duplicated, merged = table(), table()
    three_rows = sparse([2, 4, 2], [[1.0, 0.0, 2.0], [1.0, 1.0, 1.0], [3.0, -1.0, 0.0]])
    LazyAdam(0.1).apply_gradients([(three_rows, duplicated)])
    LazyAdam(0.1).apply_gradients([(sparse([2, 4], [[4.0, -1.0, 2.0], [1.0, 1.0, 1.0]]), merged)])
    np.testing.assert_array_equal(duplicated.numpy(), merged.numpy())


@pytest.mark.parametrize("n_rows", [50, 10_000])  # many ids against the rows (a count) and few (a hash)
def test_distinct_ids_both_ways(n_rows):
    ids = tf.constant([7, 3, 7, 0, 3, 9, 9, 9, 1, 7], tf.int32)
    unique, index = distinct_ids(ids, n_rows)
    assert sorted(unique.numpy().tolist()) == [0, 1, 3, 7, 9]
    np.testing.assert_array_equal(tf.gather(unique, index).numpy(), ids.numpy())


def test_weight_decay_only_on_the_touched_rows_of_a_sparse_gradient():
    variable = table()
    LazyAdam(0.1, weight_decay=0.5).apply_gradients([(sparse([2], [[0.0, 0.0, 0.0]]), variable)])
    before = table().numpy()
    np.testing.assert_allclose(variable.numpy()[2], before[2] * (1 - 0.1 * 0.5), rtol=1e-6)  # zero gradient: decay
    np.testing.assert_array_equal(np.delete(variable.numpy(), 2, axis=0), np.delete(before, 2, axis=0))


def test_dense_gradients_take_adams_own_path_weight_decay_included():
    lazy_variable, adam_variable = table(), table()
    gradient = tf.constant(np.linspace(-1, 1, ROWS * DIM).reshape(ROWS, DIM), tf.float32)
    LazyAdam(0.1, weight_decay=0.2).apply_gradients([(gradient, lazy_variable)])
    keras.optimizers.Adam(0.1, weight_decay=0.2).apply_gradients([(gradient, adam_variable)])
    np.testing.assert_array_equal(lazy_variable.numpy(), adam_variable.numpy())


def test_a_large_dense_gradient_takes_an_xla_compiled_adam_equal_to_keras_within_rounding():
    rows = XLA_DENSE_MIN_ELEMENTS // 64  # a table at the size from which LazyAdam compiles dense updates
    start = np.random.default_rng(2).normal(size=(rows, 64)).astype(np.float32)
    lazy_variable, adam_variable = tf.Variable(start), tf.Variable(start)
    lazy, adam = LazyAdam(0.01), keras.optimizers.Adam(0.01)
    for seed in range(2):
        gradient = tf.random.stateless_normal([rows, 64], seed=[seed, 0])
        lazy.apply_gradients([(gradient, lazy_variable)])
        adam.apply_gradients([(gradient, adam_variable)])
    assert lazy._dense_update_xla.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(lazy_variable.numpy(), adam_variable.numpy(), rtol=1e-5, atol=1e-6)


def test_checkpoints_are_interchangeable_with_adams(tmp_path):
    variable = table()
    adam = keras.optimizers.Adam(0.1)
    adam.apply_gradients([(sparse([1], [[1.0, 2.0, 3.0]]), variable)])
    path = tf.train.Checkpoint(optimizer=adam, table=variable).save(str(tmp_path / "ckpt"))
    restored_variable = tf.Variable(tf.zeros([ROWS, DIM]))
    lazy = LazyAdam(0.1)
    lazy.build([restored_variable])
    tf.train.Checkpoint(optimizer=lazy, table=restored_variable).restore(path).assert_consumed()
    for lazy_slot, adam_slot in zip(slots(lazy), slots(adam), strict=True):
        np.testing.assert_array_equal(lazy_slot, adam_slot)
    assert int(lazy.iterations) == 1


def test_fused_pool_scoring_sparse_gradient_equals_the_dense_one_on_the_touched_rows():
    n_rows = 30
    rng = np.random.default_rng(1)
    variable = tf.Variable(rng.normal(size=(n_rows, 4)).astype(np.float32))
    states = tf.constant(rng.normal(size=(2, 3, 4)).astype(np.float32))
    pool_ids = tf.constant(rng.integers(1, n_rows, size=(2, 3, 5)), tf.int32)  # 30 draws of 29 ids: duplicates
    upstream = tf.constant(rng.normal(size=(2, 3, 5)).astype(np.float32))

    def gradients(rows):
        with tf.GradientTape() as tape:
            tape.watch(states)
            scores = score_position_pools(states, variable, pool_ids, rows)
            loss = tf.reduce_sum(scores * upstream)
        return (scores, *tape.gradient(loss, [states, variable]))

    dense_scores, dense_states, dense_table = gradients(None)
    sparse_scores, sparse_states, sparse_table = gradients(pool_rows(pool_ids, n_rows))
    assert isinstance(dense_table, tf.Tensor) and isinstance(sparse_table, tf.IndexedSlices)
    assert set(sparse_table.indices.numpy().tolist()) == set(pool_ids.numpy().ravel().tolist()) | {0}  # 0: padding
    np.testing.assert_allclose(sparse_scores.numpy(), dense_scores.numpy(), rtol=1e-6)
    np.testing.assert_allclose(sparse_states.numpy(), dense_states.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tf.convert_to_tensor(sparse_table).numpy(), dense_table.numpy(), rtol=1e-5, atol=1e-6)


# Train steps: a catalogue much larger than a step's draws, so that most rows are untouched.
N_ITEMS, MAX_LEN = 2000, 8


def tiny_config(*overrides: str):
    return load_config(
        None,
        ["model.dim=8", "model.dropout=0.0", f"data.max_len={MAX_LEN}", "train.sparse_updates=lazy", *overrides],
    )


def tiny_batch() -> dict[str, tf.Tensor]:
    return training_batch(N_ITEMS, MAX_LEN)


def built(config):
    metadata = Metadata(1, 10, N_ITEMS, [1] * (N_ITEMS + 1), {}, {}, {})
    model = factory.build_model(config, metadata)
    factory.prepare_for_training(model, config)
    return model


def moved_rows(before: np.ndarray, variable: tf.Variable) -> set[int]:
    return set(np.flatnonzero((variable.numpy() != before).any(axis=1)).tolist())


def recording(monkeypatch, module, name: str) -> list:
    """Replaces ``module.name`` with a wrapper that keeps every output (the step runs eagerly)."""
    seen, original = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(module, name, wrapper)
    return seen


@pytest.mark.parametrize("scope", ["position", "sequence"])
def test_an_mdcns_step_with_lazy_updates_moves_only_the_rows_it_touched(monkeypatch, scope):
    model = built(
        tiny_config(
            "trainer=mdcns",
            "mdcns.pool_size=10",
            f"mdcns.pool_scope={scope}",
            "mdcns.pool_source=catalogue",
            "data.batch_size=4",
        )
    )
    assert isinstance(model.optimizer, LazyAdam) and isinstance(model.peer_optimizer, LazyAdam)
    assert model.sparse_pool_gradient  # 4 x 8 x 10 draws of 2,001 rows: the pool's distinct rows
    pools = recording(monkeypatch, mdcns_model, "sample_excluding")
    tables = [model.encoder.item_embedding.embeddings, model.peer.item_embedding.embeddings]
    before = [t.numpy().copy() for t in tables]
    batch = tiny_batch()
    model.train_step(batch)
    touched = set(batch[EXCLUSION_IDS].numpy().ravel().tolist()) | set(pools[0].numpy().ravel().tolist()) | {0}
    assert len(touched) < N_ITEMS // 2
    for table_before, variable, optimizer in zip(before, tables, (model.optimizer, model.peer_optimizer), strict=True):
        moved = moved_rows(table_before, variable)
        assert moved and moved <= touched
        m = optimizer._momentums[optimizer._index_dict[optimizer._var_key(variable)]].numpy()
        assert set(np.flatnonzero(m.any(axis=1)).tolist()) <= touched


def test_a_pool_per_position_drawing_most_of_the_table_gets_the_dense_gradient_under_lazy_updates(monkeypatch):
    calls = recording(monkeypatch, pool_scoring, "pool_rows")
    monkeypatch.setattr(mdcns_model, "pool_rows", pool_scoring.pool_rows)
    common = ("trainer=mdcns", "mdcns.pool_size=10", "mdcns.pool_scope=position", "mdcns.pool_source=catalogue")
    few = built(tiny_config(*common, "data.batch_size=4"))  # 4 x 8 x 10 draws of 2,001 rows
    many = built(tiny_config(*common, "data.batch_size=64"))  # 5,120 draws: more than half the rows
    assert few.sparse_pool_gradient and not many.sparse_pool_gradient
    table = many.encoder.item_embedding.embeddings
    before = table.numpy().copy()
    many.train_step(tiny_batch())
    assert not calls and isinstance(many.optimizer, LazyAdam)
    assert moved_rows(before, table)  # a dense gradient, Adam's own update (first step: untouched rows stay)


def test_a_single_model_step_with_lazy_updates_moves_only_the_rows_it_touched(monkeypatch):
    model = built(tiny_config("trainer=single", "sampler.name=uniform", "sampler.num_negatives=2"))
    assert isinstance(model.optimizer, LazyAdam)
    negatives = recording(monkeypatch, model.sampler, "sample")
    variable = model.encoder.item_embedding.embeddings
    before = variable.numpy().copy()
    batch = tiny_batch()
    model.train_step(batch)
    touched = set(batch[EXCLUSION_IDS].numpy().ravel().tolist()) | set(negatives[0].ids.numpy().ravel().tolist())
    moved = moved_rows(before, variable)
    assert moved and moved <= touched | {0}


def test_auto_is_dense_keras_adam_below_the_threshold_and_lazy_from_it():
    assert not lazy_updates("auto", 12_101) and not lazy_updates("auto", LAZY_MIN_ROWS - 2)
    assert lazy_updates("auto", LAZY_MIN_ROWS - 1) and lazy_updates("lazy", 40) and not lazy_updates("dense", 10**7)
    model = built(load_config(None, ["model.dim=8", f"data.max_len={MAX_LEN}"]))  # auto, 2,000 items
    assert type(model.optimizer) is keras.optimizers.Adam and not model.lazy_updates


def test_dense_updates_keep_the_dense_pool_gradient(monkeypatch):
    calls = recording(monkeypatch, pool_scoring, "pool_rows")
    monkeypatch.setattr(mdcns_model, "pool_rows", pool_scoring.pool_rows)
    model = built(
        tiny_config("trainer=mdcns", "mdcns.pool_size=10", "mdcns.pool_scope=position", "train.sparse_updates=dense")
    )
    assert type(model.peer_optimizer) is keras.optimizers.Adam
    model.train_step(tiny_batch())
    assert not calls


def test_auto_pool_source_draws_from_the_catalogue_under_dense_updates_and_from_a_step_pool_under_lazy():
    common = ("trainer=mdcns", "mdcns.pool_size=10", "mdcns.pool_scope=position", "data.batch_size=4")
    assert built(tiny_config(*common, "train.sparse_updates=dense")).step_pool_rows is None  # Beauty: unchanged
    assert built(tiny_config(*common)).step_pool_rows == 4 * 10  # lazy: batch x pool_size rows a step
    assert built(tiny_config(*common, "mdcns.pool_source=catalogue")).step_pool_rows is None
    sequence = built(tiny_config("trainer=mdcns", "mdcns.pool_scope=sequence", "mdcns.pool_source=step"))
    assert sequence.step_pool_rows is None  # a pool per sequence already touches only batch x pool_size rows


def test_a_step_pool_gives_every_position_its_own_pool_from_the_steps_rows_and_moves_only_those(monkeypatch):
    model = built(tiny_config("trainer=mdcns", "mdcns.pool_size=10", "mdcns.pool_scope=position", "data.batch_size=4"))
    step_draws = recording(monkeypatch, mdcns_model, "sample_excluding")
    local_draws = recording(monkeypatch, mdcns_model, "sample_from_rows")
    tables = [model.encoder.item_embedding.embeddings, model.peer.item_embedding.embeddings]
    before = [t.numpy().copy() for t in tables]
    batch = tiny_batch()
    model.train_step(batch)
    step_ids = step_draws[0].numpy()[0]
    assert step_ids.shape == (4 * 10,)
    local = local_draws[0].numpy()  # (P, N): one pool per trained position, indices into the step's rows
    assert local.shape == (4 * MAX_LEN, 10) and local.min() >= 0 and local.max() < step_ids.size
    pools = step_ids[local]
    exclusions = batch[EXCLUSION_IDS].numpy()
    for row, pool in enumerate(pools):  # positions in row-major order: sequence row // MAX_LEN
        assert not set(pool.tolist()) & set(exclusions[row // MAX_LEN].tolist())
    assert len({tuple(sorted(p.tolist())) for p in pools}) > 1  # the positions do not share one pool
    touched = set(exclusions.ravel().tolist()) | set(step_ids.tolist()) | {0}
    for table_before, variable in zip(before, tables, strict=True):
        moved = moved_rows(table_before, variable)
        assert moved and moved <= touched


def test_sample_from_rows_draws_every_allowed_row_and_never_an_excluded_item():
    from mdcns_tf.samplers.candidates import sample_from_rows

    rows = tf.constant([5, 6, 7, 8, 6], tf.int32)
    exclusions = tf.constant([[6, 0], [5, 8]], tf.int32)
    drawn = sample_from_rows(tf.random.Generator.from_seed(1), exclusions, rows, 4000).numpy()
    items = rows.numpy()[drawn]
    assert set(items[0].tolist()) == {5, 7, 8} and set(items[1].tolist()) == {6, 7}
    # uniform over the allowed rows: row 1 and row 4 (both item 6) count twice for the second sequence
    counts = np.bincount(drawn[1], minlength=5) / 4000
    np.testing.assert_allclose(counts[[1, 2, 4]], [1 / 3] * 3, atol=0.04)
