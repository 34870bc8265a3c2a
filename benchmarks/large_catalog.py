"""Training and full-ranking evaluation with a 1M-item catalogue: peak memory, step times, evaluation time.

    python -m benchmarks.large_catalog [--n-items 1000000 --n-users 20000 --steps 200 --eval-users 2000]

Builds a synthetic leave-one-out dataset (``--data-dir``, reused when its metadata matches) in the feature-spec
format, then runs each configuration in its own subprocess, so that each peak RSS (``ru_maxrss``) is its own:

- ``uniform``: SASRec + one uniform negative, Adam (the default trainer; training scores only the sampled items,
  never the catalogue, so `losses.full_softmax` is not involved);
- ``uniform_sgd``: the same with plain SGD, whose sparse update touches only the rows of the batch: the step-time
  gap to ``uniform`` is what Adam's dense update of the 1M x dim table (and its two moment tables) costs;
- ``mdcns``: MDCNS (``trainer=mdcns``, GRU4Rec peer, pool of 100), two 1M-row tables and two Adams;
- ``softmax``: SASRec with full-softmax cross-entropy (``loss.name=softmax``): every trained position scores the
  whole catalogue, so its logits alone take positions x 1M x 4 bytes (~36 GB at batch 256 here): run it at a small
  batch, ``softmax@8``.

``NAME@BATCH`` in ``--configs`` runs a configuration at its own batch size (e.g. ``mdcns,softmax@8,mdcns@8``).
Each result carries its batch, the steps of one epoch over the ``--n-users`` training sequences and the epoch time
that makes at the median step time (the first epoch's tracing left out), so configurations run at different batch
sizes compare by epoch.

Each trains ``--steps`` steps (``train.steps_per_epoch``; the first epoch's steps include tracing and are reported
apart), then evaluates ``--eval-users`` validation users with full ranking in item chunks of
``eval.item_chunk_size``. A micro-benchmark times one Adam and one SGD update of a lone 1M x dim table from a
sparse (IndexedSlices) gradient. Writes ``benchmarks/results/large_catalog.json`` with the command and the machine.

**Catalogue scale, side by side** (``--compare GROUPS``): the same train step at Beauty's 12,101 items and at 1M,
in one process per group, the variants' steps interleaved in rounds (`benchmarks.timing`: the order rotates every
round; per-round ratios, medians). ``train.sparse_updates`` is the variable: ``auto`` (dense at 12k, lazy at 1M)
and, at 1M, ``dense`` (the code before lazy updates). Shapes: batch ``--batch``, full-length sequences of
``--max-len`` uniform random ids (`benchmarks.synthetic_steps.synthetic_batches`: no padding, the worst case for the
catalogue's cache behaviour), d ``--dim``, no length buckets. Groups: ``uniform`` (SASRec + one uniform negative,
``configs/base.yaml``), ``mdcns_position`` (``configs/beauty_sasrec_mdcns.yaml``: GRU4Rec peer, a pool per
position; at 1M items also with ``mdcns.pool_source: catalogue``, the draw before the step pool),
``mdcns_sequence`` (the same with the paper's pool per sequence), ``threshold_uniform`` /
``threshold_mdcns_position``: dense against lazy at each of ``--threshold-sizes`` items, which sets
`mdcns_tf.training.optimizers.LAZY_MIN_ROWS`, and ``pool_gradient_batch{16,32,64,128,256}``: with lazy updates at 1M
items, a pool per position's sparse table gradient against its dense one, which sets
`mdcns_tf.training.mdcns_model.SPARSE_POOL_MAX_DRAWS_SHARE`. For every lazy variant the JSON also gives the share of
the self item table one step moves. The commands behind the README's "Catalogue scale" table:

    python -m benchmarks.large_catalog --compare uniform,mdcns_sequence,mdcns_position --rounds 7 \
        --output benchmarks/results/large_catalog_scale.json
    python -m benchmarks.large_catalog --compare threshold_uniform,threshold_mdcns_position --rounds 5 \
        --output benchmarks/results/large_catalog_threshold.json
    python -m benchmarks.large_catalog --compare pool_gradient --rounds 5 \
        --output benchmarks/results/large_catalog_pool_gradient.json
    python -m benchmarks.large_catalog --compare mdcns_position --rounds 3 --profile \
        --output benchmarks/results/large_catalog_profile.json   # where the 1M step's time goes
    python -c "from benchmarks import large_catalog; print(large_catalog.distinct_ids_ms())"   # COUNT_DISTINCT_SHARE
    python -c "from benchmarks import large_catalog; print(large_catalog.optimizer_update_ms(1_000_000, 64, 12_800))"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks import commands, common
from mdcns_tf import cli

CONFIGS: dict[str, list[str]] = {
    "uniform": ["trainer=single", "sampler.name=uniform"],
    "uniform_sgd": ["trainer=single", "sampler.name=uniform"],
    "mdcns": ["trainer=mdcns", "mdcns.peer_backbone=gru4rec", "mdcns.pool_size=100"],
    "softmax": ["trainer=single", "loss.name=softmax"],
}


def parse_config(token: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@BATCH`` -> (name, batch or None); a clear error for an unknown name or a bad batch."""
    name, _, batch = token.partition("@")
    if name not in CONFIGS:
        raise SystemExit(f"large_catalog: unknown configuration {name!r}; known: {', '.join(CONFIGS)}")
    if batch and not (batch.isdigit() and int(batch) > 0):
        raise SystemExit(f"large_catalog: {token!r}: the batch after '@' must be a positive integer")
    return name, int(batch) if batch else None


