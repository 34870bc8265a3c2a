"""Training-step time of every baseline sampler relative to uniform, side by side in one process.

    python -m benchmarks.sampler_step_time [--batch 256 --max-len 50 --dim 64 --n-items 12102 --n-users 22363]

Beauty shapes by default (SASRec, 2 layers, BCE, every position trained, full-length sequences). Each sampler gets
its own model; the step is `SequentialRecommender.train_step` in a `tf.function`. The samplers are timed in
interleaved rounds and the ratio to uniform is taken per round, then the median over rounds, so a load change on
a shared machine hits every sampler alike. Writes ``benchmarks/results/sampler_step_time.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

import mdcns_tf  # noqa: F401
from benchmarks import common
from mdcns_tf.backbones.sasrec import SASRec
from mdcns_tf.models import SequentialRecommender
from mdcns_tf.samplers import SAMPLERS, sampler_params


def synthetic_batch(rng: np.random.Generator, batch: int, max_len: int, n_items: int) -> dict[str, tf.Tensor]:
    """Full-length sequences of distinct random items: inputs, next-item targets, the sequence as exclusions."""
    sequences = np.stack([rng.choice(np.arange(1, n_items + 1), max_len + 1, replace=False) for _ in range(batch)])
    return {
        "input_ids": tf.constant(sequences[:, :-1], tf.int32),
        "target_ids": tf.constant(sequences[:, 1:], tf.int32),
        "exclusion_ids": tf.constant(sequences, tf.int32),
        "user_index": tf.constant(rng.choice(np.arange(1, 22_000), batch, replace=False), tf.int32),
    }


def synthetic_train_sequences(args: argparse.Namespace, item_counts: list[int], mean_len: int = 9) -> list[np.ndarray]:
    """Beauty-like training sequences (about ``mean_len`` items a user, items drawn by popularity) for samplers that
    build a statistic of the training data first (GNNO's item graph, `NegativeSampler.prepare`)."""
    rng = np.random.default_rng(1)
    probabilities = np.asarray(item_counts[1:], np.float64) / sum(item_counts[1:])
    lengths = rng.poisson(mean_len - 2, args.n_users) + 2
    items = rng.choice(np.arange(1, args.n_items + 1), int(lengths.sum()), p=probabilities)
    return np.split(items, np.cumsum(lengths)[:-1])


def build_step(name: str, blocks: dict[str, Any], args: argparse.Namespace, item_counts: list[int]):
    encoder = SASRec(n_items=args.n_items, max_len=args.max_len, dim=args.dim, num_layers=2, num_heads=2, dropout=0.5)
    sampler = SAMPLERS[name](
        params=sampler_params(name, blocks),
        n_items=args.n_items,
        n_users=args.n_users,
        num_negatives=1,
        item_counts=item_counts,
        loss_name="bce",
        seed=0,
        name=name,
    )
    if sampler.needs_train_sequences:
        sampler.prepare(synthetic_train_sequences(args, item_counts))
    model = SequentialRecommender(encoder, sampler, "bce")
    model.build_for_input(args.max_len)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model, tf.function(model.train_step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--n-items", type=int, default=12_102)
    parser.add_argument("--n-users", type=int, default=22_363)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per sampler per round")
    parser.add_argument("--samplers", nargs="*", default=None)
    parser.add_argument("--output", default=os.path.join(common.RESULTS, "sampler_step_time.json"))
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    batch = synthetic_batch(rng, args.batch, args.max_len, args.n_items)
    item_counts = [0, *rng.zipf(1.5, args.n_items).clip(max=5_000).tolist()]
    # AutoSample is timed in both stages: the search (mixture + bi-level update) and the retraining.
    variants: dict[str, tuple[str, dict]] = {name: (name, {}) for name in args.samplers or SAMPLERS}
    if "autosample" in variants:
        variants["autosample_retrain"] = ("autosample", {})
    steps = {}
    for label, (name, blocks) in variants.items():
        model, step = build_step(name, blocks, args, item_counts)
        if label == "autosample_retrain":
            model.sampler.phase.assign(1)
            model.sampler.selected.assign(model.sampler.names.index("dns"))
        step(batch)  # trace + warm up
        step(batch)
        steps[label] = step
        print(f"built {label}", flush=True)

    # Wall time and process CPU time (all threads): on a shared, loaded machine the CPU time is the steadier
    # measure of the work a step does; on an idle one both agree.
    seconds: dict[str, list[float]] = {label: [] for label in steps}
    cpu_seconds: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(args.rounds):
        for label, step in steps.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                logs = step(batch)
            float(logs["loss"])  # wait for the work to finish
            seconds[label].append((time.perf_counter() - started) / args.steps)
            cpu_seconds[label].append((time.process_time() - cpu_started) / args.steps)
    result = {}
    for label in steps:
        ratios = [v / u for v, u in zip(seconds[label], seconds["uniform"], strict=True)]
        cpu_ratios = [v / u for v, u in zip(cpu_seconds[label], cpu_seconds["uniform"], strict=True)]
        result[label] = {
            "median_step_ms": round(1000 * statistics.median(seconds[label]), 1),
            "ratio_to_uniform": round(statistics.median(ratios), 2),
            "median_step_cpu_ms": round(1000 * statistics.median(cpu_seconds[label]), 1),
            "cpu_ratio_to_uniform": round(statistics.median(cpu_ratios), 2),
        }
        r = result[label]
        print(
            f"{label:20s} wall {r['median_step_ms']:8.1f} ms/step x{r['ratio_to_uniform']:.2f}   "
            f"cpu {r['median_step_cpu_ms']:8.1f} ms/step x{r['cpu_ratio_to_uniform']:.2f}"
        )
    payload = {
        "benchmark": "sampler_step_time",
        "command": common.command_line("benchmarks.sampler_step_time", argv),
        "when": common.now(),
        "machine": common.machine_info(),
        "versions": common.versions(),
        "git": common.git_state(),
        "shape": {k: getattr(args, k) for k in ("batch", "max_len", "dim", "n_items", "n_users")},
        "backbone": "sasrec (2 layers, 2 heads), loss bce, every position trained, default sampler params",
        "results": result,
    }
    common.write_json(args.output, payload)
    print(f"wrote {common.repo_relative(args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
