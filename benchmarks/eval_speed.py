"""Full-ranking evaluation time of a real split, file-order batches against length-bucketed ones, side by side.

Each backbone is built untrained for the dataset (evaluation cost does not depend on the weights), the split is
evaluated in interleaved rounds (file order, then bucketed, per round) and the median time of each is reported with
their ratio; the metrics of the two orders are checked to agree (they must: trimming left padding does not change
a backbone's states). Writes ``benchmarks/results/eval_speed.json`` (``--output``) with the command and machine.

    python -m benchmarks.eval_speed --data data/beauty_loo [--split valid] [--backbones sasrec gru4rec] [--rounds 3]

``--ranking`` measures the full-ranking kernel alone (`mdcns_tf.metrics.target_ranks`) on synthetic data, without a
dataset: per catalogue size, users/s of the previous kernel (`legacy_target_ranks`, the code before the block scan,
kept here verbatim) and of the current one, side by side in interleaved rounds, with the machine's float32 matmul
ceiling measured in the same rounds: the FLOP/s of a large square matmul, as users/s = FLOP/s / (2 x n_items x d)
(every user's scores take 2 n d FLOPs), and the users/s of the bare block matmuls without any counting (what no
exact float32 scan can beat). The two kernels' ranks are compared user by user, and with a float64 brute force for
the first ``--reference-users`` users. Writes ``benchmarks/results/eval_ranking.json`` (``--output``).

    python -m benchmarks.eval_speed --ranking [--items 12101 1000000] [--dim 64] [--batch 512] [--rounds 5]
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

import mdcns_tf  # noqa: F401
from benchmarks import common, timing
from mdcns_tf import cli, data
from mdcns_tf.config_loader import load_config
from mdcns_tf.features import Metadata
from mdcns_tf.training.factory import build_model


def measure(data_dir: str, split: str, backbone: str, rounds: int, batch_size: int) -> dict[str, Any]:
    config = load_config(None, [f"data.dir={data_dir}", f"model.backbone={backbone}", "model.dropout=0.5"])
    model = build_model(config, Metadata.load(data_dir))
    model.build_for_input(config.data.max_len)
    model.compile()
    datasets = {
        bucketed: data.eval_dataset(data_dir, split, config.data.max_len, batch_size, bucket_by_length=bucketed)
        for bucketed in (False, True)
    }
    results = {bucketed: model.evaluate(ds, return_dict=True, verbose=0) for bucketed, ds in datasets.items()}
    times = timing.interleaved(
        {
            "file_order": lambda: model.evaluate(datasets[False], verbose=0),
            "bucketed": lambda: model.evaluate(datasets[True], verbose=0),
        },
        rounds,
    )
    gap = max(abs(results[True][k] - results[False][k]) for k in results[False])
    file_order, bucketed = times.median_wall("file_order"), times.median_wall("bucketed")
    return {
        "backbone": backbone,
        "file_order_s": round(file_order, 3),
        "bucketed_s": round(bucketed, 3),
        "speedup": round(file_order / bucketed, 2),
        "max_metric_difference": gap,
        "seconds": times.wall,
    }


def legacy_target_ranks(queries, item_embeddings, target, history_ids, chunk_size: int = 65_536):
    """`mdcns_tf.metrics.target_ranks` as it was before the block scan (commit 3144b34), verbatim: a float32 matmul
    per chunk of ``chunk_size`` items and a `(batch, chunk)` history mask built with scatter_nd in every chunk."""
    import tensorflow as tf

    target = tf.cast(target, tf.int32)
    history = tf.cast(history_ids, tf.int32)
    target_scores = tf.reduce_sum(queries * tf.gather(item_embeddings, target), axis=-1)
    batch = tf.shape(queries)[0]
    rows = tf.broadcast_to(tf.range(batch)[:, tf.newaxis], tf.shape(history))
    n_rows = tf.shape(item_embeddings)[0]

    def count_chunk(start, total):
        chunk = item_embeddings[start : start + chunk_size]
        size = tf.shape(chunk)[0]
        scores = tf.matmul(queries, chunk, transpose_b=True)
        ids = tf.range(start, start + size)
        local = history - start
        inside = (local >= 0) & (local < size) & tf.not_equal(history, 0)
        pairs = tf.stack([tf.boolean_mask(rows, inside), tf.boolean_mask(local, inside)], axis=1)
        seen = tf.scatter_nd(pairs, tf.ones(tf.shape(pairs)[:1], tf.int32), tf.stack([batch, size])) > 0
        ranked = tf.not_equal(ids, 0)[tf.newaxis, :] & tf.not_equal(ids[tf.newaxis, :], target[:, tf.newaxis])
        beats = (scores > target_scores[:, tf.newaxis]) & ranked & ~seen
        return start + chunk_size, total + tf.reduce_sum(tf.cast(beats, tf.int32), axis=1)

    _, above = tf.while_loop(
        lambda start, _: start < n_rows,
        count_chunk,
        (tf.constant(0), tf.zeros_like(target)),
    )
    return above


def synthetic_users(n_items: int, dim: int, batch: int, history: int, seed: int):
    """Random queries `(batch, dim)` and table `(n_items + 1, dim)` (float32), targets, and 0-padded histories of 1 to
    ``history`` items, a quarter of them holding the target (repeat consumption) and some a repeated item."""
    import numpy as np

    rng = np.random.default_rng(seed)
    table = rng.normal(0.0, 0.1, size=(n_items + 1, dim)).astype(np.float32)
    queries = rng.normal(0.0, 1.0, size=(batch, dim)).astype(np.float32)
    targets = rng.integers(1, n_items + 1, size=batch).astype(np.int32)
    histories = rng.integers(1, n_items + 1, size=(batch, history)).astype(np.int32)
    lengths = rng.integers(1, history + 1, size=batch)
    histories[np.arange(history)[np.newaxis, :] >= lengths[:, np.newaxis]] = 0
    repeat = rng.random(batch) < 0.25
    histories[repeat, 0] = targets[repeat]
    if history > 1:
        histories[::3, 1] = histories[::3, 0]
    return queries, table, targets, histories


def float64_ranks(queries, table, targets, histories):
    """The definition (docs/design.md, section 6) in float64, user by user: an exact reference."""
    import numpy as np

    ranks = []
    table = table.astype(np.float64)
    for q, target, history in zip(queries, targets, histories, strict=True):
        scores = table @ q.astype(np.float64)
        beats = scores > scores[target]
        beats[np.unique(np.concatenate([[0, target], history]))] = False
        ranks.append(int(beats.sum()))
    return np.array(ranks)


def measure_ranking(
    n_items: int, dim: int, batch: int, history: int, rounds: int, reference_users: int, ceiling_size: int, seed: int
) -> dict[str, Any]:
    import numpy as np
    import tensorflow as tf

    from mdcns_tf import metrics

    queries_np, table_np, targets_np, histories_np = synthetic_users(n_items, dim, batch, history, seed)
    table = tf.Variable(table_np)  # a resource variable, as a model's item table is
    queries, targets, histories = (tf.constant(a) for a in (queries_np, targets_np, histories_np))
    chunk = 65_536  # eval.item_chunk_size's default
    block = min(chunk, max(metrics.BLOCK_SCORES // batch, metrics.MIN_BLOCK_ITEMS), n_items + 1)

    old = tf.function(lambda: legacy_target_ranks(queries, table, targets, histories, chunk))
    new = tf.function(lambda: metrics.target_ranks(queries, table, targets, histories, chunk))

    @tf.function
    def scan_only():  # the new kernel's block matmuls and nothing else
        values = tf.convert_to_tensor(table)
        whole = n_items // block

        def body(i, total):
            scores = tf.matmul(queries, tf.slice(values, [i * block, 0], [block, -1]), transpose_b=True)
            return i + 1, total + scores[:, 0]

        _, total = tf.while_loop(lambda i, _: i < whole, body, (tf.constant(0), tf.zeros([batch])))
        return total + tf.matmul(queries, values[whole * block :], transpose_b=True)[:, 0]

    rng = np.random.default_rng(seed + 1)
    left, right = (tf.constant(rng.normal(size=(ceiling_size, ceiling_size)).astype(np.float32)) for _ in range(2))
    square = tf.function(lambda: tf.matmul(left, right)[0, 0])

    old_ranks, new_ranks = old().numpy(), new().numpy()
    scan_only().numpy()
    square().numpy()
    # Small catalogues take milliseconds a batch: repeat the calls so each timing is at least ~0.1 s.
    repeat = max(1, min(50, 200_000 // n_items))

    def calls(fn):
        return lambda: [fn().numpy() for _ in range(repeat)]

    times = timing.interleaved(
        {"ceiling": lambda: square().numpy(), "scan_only": calls(scan_only), "old": calls(old), "new": calls(new)},
        rounds,
    )
    work = 2.0 * n_items * dim  # FLOPs of one user's scores
    ceiling_flops = [2.0 * ceiling_size**3 / t for t in times.wall["ceiling"]]  # one matmul a call
    users = {name: [batch * repeat / t for t in times.wall[name]] for name in ("scan_only", "old", "new")}
    ceiling_users = [flops / work for flops in ceiling_flops]
    reference = float64_ranks(
        queries_np[:reference_users], table_np, targets_np[:reference_users], histories_np[:reference_users]
    )
    return {
        "n_items": n_items,
        "dim": dim,
        "batch": batch,
        "history_max": history,
        "chunk_size": chunk,
        "block_items": block,
        "calls_per_timing": repeat,
        "ceiling_matmul": f"{ceiling_size}x{ceiling_size} @ {ceiling_size}x{ceiling_size} float32",
        "ceiling_gflops": round(statistics.median(ceiling_flops) / 1e9, 1),
        "ceiling_users_per_s": round(statistics.median(ceiling_users)),
        "scan_only_users_per_s": round(statistics.median(users["scan_only"])),
        "old_users_per_s": round(statistics.median(users["old"]), 1),
        "new_users_per_s": round(statistics.median(users["new"]), 1),
        # Per round, then the median: load that hits a whole round cancels.
        "new_over_old": round(statistics.median(n / o for n, o in zip(users["new"], users["old"], strict=True)), 2),
        "new_share_of_ceiling": round(
            statistics.median(n / c for n, c in zip(users["new"], ceiling_users, strict=True)), 3
        ),
        "scan_only_share_of_ceiling": round(
            statistics.median(n / c for n, c in zip(users["scan_only"], ceiling_users, strict=True)), 3
        ),
        "ranks_differing_old_new": int(np.sum(old_ranks != new_ranks)),
        "reference_users": int(len(reference)),
        "ranks_differing_new_float64": int(np.sum(new_ranks[: len(reference)] != reference)),
        "max_rank_difference_new_float64": int(np.max(np.abs(new_ranks[: len(reference)] - reference), initial=0)),
        "seconds": times.wall,
        "others_cpu_seconds": times.others_cpu,
        "stolen_seconds": times.stolen,
    }


def ranking_main(args, argv: list[str] | None) -> int:
    head = common.envelope(common.command_line("benchmarks.eval_speed", argv))
    rows = []
    for n_items in args.items:
        for batch in args.batch:
            row = measure_ranking(
                n_items,
                args.dim,
                batch,
                args.history,
                args.rounds,
                args.reference_users,
                args.ceiling_size,
                args.seed,
            )
            rows.append(row)
            print(
                f"{n_items:>9,} items, d {args.dim}, batch {batch}: old {row['old_users_per_s']:,.0f} users/s, "
                f"new {row['new_users_per_s']:,.0f} ({row['new_over_old']:.2f}x old), ceiling "
                f"{row['ceiling_users_per_s']:,} ({row['ceiling_gflops']} GFLOP/s): new at "
                f"{row['new_share_of_ceiling']:.0%}, bare matmuls at {row['scan_only_share_of_ceiling']:.0%}; "
                f"ranks differing old/new {row['ranks_differing_old_new']} of {batch}",
                flush=True,
            )
    common.write_result(args.output, {**head, "rows": rows})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("benchmarks.eval_speed", None, __doc__)
    parser.add_argument("--data", help="a pipeline output folder (metadata.json + splits)")
    parser.add_argument("--split", default="valid", choices=["valid", "test"])
    parser.add_argument("--backbones", nargs="+", default=["sasrec", "gru4rec"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--output", help="results JSON (default eval_speed.json, with --ranking eval_ranking.json)")
    ranking = parser.add_argument_group("--ranking: the full-ranking kernel alone, on synthetic data")
    ranking.add_argument("--ranking", action="store_true", help="measure the kernel instead of a split")
    ranking.add_argument("--items", type=int, nargs="+", default=[12_101, 1_000_000], help="catalogue sizes")
    ranking.add_argument("--dim", type=int, default=64)
    ranking.add_argument("--batch", type=int, nargs="+", default=[512], help="users a batch (data.eval_batch_size)")
    ranking.add_argument("--history", type=int, default=50, help="the longest history (lengths drawn in 1..this)")
    ranking.add_argument("--reference-users", type=int, default=64, help="users checked against float64")
    ranking.add_argument("--ceiling-size", type=int, default=2000, help="n of the n x n x n ceiling matmul")
    ranking.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.ranking:
        args.output = args.output or "benchmarks/results/eval_ranking.json"
        return ranking_main(args, argv)
    if not args.data:
        parser.error("--data is required (or --ranking)")
    args.output = args.output or "benchmarks/results/eval_speed.json"
    head = common.envelope(common.command_line("benchmarks.eval_speed", argv))
    rows = [measure(args.data, args.split, b, args.rounds, args.batch_size) for b in args.backbones]
    for row in rows:
        print(
            f"{row['backbone']:10} file order {row['file_order_s']:.2f}s  bucketed {row['bucketed_s']:.2f}s  "
            f"{row['speedup']:.2f}x  (metrics differ by at most {row['max_metric_difference']:.1e})"
        )
    common.write_result(args.output, {**head, "data": args.data, "split": args.split, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