def rss_mib() -> float:
    """Current resident set size of this process (MiB), from /proc."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_dataset(data_dir: str, n_users: int, n_items: int, seed: int) -> None:
    """Leave-one-out records: sequences of 20-50 items that mostly walk a fixed item cycle (learnable), seeded."""
    import numpy as np
    import tensorflow as tf

    from mdcns_tf import features

    metadata_path = os.path.join(data_dir, "metadata.json")
    if os.path.exists(metadata_path):
        with open(metadata_path) as f:
            meta = json.load(f)
        if meta.get("n_items") == n_items and meta.get("n_users") == n_users:
            return
    rng = np.random.default_rng(seed)
    for split in features.SPLITS:
        os.makedirs(os.path.join(data_dir, split), exist_ok=True)
    writers = {
        split: tf.io.TFRecordWriter(os.path.join(data_dir, split, f"part-0{features.TFRECORD_SUFFIX}"), options="GZIP")
        for split in features.SPLITS
    }
    item_counts = np.zeros(n_items + 1, np.int64)
    total = 0
    for user in range(1, n_users + 1):
        length = int(rng.integers(20, 51))
        steps = np.where(rng.random(length) < 0.85, 1, rng.integers(2, n_items, length))
        sequence = ((int(rng.integers(0, n_items)) + np.cumsum(steps)) % n_items + 1).tolist()
        writers["train"].write(features.make_example(user, sequence[:-2]))
        writers["valid"].write(features.make_example(user, sequence[:-2], sequence[-2]))
        writers["test"].write(features.make_example(user, sequence[:-1], sequence[-1]))
        np.add.at(item_counts, sequence[:-2], 1)
        total += length
    for writer in writers.values():
        writer.close()
    features.Metadata(
        schema_version=features.SCHEMA_VERSION,
        n_users=n_users,
        n_items=n_items,
        item_counts=item_counts.tolist(),
        split={"protocol": "loo", "seed": seed},
        counts={"rows_read": total, "rows_written": total, "rows_rejected": 0, "rows_filtered": 0},
        records={"train": n_users, "valid": n_users, "test": n_users},
    ).save(data_dir)


def optimizer_update_ms(n_items: int, dim: int, rows: int, repeats: int = 10) -> dict[str, float]:
    """Median time (ms) of one update of a lone (n_items + 1, dim) table: from a ``rows``-row sparse gradient
    (IndexedSlices) with Keras's Adam, SGD and `LazyAdam`; from a dense gradient with Keras's Adam (op by op) and
    `LazyAdam` (XLA-compiled for a table of `XLA_DENSE_MIN_ELEMENTS` or more). The table is gathered from first, as
    in training (TensorFlow then copies a whole-variable read)."""
    import tensorflow as tf
    import tf_keras as keras

    from mdcns_tf.training.optimizers import LazyAdam

    sparse = tf.IndexedSlices(
        tf.random.normal([rows, dim]),
        tf.random.uniform([rows], 1, n_items + 1, tf.int32),
        tf.constant([n_items + 1, dim]),
    )
    dense = tf.random.normal([n_items + 1, dim])
    cases = {
        "adam": (keras.optimizers.Adam(1e-3), sparse),
        "sgd": (keras.optimizers.SGD(1e-3), sparse),
        "lazy_adam": (LazyAdam(1e-3), sparse),
        "adam_dense_gradient": (keras.optimizers.Adam(1e-3), dense),
        "lazy_adam_dense_gradient": (LazyAdam(1e-3), dense),
    }
    out = {}
    for name, (optimizer, gradient) in cases.items():
        table = tf.Variable(tf.random.normal([n_items + 1, dim], stddev=0.01))
        tf.gather(table, [1])  # the variable's state in training: gathered from
        step = tf.function(lambda g, o=optimizer, t=table: o.apply_gradients([(g, t)]))
        step(gradient)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            # Eager call of a tf.function on CPU returns when its ops are done; reading the table back would copy
            # all of it (256 MB) and swamp the sparse update being measured.
            step(gradient)
            times.append((time.perf_counter() - started) * 1000)
        out[name] = round(statistics.median(times), 2)
    return out


class StepTimer:
    """Per-step wall times from Keras batch hooks (steps_per_execution = 1, so one hook pair per step)."""

    def __init__(self) -> None:
        import tf_keras as keras

        timer = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
                timer.started = time.perf_counter()

            def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
                timer.seconds.append(time.perf_counter() - timer.started)

        self.seconds: list[float] = []
        self.started = 0.0
        self.callback = Callback()


def without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE`` (the parent passes the rest on to each child)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration in this process (called with ``--child NAME[@BATCH]``)."""
    import tensorflow as tf
    import tf_keras as keras

    import mdcns_tf  # noqa: F401
    from mdcns_tf import data
    from mdcns_tf.config_loader import load_config
    from mdcns_tf.features import Metadata
    from mdcns_tf.metrics import METRIC_VERSION
    from mdcns_tf.training import factory

    name, batch = parse_config(args.child)
    batch = batch or args.batch
    overrides = [
        f"data.dir={args.data_dir}",
        f"data.batch_size={batch}",
        f"data.max_len={args.max_len}",
        f"model.dim={args.dim}",
        f"eval.item_chunk_size={args.chunk}",
        f"data.eval_batch_size={args.eval_batch}",
        "data.shuffle_buffer=10000",
        *CONFIGS[name],
    ]
    config = load_config(os.path.join(common.REPO, "configs", "base.yaml"), overrides)
    keras.utils.set_random_seed(config.seed)
    metadata = Metadata.load(config.data.dir)
    started = time.perf_counter()
    model = factory.build_model(config, metadata)
    model.build_for_input(config.data.max_len)
    optimizer = keras.optimizers.SGD(0.05) if name.endswith("_sgd") else keras.optimizers.Adam(1e-3)
    model.compile(optimizer=optimizer)
    build_seconds = time.perf_counter() - started
    rss_after_build = rss_mib()

    cfg = config.data
    train_ds = data.train_dataset(cfg, config.seed).repeat()
    timer = StepTimer()
    warmup = min(20, args.steps // 4)
    model.fit(train_ds, epochs=1, steps_per_epoch=warmup, callbacks=[timer.callback], verbose=0)
    first_step = timer.seconds[0]
    timer.seconds.clear()
    model.fit(train_ds, epochs=1, steps_per_epoch=args.steps, callbacks=[timer.callback], verbose=0)
    rss_after_train = rss_mib()

    valid_ds = data.eval_dataset(cfg.dir, "valid", cfg.max_len, cfg.eval_batch_size, args.eval_users)
    model.evaluate(valid_ds.take(1), verbose=0)  # trace once
    started = time.perf_counter()
    results = model.evaluate(valid_ds, return_dict=True, verbose=0)
    eval_seconds = time.perf_counter() - started
    steps = sorted(timer.seconds)
    out: dict[str, Any] = {
        "config_overrides": overrides,
        "optimizer": type(optimizer).__name__,
        "n_items": metadata.n_items,
        "trainable_parameters": int(sum(tf.size(v).numpy() for v in model.trainable_variables)),
        "build_seconds": round(build_seconds, 2),
        "first_step_seconds_with_tracing": round(first_step, 2),
        "timed_steps": len(steps),
        "batch": batch,
        "steps_per_epoch": math.ceil(metadata.n_users / batch),
        "epoch_seconds_at_median_step": round(math.ceil(metadata.n_users / batch) * statistics.median(steps), 1),
        "step_ms_median": round(1000 * statistics.median(steps), 1),
        "step_ms_p90": round(1000 * steps[int(0.9 * (len(steps) - 1))], 1),
        "rss_mib_after_build": round(rss_after_build),
        "rss_mib_after_train": round(rss_after_train),
        "eval_users": args.eval_users,
        "eval_seconds": round(eval_seconds, 2),
        "eval_users_per_second": round(args.eval_users / eval_seconds, 1),
        "eval_item_chunk_size": args.chunk,
        "valid_ndcg@10": round(float(results["ndcg_10"]), 4),
        "metric_version": METRIC_VERSION,
    }
    if name == "uniform":
        out["lone_table_update_ms"] = optimizer_update_ms(metadata.n_items, args.dim, batch * args.max_len)
    out["peak_rss_mib"] = round(peak_rss_mib())
    return out


BEAUTY_ITEMS = 12_101
MILLION_ITEMS = 1_000_000
POOL_GRADIENT_BATCHES = (16, 32, 64, 128, 256)
# name -> (config file under configs/, overrides) of the catalogue-scale groups
SCALE_CONFIGS: dict[str, tuple[str, list[str]]] = {
    "uniform": ("base.yaml", ["trainer=single", "sampler.name=uniform"]),
    "mdcns_position": ("beauty_sasrec_mdcns.yaml", []),
    "mdcns_sequence": ("beauty_sasrec_mdcns.yaml", ["mdcns.pool_scope=sequence"]),
}


@dataclasses.dataclass(frozen=True)
class ScaleVariant:
    config: str  # a key of SCALE_CONFIGS
    n_items: int
    sparse_updates: str  # train.sparse_updates
    batch: int | None = None  # None: --batch
    pool_gradient: str | None = None  # MDCNS, a pool per position: force "sparse" or "dense"; None: the model's rule
    pool_source: str | None = None  # MDCNS, a pool per position: mdcns.pool_source; None: the config's (auto)

    @property
    def label(self) -> str:
        label = f"{self.n_items}/{self.sparse_updates}"
        if self.batch:
            label += f"/batch{self.batch}"
        label += f"/{self.pool_gradient}" if self.pool_gradient else ""
        return label + (f"/pool_source_{self.pool_source}" if self.pool_source else "")


def compare_groups(threshold_sizes: list[int]) -> dict[str, list[ScaleVariant]]:
    """The groups of ``--compare``: each a list of variants timed side by side, the first the reference."""
    groups = {
        name: [
            ScaleVariant(name, BEAUTY_ITEMS, "auto"),
            ScaleVariant(name, MILLION_ITEMS, "auto"),
            ScaleVariant(name, MILLION_ITEMS, "dense"),
        ]
        for name in SCALE_CONFIGS
    }
    # Lazy updates with each position's pool drawn from the whole catalogue (before mdcns.pool_source: step)
    groups["mdcns_position"].append(ScaleVariant("mdcns_position", MILLION_ITEMS, "auto", pool_source="catalogue"))
    for name in ("uniform", "mdcns_position"):
        groups[f"threshold_{name}"] = [
            ScaleVariant(name, n, mode) for n in threshold_sizes for mode in ("dense", "lazy")
        ]
    for batch in POOL_GRADIENT_BATCHES:  # a pool per position at 1M: 1 - exp(-batch x 50 x 100 / 1M) of the rows
        groups[f"pool_gradient_batch{batch}"] = [
            ScaleVariant("mdcns_position", MILLION_ITEMS, "lazy", batch, gradient) for gradient in ("sparse", "dense")
        ]
    return groups


def build_scale_variant(variant: ScaleVariant, args: argparse.Namespace) -> tuple[Any, list[dict]]:
    """A variant's model, built and compiled as `mdcns_tf.train` does (`factory.build_model`, `prepare_for_training`:
    the Adam that ``train.sparse_updates`` picks), and its synthetic batches."""
    import tf_keras as keras

    from benchmarks import synthetic_steps
    from mdcns_tf.config_loader import load_config
    from mdcns_tf.training import factory

    config_file, overrides = SCALE_CONFIGS[variant.config]
    config = load_config(
        os.path.join(common.REPO, "configs", config_file),
        [
            *overrides,
            f"data.batch_size={variant.batch or args.batch}",
            f"data.max_len={args.max_len}",
            f"model.dim={args.dim}",
            "data.bucket_by_length=false",
            "loss.reduction=batch",
            "seed=1",
            f"train.sparse_updates={variant.sparse_updates}",
            *([f"mdcns.pool_source={variant.pool_source}"] if variant.pool_source else []),
        ],
    )
    keras.utils.set_random_seed(config.seed)
    shape = synthetic_steps.Shape(
        batch=variant.batch or args.batch, max_len=args.max_len, dim=args.dim, n_items=variant.n_items
    )
    model = factory.build_model(config, synthetic_steps.stub_metadata(shape))
    if variant.pool_gradient:
        model.sparse_pool_gradient = variant.pool_gradient == "sparse"
    factory.prepare_for_training(model, config)
    batches, _ = synthetic_steps.synthetic_batches(shape, count=3, seed=0)
    return model, batches


def moved_share(model: Any, step: Any, batch: dict) -> float:
    """Share of the self item table's rows that one more step moves (the rows a lazy update touches)."""
    import numpy as np

    table = model.encoder.item_embedding.embeddings
    before = table.numpy()
    step(batch)
    moved = np.count_nonzero((table.numpy() != before).any(axis=1))
    return round(float(moved) / before.shape[0], 4)


def run_compare_child(group: str, args: argparse.Namespace) -> dict[str, Any]:
    """One ``--compare`` group in this process: build every variant, then interleave their steps."""
    import tensorflow as tf

    from benchmarks import synthetic_steps, timing

    variants = compare_groups(args.threshold_sizes)[group]
    steps: dict[str, Any] = {}
    batches: dict[str, list[dict]] = {}
    built: dict[str, dict[str, Any]] = {}
    for variant in variants:
        started = time.perf_counter()
        model, variant_batches = build_scale_variant(variant, args)
        step = tf.function(model.train_step)
        synthetic_steps.run_steps(step, variant_batches, 3)  # trace + warm up outside the measurement
        info: dict[str, Any] = {
            "n_items": variant.n_items,
            "sparse_updates": variant.sparse_updates,
            "lazy_updates": bool(model.lazy_updates),
            "sparse_pool_gradient": getattr(model, "sparse_pool_gradient", None),
            "step_pool_rows": getattr(model, "step_pool_rows", None),  # mdcns.pool_source step: rows a step draws
            "optimizer": type(model.optimizer).__name__,
            "build_and_warmup_seconds": round(time.perf_counter() - started, 1),
        }
        if model.lazy_updates:
            info["self_table_rows_moved_by_one_step"] = moved_share(model, step, variant_batches[0])
        if args.profile:
            info["profile"] = op_profile(step, variant_batches)
        built[variant.label], steps[variant.label], batches[variant.label] = info, step, variant_batches
        print(f"[large_catalog] {group} {variant.label}: {info}", flush=True)
    for label in steps:  # one untimed round: the first call after the other variants were built ran ~100x slower
        synthetic_steps.run_steps(steps[label], batches[label], args.round_steps)
    times = timing.interleaved(
        {
            label: lambda label=label: synthetic_steps.run_steps(steps[label], batches[label], args.round_steps)
            for label in steps
        },
        args.rounds,
        args.round_steps,
    )
    reference = variants[0].label
    wall_ratios, cpu_ratios = timing.ratios(times.wall, reference), timing.ratios(times.cpu, reference)
    rows = {}
    for label, info in built.items():
        rows[label] = {
            **info,
            "step_ms_median": round(1000 * times.median_wall(label), 1),
            "step_ms_rounds": [round(1000 * t, 1) for t in times.wall[label]],
            "step_cpu_ms_median": round(1000 * times.median_cpu(label), 1),
            f"ratio_to_{reference}": round(wall_ratios[label], 3),
            f"cpu_ratio_to_{reference}": round(cpu_ratios[label], 3),
            "others_cpu_s_per_round_median": round(statistics.median(times.others_cpu[label]), 2)
            if times.others_cpu.get(label)
            else None,
        }
    out: dict[str, Any] = {"reference": reference, "variants": rows}
    if group.startswith("threshold_"):  # lazy / dense at each size, per round
        out["lazy_over_dense"] = {
            str(n): round(
                statistics.median(
                    lazy / dense for lazy, dense in zip(times.wall[f"{n}/lazy"], times.wall[f"{n}/dense"], strict=True)
                ),
                3,
            )
            for n in args.threshold_sizes
        }
    return out


def op_profile(step: Any, batches: list[dict], steps: int = 3, top: int = 25) -> dict[str, Any]:
    """TensorFlow's profiler over ``steps`` steps: the ops with the most self time (ms a step, summed over threads;
    the XLA-compiled parts appear under their launch ops), and the self time by the first component of the ops'
    names (``Adam``, ``Adam_1``: the two optimizers; ``ReadVariableOp``: whole-variable reads)."""
    import collections
    import glob
    import shutil

    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    from benchmarks import synthetic_steps

    logdir = tempfile.mkdtemp(prefix="large_catalog_profile.")
    try:
        tf.profiler.experimental.start(logdir)
        synthetic_steps.run_steps(step, batches, steps)
        tf.profiler.experimental.stop()
        path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
        data, _ = plugin.xspace_to_tools_data([path], "framework_op_stats", {})
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    table = json.loads(data)[0]
    columns = [column["id"] for column in table["cols"]]
    ops = collections.Counter()
    for row in table["rows"]:
        cells = dict(zip(columns, [cell.get("v") if cell else None for cell in row["c"]], strict=True))
        if cells["operation"] != "IDLE":
            ops[(cells["type"], cells["operation"])] += float(cells["total_self_time"]) / 1000 / steps
    by_name = collections.Counter()
    for (op_type, name), ms in ops.items():
        by_name[name.split("/")[0] if "/" in name else op_type] += ms
    return {
        "self_ms_per_step_total": round(sum(ops.values()), 1),
        "top_ops_ms_per_step": [
            {"type": op_type, "op": name[:120], "ms": round(ms, 1)} for (op_type, name), ms in ops.most_common(top)
        ],
        "by_name_ms_per_step": {name: round(ms, 1) for name, ms in by_name.most_common(top)},
    }


def distinct_ids_ms(
    rows: tuple[int, ...] = (12_102, 100_001, 1_000_001),
    counts: tuple[int, ...] = (10_000, 40_000, 160_000, 640_000, 1_280_000),
    repeats: int = 9,
) -> dict[str, dict[str, float]]:
    """Median ms of distinct ids by hash (`tf.unique`) and by a count over the rows, for random ids: what
    `mdcns_tf.samplers.pool_scoring.COUNT_DISTINCT_SHARE` is set from. Keys ``"<rows>/<ids>"``."""
    import tensorflow as tf

    def by_hash(ids: tf.Tensor, n: int) -> tf.Tensor:
        unique, index = tf.unique(ids)
        return tf.size(unique) + tf.reduce_sum(index)

    def by_count(ids: tf.Tensor, n: int) -> tf.Tensor:
        present = tf.math.bincount(ids, minlength=n, maxlength=n) > 0
        index = tf.gather(tf.cumsum(tf.cast(present, tf.int32)) - 1, ids)
        return tf.size(tf.where(present), tf.int32) + tf.reduce_sum(index)

    out: dict[str, dict[str, float]] = {}
    for n in rows:
        for count in counts:
            ids = tf.random.uniform([count], 0, n, tf.int32)
            out[f"{n}/{count}"] = {}
            for name, fn in (("hash", tf.function(by_hash)), ("count", tf.function(by_count))):
                fn(ids, n).numpy()
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    fn(ids, n).numpy()
                    times.append(time.perf_counter() - started)
                out[f"{n}/{count}"][name] = round(1000 * statistics.median(times), 2)
    return out


def run_compare(args: argparse.Namespace, argv: list[str] | None) -> int:
    known = compare_groups(args.threshold_sizes)
    groups = []  # "pool_gradient": every pool_gradient_batch<N> group
    for group in args.compare.split(","):
        groups += [name for name in known if name.startswith("pool_gradient_")] if group == "pool_gradient" else [group]
    for group in groups:
        if group not in known:
            raise SystemExit(f"large_catalog: unknown --compare group {group!r}; known: {', '.join(known)}")
    head = common.envelope(common.command_line("benchmarks.large_catalog", argv))
    results: dict[str, Any] = {}
    for group in groups:
        # One process a group: its own memory, and no group's tables in another's caches.
        child_output = os.path.join(tempfile.gettempdir(), f"large_catalog.{os.getpid()}.{group}.json")
        command = commands.module_command(
            "benchmarks.large_catalog",
            *("--batch", str(args.batch), "--max-len", str(args.max_len), "--dim", str(args.dim)),
            *("--rounds", str(args.rounds), "--round-steps", str(args.round_steps)),
            *("--threshold-sizes", ",".join(map(str, args.threshold_sizes))),
            *(("--profile",) if args.profile else ()),
            *("--compare-child", group, "--child-output", child_output),
        )
        print(f"[large_catalog] {group} ...", flush=True)
        subprocess.run(command, check=True, cwd=common.REPO)
        with open(child_output) as f:
            results[group] = json.load(f)
        os.remove(child_output)
        print(f"[large_catalog] {group}: {json.dumps(results[group])}", flush=True)
    payload = {
        **head,
        "benchmark": "large_catalog_scale",
        "shapes": {
            "batch": args.batch,
            "max_len": args.max_len,
            "dim": args.dim,
            "ids": "uniform random, full length (benchmarks.synthetic_steps.synthetic_batches)",
        },
        "timing": {"rounds": args.rounds, "steps_per_variant_per_round": args.round_steps, "interleaved": True},
        "groups": results,
    }
    common.write_result(args.output, payload)
    print(f"[large_catalog] wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("benchmarks.large_catalog", None, __doc__)
    parser.add_argument("--n-items", type=int, default=1_000_000)
    parser.add_argument("--n-users", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=200, help="timed training steps per configuration")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--eval-users", type=int, default=2000)
    parser.add_argument("--eval-batch", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=65_536, help="eval.item_chunk_size")
    parser.add_argument(
        "--configs",
        default="uniform,uniform_sgd,mdcns",
        help=f"comma-separated NAME or NAME@BATCH, names from {', '.join(CONFIGS)}",
    )
    parser.add_argument("--data-dir", default=os.path.join(common.RESULTS, "data", "large_catalog"))
    parser.add_argument("--output", default=os.path.join(common.RESULTS, "large_catalog.json"))
    parser.add_argument(
        "--compare",
        help="comma-separated catalogue-scale groups, timed side by side (uniform, mdcns_sequence, mdcns_position, "
        "threshold_uniform, threshold_mdcns_position, pool_gradient_batch16/32/64/128/256 or all five: "
        "pool_gradient); see the module docstring",
    )
    parser.add_argument("--rounds", type=int, default=7, help="--compare: interleaved rounds")
    parser.add_argument("--round-steps", type=int, default=3, help="--compare: steps of each variant a round")
    parser.add_argument(
        "--threshold-sizes",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[12_101, 50_000, 100_000, 200_000],
        help="--compare threshold_*: catalogue sizes (comma-separated)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="--compare: also each variant's op profile over 3 steps (before timing)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--compare-child", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child or args.compare_child:
        result = run_child(args) if args.child else run_compare_child(args.compare_child, args)
        with open(args.child_output, "w") as f:
            json.dump(result, f)
        return 0
    if args.compare:
        if args.output == os.path.join(common.RESULTS, "large_catalog.json"):
            args.output = os.path.join(common.RESULTS, "large_catalog_scale.json")
        return run_compare(args, argv)

    tokens = args.configs.split(",")
    for token in tokens:
        parse_config(token)  # every name checked before the minutes of writing the dataset
    head = common.envelope(common.command_line("benchmarks.large_catalog", argv))
    started = time.perf_counter()
    write_dataset(args.data_dir, args.n_users, args.n_items, seed=0)
    dataset_seconds = time.perf_counter() - started
    passthrough = without_option(argv if argv is not None else sys.argv[1:], "--configs")
    results: dict[str, Any] = {}
    for name in tokens:
        # Outside the results folder: a half-run benchmark must not leave files next to the published results.
        child_output = os.path.join(tempfile.gettempdir(), f"large_catalog.{os.getpid()}.{name}.json")
        command = commands.module_command(
            "benchmarks.large_catalog",
            *passthrough,
            *("--data-dir", args.data_dir, "--child", name, "--child-output", child_output),
        )
        print(f"[large_catalog] {name} ...", flush=True)
        subprocess.run(command, check=True, cwd=common.REPO)
        with open(child_output) as f:
            results[name] = json.load(f)
        os.remove(child_output)
        print(f"[large_catalog] {name}: {json.dumps(results[name])}", flush=True)
    payload = {
        **head,
        "benchmark": "large_catalog",
        "dataset": {
            "n_items": args.n_items,
            "n_users": args.n_users,
            "sequence_length": "20-50",
            "write_seconds": round(dataset_seconds, 1),
            "dir": common.repo_relative(args.data_dir),
        },
        "shapes": {"batch": args.batch, "max_len": args.max_len, "dim": args.dim, "backbone": "sasrec (2 layers)"},
        "results": results,
    }
    common.write_result(args.output, payload)
    print(f"[large_catalog] wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
