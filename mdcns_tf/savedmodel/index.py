"""The top-K indexes of the export, one family like TFRS's ``layers/factorized_top_k.py``.

Both are TFRS ``BruteForce`` layers that hold the backbone's item table `(n_items + 1, d)` by reference (the stock
``BruteForce.index`` copies it) and take a row's index as its identifier; ``query_with_exclusions`` is TFRS's
(fetch ``k + #exclusions``, demote the excluded), so both treat the history alike. Plain TF ops only (MatMul,
TopKV2, GatherV2): stock TF Serving runs either. ``export.index`` picks one:

- ``exact`` (`TableBruteForce`): every item scored in float32, a matmul and a top-k.
- ``bfloat16`` (`RescoredBruteForce`): a bfloat16 copy of the item table scanned first, its best candidates
  re-scored exactly in float32 against the real table.

Why bfloat16: brute force is bound by memory bandwidth, not arithmetic. At a million items of d 64 the float32
table is 256 MB and every query reads all of it (``benchmarks/serving_latency.py``). A bfloat16 copy is half the
bytes; scoring it costs rounding (bfloat16 keeps 8 significant bits; with query, rows and score rounded, a score is
off by at most ~1% of ``|q| |x|``), which only reorders items whose scores are that close. Re-scoring the best few
hundred candidates of the bfloat16 scan with the float32 rows (a gather of ``window x d`` floats) gives back exact
scores, so the answer equals brute force whenever the true top-k lies within the window of the bfloat16 ranking
(the recall the benchmark measures). Far beyond a million items, use ``query_embedding`` with an ANN.

Alternatives measured (1M x 64, batch 1): int8 rows with per-row scales would read a quarter of the bytes, but
TensorFlow has no fast CPU kernel for an int8 matrix-vector product (``BatchMatMulV3`` int8 5x and
``QuantizedMatMul`` 3x slower than the float32 matmul, casting int8 to float32 then multiplying 2.4x slower). An
inverted file (k-means, 1,024 lists) reads far less, but on the untrained model's isotropic embeddings probing 3%
of the items found 36% of the top-10 and probing 25% found 87%: its recall depends on what training made of the
table. bfloat16 MatMul is fast where TensorFlow runs its oneDNN kernels (the pip package's default on x86);
without them (``TF_ENABLE_ONEDNN_OPTS=0``, or a build without oneDNN) a bare bfloat16 matmul is ~4.7x slower than
float32 and the export gains little (``without_onednn`` in ``benchmarks/results/serving_latency.json``).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

# Index kinds of ``export.index``.
EXACT = "exact"
BFLOAT16 = "bfloat16"
INDEXES = (EXACT, BFLOAT16)
# ``export.rescore: 0`` means this many candidates per query, times K.
DEFAULT_RESCORE_PER_K = 4
# Scores are cut into blocks of this many items for the candidate selection (see `top_candidates`).
BLOCK = 256


class TableBruteForce(tfrs.layers.factorized_top_k.BruteForce):
    """Exact brute force: every row of the float32 item table scored against the query.

    The stock ``BruteForce.index`` copies the candidates into new variables (``candidates`` `(n, d)` and
    ``identifiers`` `(n,)`), which doubles the size of the export and of the served model in memory; this index
    holds the backbone's own table `(n_items + 1, d)`. Row 0 (padding) is kept out of results by adding 0 to every
    query's exclusions (see `mdcns_tf.savedmodel.module.ServingModule`).
    """

    def index_table(self, table: tf.Variable) -> TableBruteForce:
        self._table = table
        self._candidates = table  # TFRS's "index() first" checks look at this attribute
        self._reset_tf_function_cache()
        return self

    def call(self, queries: tf.Tensor, k: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """queries `(batch, d)` -> (scores `(batch, k)`, row ids int32 `(batch, k)`)."""
        k = self._k if k is None else k
        scores = tf.matmul(tf.cast(queries, self._table.dtype), self._table, transpose_b=True)
        # query_with_exclusions asks for k + the number of exclusions; a small catalog may have fewer rows.
        values, indices = tf.math.top_k(scores, k=min(k, int(self._table.shape[0])))
        return values, indices


def rescore_count(rescore: int, top_k: int) -> int:
    """``export.rescore`` -> the number of candidates re-scored per query (0: ``DEFAULT_RESCORE_PER_K * top_k``)."""
    return rescore or DEFAULT_RESCORE_PER_K * top_k


def compact_table(table: np.ndarray | tf.Tensor) -> tf.Tensor:
    """`(n, d)` float32 -> `(n, d)` bfloat16, rounded to nearest even: ``|x - c| <= 2**-8 |x|`` element-wise."""
    return tf.cast(tf.convert_to_tensor(table, tf.float32), tf.bfloat16)


def top_candidates(scores: tf.Tensor, k: int, block: int = BLOCK) -> tuple[tf.Tensor, tf.Tensor]:
    """The exact top-``k`` of each row of ``scores`` `(batch, n)` -> (values `(batch, k')`, column ids int32
    `(batch, k')`), ``k' = min(k, n)``, best first (ties in any order).

    ``tf.math.top_k`` over a million columns costs 4-6 ms a row on this machine, a third to half of the bfloat16
    scan. Here the columns are cut into blocks of ``block``; only blocks whose maximum is at least the k-th largest
    value ``v`` hold top-k values, each such block's maximum is one of the (at most k, ties aside) values >= ``v``,
    so the ``k`` blocks with the highest maxima hold a top-k, and the final top_k runs on their ``k * block``
    values only.
    """
    n = int(scores.shape[1])
    k = min(k, n)
    n_blocks = -(-n // block)
    if n_blocks <= k:  # small catalog: the blocks would hold everything anyway
        return tf.math.top_k(scores, k=k)
    batch = tf.shape(scores)[0]
    if n_blocks * block != n:  # the last block is padded with -inf, which never beats a real score
        scores = tf.pad(scores, [[0, 0], [0, n_blocks * block - n]], constant_values=-np.inf)
    blocks = tf.reshape(scores, [batch, n_blocks, block])
    _, block_ids = tf.math.top_k(tf.reduce_max(blocks, axis=-1), k=k)  # (batch, k)
    values = tf.reshape(tf.gather(blocks, block_ids, batch_dims=1), [batch, k * block])
    columns = tf.reshape(block_ids[:, :, tf.newaxis] * block + tf.range(block)[tf.newaxis, tf.newaxis, :], [batch, -1])
    top_values, position = tf.math.top_k(values, k=k)
    return top_values, tf.gather(columns, position, batch_dims=1)


class RescoredBruteForce(tfrs.layers.factorized_top_k.BruteForce):
    """Brute force on a bfloat16 copy of the item table, then exact float32 re-scoring of the best candidates.

    ``k`` (the constructor's) is the export's K; ``rescore`` is how many candidates a query of k re-scores exactly;
    a query for more (``query_with_exclusions`` asks for ``K + #exclusions``) re-scores one more candidate per
    extra item asked, so that excluded history items never eat into the window.
    """

    def __init__(self, k: int, rescore: int, name: str | None = None) -> None:
        super().__init__(k=k, name=name)
        if rescore < k:
            raise ValueError(f"rescore ({rescore}) must be at least k ({k})")
        self._rescore = rescore

    def index_tables(self, table: tf.Variable, compact: tf.Variable) -> RescoredBruteForce:
        """``table`` `(n, d)` float32, ``compact`` `(n, d)` bfloat16 (`compact_table` of the same values)."""
        if tuple(table.shape) != tuple(compact.shape):
            raise ValueError(f"compact table {compact.shape} does not match the item table {table.shape}")
        self._table = table
        self._compact = compact
        self._candidates = table  # TFRS's "index() first" checks look at this attribute
        self._reset_tf_function_cache()
        return self

    def call(self, queries: tf.Tensor, k: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """queries `(batch, d)` -> (exact scores `(batch, k)`, row ids int32 `(batch, k)`), best first."""
        k = self._k if k is None else k
        n = int(self._table.shape[0])
        window = min(self._rescore + max(k - self._k, 0), n)
        queries = tf.cast(queries, tf.float32)
        # 1. The scan: half the bytes of the float32 table. Scores stay bfloat16 (a cast of a million scores
        # would cost more than the selection); they only pick candidates.
        rough = tf.matmul(tf.cast(queries, tf.bfloat16), self._compact, transpose_b=True)  # (batch, n)
        _, candidates = top_candidates(rough, window)  # (batch, window)
        # 2. Exact scores of the candidates from the float32 rows: (batch, window, d) . (batch, d).
        exact = tf.linalg.matvec(tf.gather(self._table, candidates), queries)
        values, position = tf.math.top_k(exact, k=min(k, window))
        return values, tf.gather(candidates, position, batch_dims=1)
