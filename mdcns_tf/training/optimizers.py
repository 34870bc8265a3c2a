"""The trainers' optimizers: Keras's Adam, or a lazy Adam whose item-table updates cost the rows a step touches.

``train.sparse_updates`` (`mdcns_tf.config.TrainConfig`) picks, for the single-model trainer and both MDCNS
students: ``dense`` (Keras's Adam, and the dense table gradient of the fused pool scoring: the code before lazy
updates existed, unchanged), ``lazy`` (`LazyAdam`, and table gradients kept sparse everywhere) or ``auto``
(``lazy`` from `LAZY_MIN_ROWS` item-table rows on, else ``dense``).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

import mdcns_tf  # noqa: F401
from mdcns_tf.samplers.pool_scoring import distinct_ids

SPARSE_UPDATES = ("auto", "dense", "lazy")

# ``auto`` goes lazy from this many item-table rows (n_items + 1) on: 50,000 items. Measured side by side
# (interleaved rounds, medians; lazy / dense step time) on the 2-core machine: uniform SASRec 0.96 at 12,101 items,
# 0.89 at 50k, 0.87 at 100k, 0.71 at 200k; MDCNS with a pool per position 1.01, 1.00, 0.94, 0.95 (README "Catalogue
# scale", `benchmarks/results/large_catalog_threshold.json`, command in `benchmarks/large_catalog.py`). Below 50k
# lazy gains at most a few percent, and dense keeps every finished run at Beauty's size (12,101 items; Sports and
# LastFM are smaller than 50k too) bit-identical.
LAZY_MIN_ROWS = 50_001


# A dense gradient of a variable this large (a 1M x 64 table has 64M elements; Beauty's 12k x 64, 0.8M) is applied by
# an XLA-compiled Adam: the same formulas fused into one pass, 47 ms against Keras's op-by-op 168 ms on a 1M x 64
# table (2-core EPYC; a sparse gradient of 12,800 rows: LazyAdam 7 ms, Keras's Adam 234 ms; `python -c "from
# benchmarks import large_catalog; print(large_catalog.optimizer_update_ms(1_000_000, 64, 12_800))"`), equal to
# within float rounding (XLA rounds sqrt exactly, TensorFlow's Eigen kernel nearly).
# Such gradients reach `LazyAdam` from full softmax and from a pool per position that touches most of the table.
XLA_DENSE_MIN_ELEMENTS = 1 << 22


def lazy_updates(mode: str, n_items: int) -> bool:
    """Whether ``train.sparse_updates`` = ``mode`` trains a catalogue of ``n_items`` items with lazy updates."""
    if mode not in SPARSE_UPDATES:
        raise ValueError(f"train.sparse_updates must be one of {SPARSE_UPDATES}, got {mode!r}")
    if mode == "auto":
        return n_items + 1 >= LAZY_MIN_ROWS
    return mode == "lazy"


def adam(learning_rate: float, weight_decay: float = 0.0, lazy: bool = False) -> keras.optimizers.Optimizer:
    """The trainers' Adam: Keras's (``lazy`` False, exactly the optimizer of runs before lazy updates) or
    `LazyAdam`. ``weight_decay`` 0 is none."""
    if lazy:
        return LazyAdam(learning_rate, weight_decay=weight_decay or None)
    return keras.optimizers.Adam(learning_rate, weight_decay=weight_decay or None)


@keras.saving.register_keras_serializable(package="mdcns_tf")
class LazyAdam(keras.optimizers.Adam):
    """Adam whose update from a sparse gradient (`tf.IndexedSlices`: an item table's gathered rows) reads and writes
    only the rows in the gradient.

    Keras's Adam (`tf_keras/src/optimizers/adam.py`, ``update_step``) treats a sparse gradient densely: it decays
    both moments of the whole table, scatter-adds the rows, then moves every row of the variable, so a 1M x 64 table
    costs ~230 ms a step whatever the batch touched (12,800 rows: 7 ms here; `XLA_DENSE_MIN_ELEMENTS`'s command).
    Here, for a sparse gradient with (de-duplicated) rows i:

        m[i] <- m[i] + (g[i] - m[i]) (1 - beta_1)        v[i] <- v[i] + (g[i]^2 - v[i]) (1 - beta_2)
        w[i] <- w[i] - alpha m[i] / (sqrt(v[i]) + epsilon_hat),   alpha = lr sqrt(1 - beta_2^t) / (1 - beta_1^t)

    (Adam's dense formulas, restricted to the rows; t is the optimizer's step, shared by all rows). **Rows the
    gradient does not name are left alone: their value and both moments.** Their moments are therefore not decayed
    on steps that do not touch them, and a row does not keep moving on its old momentum while unused: the semantics
    of TF1's ``tf.contrib.opt.LazyAdamOptimizer`` and of ``tensorflow_addons.optimizers.LazyAdam`` (which say it
    "may lead to different empirical results" than Adam and is faster for large sparse tables). A row touched at
    every step follows Adam exactly; a row first touched at step t starts from zero moments with Adam's bias
    correction of step t, not of its first own step (as in both of those).

    Duplicate ids in one gradient are summed first, once (`apply_gradients` merges them; here with `distinct_ids`,
    which counts over the table instead of hashing when the ids are many). Dense gradients (every variable other
    than an item table, or a table with a dense gradient such as full softmax's) take Adam's own dense path,
    unchanged; for a variable of `XLA_DENSE_MIN_ELEMENTS` or more, compiled by XLA (the same formulas, one pass:
    4x faster on a 1M x 64 table). ``amsgrad`` keeps v_hat per row the same way.

    Weight decay (``weight_decay``, decoupled as in Keras: w <- w - lr wd w before the Adam step) applies, for a
    variable with a sparse gradient, to the gradient's rows only (lazily, like the moments); dense variables decay
    whole as in Keras. Keras would decay every row of every variable every step.

    The slot variables are Adam's (``m/<name>``, ``v/<name>``, same order, same tracking), so checkpoints are
    interchangeable with Keras's Adam: `BackupAndRestore` backups and the saved best weights restore either way.
    ``jit_compile`` defaults to False: an XLA-compiled update would read and write the whole variable anyway (XLA
    has no in-place scatter into a resource variable); Keras compiles the update only on GPU machines.
    """

    def __init__(self, learning_rate: float = 0.001, *args, jit_compile: bool = False, name: str = "Adam", **kwargs):
        super().__init__(learning_rate, *args, jit_compile=jit_compile, name=name, **kwargs)

    def _update_step(self, gradient, variable):
        """Dense gradients of large variables go through XLA (`_dense_update_xla`); everything else as in Keras."""
        if not isinstance(gradient, tf.IndexedSlices) and variable.shape.num_elements() >= XLA_DENSE_MIN_ELEMENTS:
            return self._dense_update_xla(gradient, variable, id(self._var_key(variable)))
        return super()._update_step(gradient, variable)

    @tf.function(jit_compile=True)
    def _dense_update_xla(self, gradient, variable, key):
        """Adam's dense update of one large variable, compiled by XLA into one pass (Keras's ``_update_step_xla``,
        which Keras uses on GPU only; ``key`` keeps one trace per variable)."""
        return super()._update_step(gradient, variable)

    def _deduplicate_sparse_grad(self, grads):
        """Sums each sparse gradient's duplicate rows (Keras's step, with the faster `distinct_ids`)."""
        merged = []
        for grad in grads:
            if isinstance(grad, tf.IndexedSlices):
                if grad.dense_shape is None:
                    unique, index = tf.unique(tf.cast(grad.indices, tf.int32), out_idx=tf.int32)
                else:
                    unique, index = distinct_ids(grad.indices, tf.cast(grad.dense_shape[0], tf.int32))
                values = tf.math.unsorted_segment_sum(grad.values, index, tf.shape(unique)[0])
                grad = tf.IndexedSlices(values, unique, grad.dense_shape)
            merged.append(grad)
        return merged

    def _apply_weight_decay(self, variables):
        """Weight decay moves into `update_step`, where it is known which rows a sparse gradient touched."""

    def _decay_weight(self, variable: tf.Variable) -> bool:
        return bool(self.weight_decay) and self._use_weight_decay(variable)

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            if self._decay_weight(variable):
                lr = tf.cast(self.learning_rate, variable.dtype)
                variable.assign_sub(variable * tf.cast(self.weight_decay, variable.dtype) * lr)
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype)
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1_power = tf.pow(tf.cast(self.beta_1, dtype), local_step)
        beta_2_power = tf.pow(tf.cast(self.beta_2, dtype), local_step)
        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        epsilon_hat = self.epsilon * tf.sqrt(1 - beta_2_power) if self.adaptive_epsilon else self.epsilon

        rows, values = gradient.indices, gradient.values  # distinct rows: apply_gradients merged duplicates
        m_rows = tf.gather(m, rows)
        m_rows = m_rows + (values - m_rows) * (1 - self.beta_1)
        v_rows = tf.gather(v, rows)
        v_rows = v_rows + (tf.square(values) - v_rows) * (1 - self.beta_2)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        if self.amsgrad:
            v_hat = self._velocity_hats[index]
            v_rows = tf.maximum(tf.gather(v_hat, rows), v_rows)
            v_hat.scatter_update(tf.IndexedSlices(v_rows, rows))
        step = (m_rows * alpha) / (tf.sqrt(v_rows) + epsilon_hat)
        # Gather, subtract, scatter_update: the same values as scatter_sub, whose CPU kernel took 13 ms for 38k rows
        # of a 1M x 64 table where gather + scatter_update take 6 ms (2-core Xeon).
        variable_rows = tf.gather(variable, rows)
        if self._decay_weight(variable):
            step += variable_rows * tf.cast(self.weight_decay, dtype) * lr
        variable.scatter_update(tf.IndexedSlices(variable_rows - step, rows))
