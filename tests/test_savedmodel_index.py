"""The top-K indexes of the export (`mdcns_tf.savedmodel.index`), the bfloat16 one above all: rounding bound, exact
candidate selection, exact re-scoring, exclusions, and an export that answers like the exact one."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from test_export import MAX_LEN, N_ITEMS, histories, make_encoder, reference_top_k

import mdcns_tf  # noqa: F401
from mdcns_tf.config import ConfigError
from mdcns_tf.config_loader import load_config
from mdcns_tf.savedmodel import assets, publish, signatures
from mdcns_tf.savedmodel.index import RescoredBruteForce, compact_table, top_candidates
from mdcns_tf.savedmodel.module import ServingModule

TOP_K = 5


def index_over(rows: np.ndarray, k: int, rescore: int) -> RescoredBruteForce:
    """A `RescoredBruteForce` over ``rows`` `(n, d)` (row i = item i)."""
    table = tf.Variable(rows.astype(np.float32))
    compact = tf.Variable(compact_table(table))
    return RescoredBruteForce(k=k, rescore=rescore).index_tables(table, compact)


def test_bfloat16_rounds_to_nearest_even_within_two_to_the_minus_8_per_element():
    # bfloat16 keeps 8 significant bits: around 1 the spacing is 2**-7.
    x = np.array([[1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-9, -3.0, 1e-20, 0.0]], np.float32)
    got = compact_table(x).numpy().astype(np.float32)
    # 1 + 2**-8 is halfway between 1 and 1 + 2**-7: to the even mantissa (1); 1 + 3 * 2**-8 is halfway between
    # 1 + 2**-7 and 1 + 2**-6: to 1 + 2**-6 (truncation would give 1 + 2**-7).
    np.testing.assert_array_equal(got[0, :5], [1.0, 1.0, 1 + 2**-6, 1.0, -3.0])
    assert got[0, 6] == 0.0
    # Rows of very different scales: the error is relative to each element, hence bounded per row by its max.
    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 16)).astype(np.float32) * np.logspace(-6, 3, 50, dtype=np.float32)[:, None]
    back = compact_table(table).numpy().astype(np.float32)
    error = np.abs(back - table)
    assert np.all(error <= 2**-8 * np.abs(table))
    assert np.all(error.max(axis=1) <= 2**-8 * np.abs(table).max(axis=1))
    assert error.max(axis=1).min() > 0  # it does round (the bound is not met by an identity)


def test_top_candidates_by_block_maxima_is_exact():
    # Blocks of 3: [0 9 1] [8 7 2] [3 4 5] [6 -inf -inf]: maxima 9 8 5 6, best two blocks 0 and 1.
    scores = tf.constant([[0.0, 9, 1, 8, 7, 2, 3, 4, 5, 6]])
    values, ids = top_candidates(scores, k=3, block=3)
    assert values.numpy().tolist() == [[9, 8, 7]] and ids.numpy().tolist() == [[1, 3, 4]]
    # The top two in one block: the other block taken (max 6) contributes nothing.
    scores = tf.constant([[9.0, 8, 0, 1, 2, 3, 4, 5, 1, 6]])
    values, ids = top_candidates(scores, k=2, block=3)
    assert values.numpy().tolist() == [[9, 8]] and ids.numpy().tolist() == [[0, 1]]
    # Random rows, a catalog that is not a multiple of the block, bfloat16 as in the index.
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(4, 1001)).astype(np.float32)
    values, ids = top_candidates(tf.constant(scores), k=37, block=16)
    expected = np.argsort(-scores, axis=1)[:, :37]
    np.testing.assert_array_equal(ids.numpy(), expected)
    np.testing.assert_array_equal(values.numpy(), np.take_along_axis(scores, expected, axis=1))
    ids16 = top_candidates(tf.constant(scores, tf.bfloat16), k=37, block=16)[1].numpy()
    rounded = tf.cast(tf.constant(scores, tf.bfloat16), tf.float32).numpy()
    threshold = np.sort(rounded, axis=1)[:, -37]
    assert np.all(np.take_along_axis(rounded, ids16, axis=1) >= threshold[:, None])
    assert all(len(set(row)) == 37 for row in ids16.tolist())


def test_rescoring_separates_what_bfloat16_cannot():
    # Items 1..5 score 1 + i * 2**-11 against q = (1, 0): one bfloat16 value (spacing 2**-7), five exact values.
    rows = np.zeros((9, 2), np.float32)
    rows[1:6, 0] = 1 + np.arange(1, 6) * 2.0**-11
    rows[6:, 0] = [0.5, 0.25, 0.125]
    query = tf.constant([[1.0, 0.0]])
    assert len(set(compact_table(rows).numpy()[1:6, 0].astype(np.float32).tolist())) == 1
    # A window of the 5 tied candidates: the exact top 2 (5 then 4) with their float32 scores.
    scores, ids = index_over(rows, k=2, rescore=5)(query)
    assert ids.numpy().tolist() == [[5, 4]]
    np.testing.assert_array_equal(scores.numpy(), [[rows[5, 0], rows[4, 0]]])
    # A window of everything is brute force, on random rows of varied norms.
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(300, 8)).astype(np.float32) * rng.uniform(0.2, 3, size=(300, 1)).astype(np.float32)
    queries = rng.normal(size=(6, 8)).astype(np.float32)
    scores, ids = index_over(rows, k=10, rescore=300)(tf.constant(queries))
    exact = queries @ rows.T
    np.testing.assert_array_equal(ids.numpy(), np.argsort(-exact, axis=1)[:, :10])
    np.testing.assert_allclose(scores.numpy(), -np.sort(-exact, axis=1)[:, :10], rtol=1e-6)


def test_exclusions_are_removed_and_widen_the_window():
    # Item i scores i; the best items 9, 8 and 6 (and padding 0) are excluded: the answer is 7 then 5, although
    # the window for 2 results (rescore 2) alone would hold only 9 and 8.
    rows = np.stack([np.arange(10, dtype=np.float32), np.zeros(10, np.float32)], axis=1)
    index = index_over(rows, k=2, rescore=2)
    scores, ids = index.query_with_exclusions(tf.constant([[1.0, 0.0]]), exclusions=tf.constant([[0, 9, 8, 6]]))
    assert ids.numpy().tolist() == [[7, 5]] and scores.numpy().tolist() == [[7.0, 5.0]]
    with pytest.raises(ValueError, match=r"rescore \(1\) must be at least k \(2\)"):
        RescoredBruteForce(k=2, rescore=1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(encoder, path) of a bfloat16 export of a small catalogue, checked by `_verify` before it was published."""
    encoder = make_encoder()
    root = str(tmp_path_factory.mktemp("compact"))
    return encoder, publish.export_saved_model(encoder, root, "m", MAX_LEN, TOP_K, index="bfloat16", rescore=TOP_K)


