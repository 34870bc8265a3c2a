"""In-process latency and recall of the exported ``serving_default`` signature, exact and bfloat16 index side by side.

    python -m benchmarks.serving_latency [--catalogs beauty,1m] [--calls 200] [--indexes exact,bfloat16]
        [--also-without-onednn] [--out benchmarks/results/...]

For each catalog an untrained SASRec (2 layers, d 64, max_len 50; weights do not change the cost) is exported once per
``export.index`` (`mdcns_tf.savedmodel.publish.export_saved_model`), loaded back with `tf.saved_model.load` and warmed
up; then, per batch size, the indexes are called in turn (their order alternating every round, so that the load of the
machine falls on both alike) ``--calls`` times each with the same random left-padded histories; p50/p99/mean are in
milliseconds per call (one call = one batch). Also written: each export's size on disk, split into variables and graph,
and the size a copying index (stock TFRS ``BruteForce``: candidates `(n, d)` float32 + identifiers `(n,)` int32) would
add. This is the model's own cost, without TF Serving's RPC and batching overhead.
The machine's load average is recorded because other jobs skew timings.

Recall: ``recall@10`` (and ``@K``) of each non-exact index = the share of the exact export's top-10 (top-K) that it
returns, averaged over ``--recall-queries`` histories of two kinds: ``untrained_random`` (random histories through
the untrained model, as timed) and ``trained_like`` (the item table replaced by a clustered one whose row norms
follow popularity, as trained tables have, and histories drawn from one cluster each; the queries come from the
same untrained encoder over those histories; exported again for this, not timed); and, for each
``--trained-run LABEL=RUN_DIR``, ``trained_run``: that finished training run's selected weights (its own catalogue and
max_len), queried with the histories of its own test users, as TF Serving would receive them (``--catalogs ''``
measures only these).

``--also-without-onednn`` repeats the timings in a child process with ``TF_ENABLE_ONEDNN_OPTS=0``: TensorFlow's
Eigen kernels only, as a TF Serving binary built without oneDNN runs them (bfloat16 matmul is slow there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

import mdcns_tf  # noqa: F401
from benchmarks import common
from mdcns_tf import data
from mdcns_tf.backbones import build_backbone
from mdcns_tf.config import ModelConfig
from mdcns_tf.savedmodel import publish
from mdcns_tf.training import finished_run

CATALOGS = {"beauty": 12_101, "1m": 1_000_000}


def folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "min_ms": round(float(ms.min()), 3),
    }


def histories(rng: np.random.Generator, batch: int, max_len: int, draw) -> np.ndarray:
    """`(batch, max_len)` left-padded histories of 5..max_len items; ``draw(length)`` -> item ids."""
    ids = np.zeros((batch, max_len), np.int32)
    for row in range(batch):
        length = int(rng.integers(5, max_len + 1))
        ids[row, max_len - length :] = draw(length)
    return ids


def trained_like(n_items: int, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """A clustered item table `(n_items + 1, dim)` with popularity-dependent norms, and the items of each cluster.

    Trained tables are not isotropic noise: items gather by topic and popular items get larger norms (they are
    the positives of many steps). Topics of ~1,000 items; an item is its topic's centre plus noise; norms grow
    slowly with a Zipf popularity. Many near-equal scores within a topic make it a harder case for rounding.
    """
    n_topics = max(4, n_items // 1000)
    topic = rng.integers(n_topics, size=n_items + 1)
    centres = rng.normal(size=(n_topics, dim))
    table = centres[topic] + 0.7 * rng.normal(size=(n_items + 1, dim))
    popularity = 1.0 / (1.0 + rng.permutation(n_items + 1)) ** 0.8
    table *= (0.5 + (popularity / popularity.max()) ** 0.1)[:, None] * 0.1
    table[0] = 0.0
    members = [np.flatnonzero(topic[1:] == t) + 1 for t in range(n_topics)]
    return table.astype(np.float32), [m for m in members if len(m)]


def top_ids(serve, ids: np.ndarray, chunk: int = 64) -> np.ndarray:
    return np.concatenate(
        [serve(item_ids=tf.constant(ids[s : s + chunk]))["item_ids"].numpy() for s in range(0, len(ids), chunk)]
    )


def recall(exact: np.ndarray, other: np.ndarray, k: int) -> dict[str, float]:
    """Share of the exact top-k that ``other`` returns, per query: mean, minimum, share of identical top-k."""
    hits = np.array([len(set(e[:k]) & set(o[:k])) / k for e, o in zip(exact, other, strict=True)])
    same = np.mean([np.array_equal(e[:k], o[:k]) for e, o in zip(exact, other, strict=True)])
    return {
        "mean": round(float(hits.mean()), 5),
        "min": round(float(hits.min()), 3),
        "same_list": round(float(same), 4),
    }


def export_all(encoder, name: str, args: argparse.Namespace, workdir: str, tag: str) -> dict[str, str]:
    return {
        index: publish.export_saved_model(
            encoder,
            workdir,
            f"bench_{name}_{tag}_{index}",
            args.max_len,
            args.top_k,
            warmup_batch_sizes=tuple(args.batch_sizes),
            verify=False,
            index=index,
        )
        for index in args.indexes
    }


def measure_recall(serve: dict[str, Any], queries: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Recall of every index but the exact one against the exact one on ``queries`` `(n, max_len)`."""
    answers = {index: top_ids(fn, queries) for index, fn in serve.items()}
    return {
        index: {
            "recall@10": recall(answers["exact"], answer, 10),
            f"recall@{args.top_k}": recall(answers["exact"], answer, args.top_k),
        }
        for index, answer in answers.items()
        if index != "exact"
    }


