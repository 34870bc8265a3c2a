"""Training-step time of every registered backbone, measured side by side in one process.

One step = forward + backward + Adam update of the backbone alone on random full-length sequences (no padding), with
either BCE against one uniformly drawn negative at every position (``--loss bce``, the default: the loss costs
little, so the backbones' differences show) or the full softmax over the whole catalogue at every position
(``--loss softmax``: a `(batch * seq_len, n_items)` logit matrix that dominates every backbone's step).

Backbones are timed in interleaved rounds (round r times every backbone in turn) and the ratio to SASRec is taken
per round, then the median over rounds, so a change in machine load hits all of them alike. Wall time and process
CPU time are both reported (CPU time is the fairer figure on a shared machine). Defaults are the Beauty setting:
batch 256, length 50, dim 64, 2 layers, 2 heads, 12,102 items. Writes ``benchmarks/results/backbone_step_time.json``
(``--output``) with the command, machine, versions and commit.

    python -m benchmarks.backbone_step_time [--loss bce|softmax] [--jit-compile] [--backbones sasrec mamba4rec]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

import mdcns_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS; tf.keras resolves lazily, so the order is safe)
from benchmarks import common
from mdcns_tf.backbones import BACKBONES, Backbone, get_backbone_class


def make_step(model: Backbone, loss: str, n_items: int, jit_compile: bool) -> Any:
    """A compiled training step ``ids (batch, seq_len + 1) -> loss`` for ``model``."""
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function(jit_compile=jit_compile)
    def step(batch: tf.Tensor) -> tf.Tensor:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        with tf.GradientTape() as tape:
            states = model(inputs, training=True)  # (batch, seq_len, dim)
            table = model.item_embeddings
            if loss == "softmax":
                logits = tf.einsum("bld,nd->bln", states, table[1:])  # padding row excluded
                value = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets - 1, logits=logits)
                )
            else:
                negatives = tf.random.uniform(tf.shape(targets), 1, n_items + 1, dtype=targets.dtype)
                positive = tf.reduce_sum(states * tf.gather(table, targets), axis=-1)
                negative = tf.reduce_sum(states * tf.gather(table, negatives), axis=-1)
                value = tf.reduce_mean(tf.math.softplus(-positive) + tf.math.softplus(negative))
        grads = tape.gradient(value, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return value

    return step


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="*", default=sorted(BACKBONES), help="default: all registered")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--n-items", type=int, default=12102, help="catalogue size (Beauty: 12,102)")
    parser.add_argument("--loss", choices=["bce", "softmax"], default="bce")
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per backbone per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per backbone after tracing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(common.RESULTS, "backbone_step_time.json"))
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    batch = tf.constant(rng.integers(1, args.n_items + 1, (args.batch_size, args.seq_len + 1)), tf.int32)
    steps, results = {}, {}
    for name in args.backbones:
        model = get_backbone_class(name)(
            n_items=args.n_items,
            max_len=args.seq_len,
            dim=args.dim,
            num_layers=args.num_layers,
            num_heads=args.num_heads,
            dropout=args.dropout,
            name=name,
        )
        steps[name] = make_step(model, args.loss, args.n_items, args.jit_compile)
        start = time.perf_counter()
        steps[name](batch).numpy()  # trace (and compile)
        trace_seconds = time.perf_counter() - start
        for _ in range(args.warmup):
            steps[name](batch).numpy()
        results[name] = {
            "params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
            "trace_seconds": trace_seconds,
            "wall": [],
            "cpu": [],
        }
        print(f"{name}: traced in {trace_seconds:.1f}s", file=sys.stderr)

    for round_index in range(args.rounds):
        for name, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step(batch).numpy()
            results[name]["wall"].append((time.perf_counter() - wall) / args.steps)
            results[name]["cpu"].append((time.process_time() - cpu) / args.steps)
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)

    tokens = args.batch_size * args.seq_len
    reference = "sasrec" if "sasrec" in results else None
    rows = []
    for name, r in results.items():
        wall, cpu = statistics.median(r["wall"]), statistics.median(r["cpu"])
        r.update(step_seconds=wall, step_cpu_seconds=cpu, tokens_per_second=tokens / wall)
        if reference:
            # Per-round ratios, then the median: robust to load changes between rounds.
            for kind in ("wall", "cpu"):
                ratios = [mine / ref for mine, ref in zip(r[kind], results[reference][kind], strict=True)]
                r[f"{kind}_vs_{reference}"] = statistics.median(ratios)
        ratio = f"{r['wall_vs_sasrec']:.1f}x | {r['cpu_vs_sasrec']:.1f}x" if reference else "- | -"
        rows.append(
            f"| {name} | {r['params']:,} | {wall * 1000:.0f} | {cpu * 1000:.0f} | {tokens / wall:,.0f} | {ratio} |"
        )
    machine = common.machine_info()
    print(
        f"batch {args.batch_size} x length {args.seq_len}, dim {args.dim}, {args.num_layers} layers, "
        f"{args.n_items:,} items, loss {args.loss}, jit_compile {args.jit_compile}; median of {args.rounds} rounds "
        f"x {args.steps} steps; machine {machine}\n"
    )
    print("| backbone | params | step wall (ms) | step CPU (ms) | tokens/s (wall) | wall vs SASRec | CPU vs SASRec |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    report = {
        "command": common.command_line("benchmarks.backbone_step_time", argv),
        "when": common.now(),
        "machine": machine,
        "versions": common.versions(),
        "git": common.git_state(),
        "settings": vars(args),
        "results": results,
    }
    if args.output:
        common.write_json(args.output, report)
        print(f"wrote {common.repo_relative(args.output)}")
    return report


if __name__ == "__main__":
    main()