def test_bfloat16_export_answers_like_the_exact_one(exported):
    encoder, path = exported
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == set(signatures.SIGNATURES)
    ids = histories(16)
    ids[3] = 0  # an empty history: the no-item marker
    out = loaded.signatures["serving_default"](item_ids=tf.constant(ids))
    # The exact index's answer (numpy brute force, history and padding masked): same ids, same float32 scores.
    expected_ids, expected_scores = reference_top_k(encoder, np.delete(ids, 3, axis=0), TOP_K)
    np.testing.assert_array_equal(np.delete(out["item_ids"].numpy(), 3, axis=0), expected_ids)
    np.testing.assert_allclose(np.delete(out["scores"].numpy(), 3, axis=0), expected_scores, rtol=1e-5, atol=1e-5)
    assert out["item_ids"].numpy()[3].tolist() == [0] * TOP_K
    # The other signatures are untouched by the index.
    query = loaded.signatures["query_embedding"](item_ids=tf.constant(ids))["embedding"].numpy()
    np.testing.assert_allclose(
        np.delete(query, 3, axis=0),
        encoder(tf.constant(np.delete(ids, 3, axis=0)), training=False)[:, -1, :].numpy(),
        rtol=1e-4,
        atol=1e-5,
    )
    table = loaded.signatures["item_embeddings"](item_ids=tf.range(1, N_ITEMS + 1))["embeddings"].numpy()
    np.testing.assert_array_equal(table, encoder.item_embeddings.numpy()[1:])
    keys = np.where(ids > 0, ids.astype(str), "").astype(object)  # no items.txt: the keys are the decimal ids
    by_keys = loaded.signatures["serve_keys"](item_keys=tf.constant(keys))["item_keys"].numpy().astype(str)
    np.testing.assert_array_equal(by_keys, np.where(out["item_ids"] > 0, out["item_ids"].numpy().astype(str), ""))
    with open(os.path.join(path, signatures.MODEL_CARD_FILE)) as f:
        card = json.load(f)
    assert (card["index"], card["rescore"]) == ("bfloat16", TOP_K)
    # The float32 table is still the one read_item_table serves; the compact copy is saved beside it.
    saved = dict(tf.train.list_variables(os.path.join(path, "variables", "variables")))
    assert saved["compact_item_table/.ATTRIBUTES/VARIABLE_VALUE"] == [N_ITEMS + 1, 16]
    np.testing.assert_array_equal(assets.read_item_table(path), encoder.item_embeddings.numpy())


def test_bfloat16_index_of_a_tiny_catalog_never_returns_seen_items(tmp_path):
    # 8 items, 6 in the history, K = 5 (the window, 4 x 5 + 7 exclusions, is capped at the 9 rows).
    vocabulary = tmp_path / "items.txt"
    vocabulary.write_text("".join(f"{i}\n" for i in range(1, 9)))
    module = ServingModule(make_encoder(n_items=8), MAX_LEN, 5, str(vocabulary), index="bfloat16")
    ids = np.zeros((1, MAX_LEN), np.int32)
    ids[0, -6:] = [1, 2, 3, 4, 5, 6]
    out = module.serve(tf.constant(ids))
    assert sorted(out["item_ids"].numpy()[0, :2].tolist()) == [7, 8]
    assert out["item_ids"].numpy()[0, 2:].tolist() == [0, 0, 0]
    assert np.all(out["scores"].numpy()[0, 2:] == signatures.NO_ITEM_SCORE)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["export.index=int4"], "export.index: 'int4' is not one of ('exact', 'bfloat16')"),
        (["export.rescore=100"], "export.rescore: 100 applies to export.index: bfloat16 only"),
        (["export.index=bfloat16", "export.rescore=10"], "export.rescore: 10 re-scored candidates cannot give"),
        (["export.index=bfloat16", "export.rescore=-1"], "export.rescore: must be 0 or more, got -1"),
    ],
)
def test_config_refuses_bad_index_settings(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, overrides)
    config = load_config(None, ["export.index=bfloat16", "export.rescore=20"])
    assert (config.export.index, config.export.rescore) == ("bfloat16", 20)
    assert load_config(None).export.index == "exact"