def measure(name: str, n_items: int, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    keras.utils.set_random_seed(0)
    config = ModelConfig(backbone="sasrec", dim=args.dim, num_layers=2, num_heads=2, dropout=0.2)
    encoder = build_backbone(config, n_items, args.max_len)
    encoder(tf.zeros([1, args.max_len], tf.int32))
    result: dict[str, Any] = {
        "n_items": n_items,
        "item_table_bytes": (n_items + 1) * args.dim * 4,
        "stock_bruteforce_would_add_bytes": n_items * args.dim * 4 + n_items * 4,
        "indexes": {},
        "latency": {},
    }
    serve = {}
    for index in args.indexes:
        started = time.perf_counter()
        (path,) = export_all(
            encoder, name, argparse.Namespace(**{**vars(args), "indexes": [index]}), workdir, "timed"
        ).values()
        export_seconds = time.perf_counter() - started
        started = time.perf_counter()
        serve[index] = tf.saved_model.load(path).signatures["serving_default"]
        result["indexes"][index] = {
            "export_seconds": round(export_seconds, 2),
            "load_seconds": round(time.perf_counter() - started, 2),
            "export_bytes": folder_size(path),
            "variables_bytes": folder_size(os.path.join(path, "variables")),
            "saved_model_pb_bytes": os.path.getsize(os.path.join(path, "saved_model.pb")),
            "path": path,
        }

    rng = np.random.default_rng(0)
    uniform = lambda length: rng.integers(1, n_items + 1, size=length)  # noqa: E731
    for batch in args.batch_sizes:
        inputs = tf.constant(histories(rng, batch, args.max_len, uniform))
        for _ in range(args.warmup):
            for fn in serve.values():
                fn(item_ids=inputs)["item_ids"].numpy()
        times: dict[str, list[float]] = {index: [] for index in serve}
        for call in range(args.calls):
            for index in args.indexes[:: 1 if call % 2 == 0 else -1]:
                started = time.perf_counter()
                serve[index](item_ids=inputs)["item_ids"].numpy()  # .numpy() waits for the result
                times[index].append(time.perf_counter() - started)
        result["latency"][f"batch_{batch}"] = {index: percentiles(t) for index, t in times.items()}
        print(f"{name} ({n_items:,} items) batch {batch}: {result['latency'][f'batch_{batch}']}", flush=True)
    if args.recall_queries and len(args.indexes) > 1:
        queries = histories(rng, args.recall_queries, args.max_len, uniform)
        result["recall"] = {"untrained_random": measure_recall(serve, queries, args)}
        serve.clear()  # the 1M exports hold 256-384 MB each
        for info in result["indexes"].values():
            shutil.rmtree(info["path"], ignore_errors=True)
        table, members = trained_like(n_items, args.dim, rng)
        encoder.item_embeddings.assign(table)
        topics = rng.integers(len(members), size=args.recall_queries)
        queries = np.concatenate(
            [histories(rng, 1, args.max_len, lambda length, t=t: rng.choice(members[t], size=length)) for t in topics]
        )
        paths = export_all(encoder, name, args, workdir, "trained_like")
        serve = {index: tf.saved_model.load(path).signatures["serving_default"] for index, path in paths.items()}
        result["recall"]["trained_like"] = measure_recall(serve, queries, args)
        serve.clear()
        for path in paths.values():
            shutil.rmtree(path, ignore_errors=True)
        print(f"{name} recall: {json.dumps(result['recall'])}", flush=True)
    for info in result["indexes"].values():
        del info["path"]
    return result


def measure_trained_run(run_dir: str, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    """Recall of every index against the exact one for a finished training run's selected weights, on the left-padded
    histories `(test users, max_len)` of its own test split."""
    config = finished_run.load_run_config(run_dir)
    model, metadata = finished_run.load_model(run_dir, config)
    users = data.eval_dataset(config.data.dir, "test", config.data.max_len, batch_size=256)
    queries = np.concatenate([batch[data.INPUT_IDS].numpy() for batch in users])
    run_args = argparse.Namespace(**{**vars(args), "max_len": config.data.max_len})
    paths = export_all(model.encoder, "run", run_args, workdir, "trained_run")
    serve = {index: tf.saved_model.load(path).signatures["serving_default"] for index, path in paths.items()}
    result = {
        "run": run_dir,
        "backbone": config.model.backbone,
        "n_items": metadata.n_items,
        "max_len": config.data.max_len,
        "test_users": len(queries),
        "run_test_metrics": (finished_run.read_metrics(run_dir) or {}).get("test"),
        "recall": measure_recall(serve, queries, args),
    }
    serve.clear()
    for path in paths.values():
        shutil.rmtree(path, ignore_errors=True)
    print(f"trained run {run_dir}: {json.dumps(result['recall'])}", flush=True)
    return result


def labelled_run(text: str) -> tuple[str, str]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"--trained-run takes LABEL=RUN_DIR, got {text!r}")
    return label, path


def without_onednn(argv: list[str], calls: int) -> dict[str, Any]:
    """The same timings (``calls`` a batch size) in a child process with TensorFlow's oneDNN kernels off (read when
    TensorFlow is imported, hence the process); no recall (the kernels do not change which items are returned)."""
    handle, out = tempfile.mkstemp(prefix="serving_latency_eigen_", suffix=".json")
    os.close(handle)
    child = [a for a in argv if a != "--also-without-onednn"]
    child += ["--calls", str(calls), "--recall-queries", "0", "--out", out]
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}
    try:
        subprocess.run([sys.executable, "-m", "benchmarks.serving_latency", *child], check=True, env=env)
        with open(out) as f:
            report = json.load(f)
    finally:
        os.remove(out)
    return {
        "TF_ENABLE_ONEDNN_OPTS": "0",
        "calls": calls,
        "load_average_1m_end": report["machine"]["load_average_1m_end"],
        **{name: {"latency": result["latency"]} for name, result in report["results"].items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalogs", default="beauty,1m", help=f"comma-separated names from {sorted(CATALOGS)}")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--indexes", default="exact,bfloat16", help="export.index values, exact first")
    parser.add_argument("--recall-queries", type=int, default=512, help="histories per query kind (0: no recall)")
    parser.add_argument("--also-without-onednn", action="store_true", help="time again with TF_ENABLE_ONEDNN_OPTS=0")
    parser.add_argument(
        "--trained-run",
        type=labelled_run,
        action="append",
        default=[],
        metavar="LABEL=RUN_DIR",
        help="also the recall of each index for this finished run, on its own test users' histories (repeatable)",
    )
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "serving_latency.json"))
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.indexes = args.indexes.split(",")
    catalogs = [name for name in args.catalogs.split(",") if name]
    for name in catalogs:
        if name not in CATALOGS:
            parser.error(f"unknown catalog {name!r}; expected names from {sorted(CATALOGS)}")
    for _, run_dir in args.trained_run:
        if not os.path.exists(finished_run.config_path(run_dir)):
            parser.error(f"--trained-run {run_dir!r}: not the output_dir of a training run (no config.yaml)")
    if args.indexes[0] != "exact":
        parser.error("--indexes must start with exact (recall is measured against it)")

    report = common.envelope(
        common.command_line("benchmarks.serving_latency", argv), (*common.PACKAGES, "tensorflow-recommenders")
    )
    workdir = tempfile.mkdtemp(prefix="serving_latency_")
    try:
        results = {name: measure(name, CATALOGS[name], args, workdir) for name in catalogs}
        trained = {label: measure_trained_run(run_dir, args, workdir) for label, run_dir in args.trained_run}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report |= {
        "what": (
            "serving_default of the export, in-process (tf.saved_model.load), ms per call of one batch, for each "
            "export.index, calls interleaved; recall of each index against the exact one"
        ),
        "queries": {
            "timed": "random left-padded histories of 5..max_len uniformly drawn items, untrained model",
            "recall.untrained_random": f"{args.recall_queries} such histories",
            "recall.trained_like": (
                f"{args.recall_queries} histories of items from one cluster each, over a clustered item table with "
                "popularity-dependent norms (benchmarks.serving_latency.trained_like); untrained encoder"
            ),
            "recall.trained_run": "a finished run's selected weights, each of its test users' history",
            "recall": "share of the exact export's top-k ids that the index returns; min over queries; same_list: "
            "share of queries with the identical ranked top-k",
        },
        "kernels": {"TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (oneDNN on: x86 default)")},
        "model": {
            "backbone": "sasrec",
            "num_layers": 2,
            "dim": args.dim,
            "max_len": args.max_len,
            "top_k": args.top_k,
            "weights": "untrained",
        },
        "calls": args.calls,
        "warmup_calls": args.warmup,
        "results": results,
        **({"trained_runs": trained} if trained else {}),
    }
    if args.also_without_onednn:
        # Eigen's bfloat16 matmul is slow: at most 20 calls, so that the run stays short.
        report["without_onednn"] = without_onednn(argv, min(args.calls, 20))
    common.write_result(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
