"""Where two trained runs differ: test NDCG@10 by the target item's popularity and by the user's history length.

    python -m benchmarks.breakdown --run softmax=RUN_DIR --run mdcns=RUN_DIR [--split test] [--out PREFIX]

Each ``RUN_DIR`` is a training run's output folder (``config.yaml`` + ``best/weights``; a grid cell's scratch folder
is one). Every user of the split is ranked against the whole catalogue exactly as in training's evaluation
(`mdcns_tf.metrics.target_ranks`, history excluded); the users are then grouped

- by how often the target item occurs in the training data (``Metadata.item_counts``): the users split into three
  equal groups, popular / middle / rare targets;
- by history length: 1-3, 4-6, 7-12, 13+ items.

For each group: users, NDCG@10 and Recall@10 of every run, and each run's NDCG@10 minus the first run's with the
standard error of that paired difference (per-user differences, so the error is the one that matters for a gap).
The rows with a large share of the users and a large gap are what a difference in the overall number is made of.
Writes ``PREFIX.json`` and ``PREFIX.md`` (default ``benchmarks/results/breakdown``) with the command and the machine.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import numpy as np

from benchmarks import common
from mdcns_tf import cli

HISTORY_BUCKETS = ((1, 3), (4, 6), (7, 12), (13, None))
POPULARITY_GROUPS = ("popular third", "middle third", "rare third")
K = 10


@dataclasses.dataclass
class UserRanks:
    """Per user of a split: 0-based rank of the target, the target's training count, the history length."""

    ranks: np.ndarray
    target_counts: np.ndarray
    history_lengths: np.ndarray


def user_ranks(run_dir: str, split: str) -> UserRanks:
    """Ranks every ``split`` user of a finished run with its selected weights (`mdcns_tf.training.finished_run`)."""
    import tensorflow as tf

    from mdcns_tf import data, metrics
    from mdcns_tf.batch import HISTORY_IDS, INPUT_IDS, TARGET
    from mdcns_tf.training import finished_run

    config = finished_run.load_run_config(run_dir)
    model, metadata = finished_run.load_model(run_dir, config)
    dataset = data.eval_dataset(config.data.dir, split, config.data.max_len, config.data.eval_batch_size)

    @tf.function
    def ranks_of(batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        ranks = metrics.target_ranks(
            model.query_embeddings(batch[INPUT_IDS]),
            model.encoder.item_embeddings,
            batch[TARGET],
            batch[HISTORY_IDS],
            chunk_size=config.eval.item_chunk_size,
        )
        lengths = tf.reduce_sum(tf.cast(tf.not_equal(batch[HISTORY_IDS], 0), tf.int32), axis=1)
        return ranks, tf.cast(batch[TARGET], tf.int32), lengths

    parts = [tuple(t.numpy() for t in ranks_of(batch)) for batch in dataset]
    ranks, targets, lengths = (np.concatenate(column) for column in zip(*parts, strict=True))
    counts = np.asarray(metadata.item_counts, np.int64)
    return UserRanks(ranks=ranks, target_counts=counts[targets], history_lengths=lengths)


def ndcg_at(ranks: np.ndarray, k: int = K) -> np.ndarray:
    """Per-user NDCG@k of 0-based ranks `(n,)` -> `(n,)`, by the training evaluation's own definition."""
    from mdcns_tf import metrics

    return metrics.metrics_from_ranks(ranks, (k,))[f"ndcg@{k}"].numpy().astype(np.float64)


def groups(reference: UserRanks) -> dict[str, np.ndarray]:
    """Boolean masks `(n,)` of every group, by target popularity (tied counts stay in one group) and history."""
    order = np.argsort(-reference.target_counts, kind="stable")
    thirds = np.array_split(order, 3)
    out = {}
    for name, members in zip(POPULARITY_GROUPS, thirds, strict=True):
        mask = np.zeros(len(order), bool)
        mask[members] = True
        out[name] = mask
    for low, high in HISTORY_BUCKETS:
        name = f"history {low}-{high}" if high else f"history {low}+"
        lengths = reference.history_lengths
        out[name] = (lengths >= low) & (lengths <= (high or lengths.max()))
    return out


def compare(runs: dict[str, UserRanks]) -> list[dict[str, Any]]:
    """One row per group (first row: all users) with every run's metrics and its paired gap to the first run."""
    names = list(runs)
    first = runs[names[0]]
    for name in names[1:]:
        if not np.array_equal(runs[name].target_counts, first.target_counts):
            raise SystemExit(f"breakdown: runs {names[0]!r} and {name!r} were not evaluated on the same users")
    ndcg = {name: ndcg_at(r.ranks) for name, r in runs.items()}
    rows = []
    for group, mask in {"all users": np.ones(len(first.ranks), bool), **groups(first)}.items():
        n = int(mask.sum())
        if n < 2:  # an empty group (e.g. no history shorter than the data's minimum) has no row
            continue
        counts = first.target_counts[mask]
        row: dict[str, Any] = {
            "group": group,
            "users": n,
            "target_train_count_range": [int(counts.min()), int(counts.max())],
        }
        for name in names:
            row[f"ndcg@{K}:{name}"] = round(float(ndcg[name][mask].mean()), 4)
            row[f"recall@{K}:{name}"] = round(float((runs[name].ranks[mask] < K).mean()), 4)
        for name in names[1:]:
            diff = ndcg[name][mask] - ndcg[names[0]][mask]
            row[f"gap:{name}"] = round(float(diff.mean()), 4)
            row[f"gap_se:{name}"] = round(float(diff.std(ddof=1) / np.sqrt(n)), 4)
        rows.append(row)
    return rows


def markdown(result: dict[str, Any]) -> str:
    names = list(result["runs"])
    header = ["group", "users", "target train count"]
    header += [f"NDCG@{K} {name}" for name in names] + [f"{name} - {names[0]} (± se)" for name in names[1:]]
    lines = [
        f"# Test NDCG@{K} by group: {' vs '.join(names)}",
        "",
        f"- Command: `{result['command']}`",
        f"- Split: {result['split']}; runs: " + ", ".join(f"{n} `{p}`" for n, p in result["runs"].items()),
        f"- Machine: {result['machine']['cores']} cores, {result['machine']['cpu_model']}; "
        f"{common.measured_at(result)}; metric version {result.get('metric_version', 1)}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in result["rows"]:
        low, high = row["target_train_count_range"]
        cells = [row["group"], str(row["users"]), f"{low}-{high}"]
        cells += [f"{row[f'ndcg@{K}:{name}']:.4f}" for name in names]
        cells += [f"{row[f'gap:{name}']:+.4f} ± {row[f'gap_se:{name}']:.4f}" for name in names[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_run(text: str) -> tuple[str, str]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise SystemExit(f"breakdown: --run takes LABEL=RUN_DIR, got {text!r}")
    return label, path


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("benchmarks.breakdown", None, __doc__)
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=RUN_DIR", help="two or more")
    parser.add_argument("--split", choices=("valid", "test"), default="test")
    parser.add_argument("--out", default=os.path.join(common.RESULTS, "breakdown"), help="output path without suffix")
    args = parser.parse_args(argv)
    runs = dict(parse_run(text) for text in args.run)
    if len(runs) < 2:
        parser.error("give at least two --run LABEL=RUN_DIR with different labels")
    cli.start_tensorflow()
    try:
        ranked = {label: user_ranks(path, args.split) for label, path in runs.items()}
    except FileNotFoundError as e:
        raise SystemExit(f"breakdown: {e}") from None
    from mdcns_tf.metrics import METRIC_VERSION

    result = common.envelope(common.command_line("benchmarks.breakdown", argv))
    result |= {"metric_version": METRIC_VERSION, "split": args.split, "runs": runs, "rows": compare(ranked)}
    common.write_result(args.out + ".json", result)
    text = markdown(result)
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
