"""In-process latency of the exported ``serving_default`` signature, loaded with `tf.saved_model.load`.

    python -m benchmarks.serving_latency [--catalogs beauty,1m] [--calls 200] [--out benchmarks/results/...]

For each catalog an untrained SASRec (2 layers, d 64, max_len 50; weights do not change the cost) is exported with
`mdcns_tf.export.export_saved_model`, loaded back, warmed up, then called ``--calls`` times per batch size with
random left-padded histories; p50/p99/mean are in milliseconds per call (one call = one batch). Also written: the
export's size on disk, split into variables and graph, and the size a copying index (stock TFRS ``BruteForce``:
candidates `(n, d)` float32 + identifiers `(n,)` int32) would add. This is the model's own cost, without TF
Serving's RPC and batching overhead. The machine's load average is recorded because other jobs skew timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

import mdcns_tf  # noqa: F401
from benchmarks.common import cpu_model
from mdcns_tf import export
from mdcns_tf.backbones import build_backbone
from mdcns_tf.config import ModelConfig

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


def measure(name: str, n_items: int, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    keras.utils.set_random_seed(0)
    config = ModelConfig(backbone="sasrec", dim=args.dim, num_layers=2, num_heads=2, dropout=0.2)
    encoder = build_backbone(config, n_items, args.max_len)
    encoder(tf.zeros([1, args.max_len], tf.int32))
    started = time.perf_counter()
    path = export.export_saved_model(
        encoder,
        workdir,
        f"bench_{name}",
        args.max_len,
        args.top_k,
        warmup_batch_sizes=tuple(args.batch_sizes),
        verify=False,
    )
    export_seconds = time.perf_counter() - started
    started = time.perf_counter()
    serve = tf.saved_model.load(path).signatures["serving_default"]
    load_seconds = time.perf_counter() - started

    rng = np.random.default_rng(0)
    result: dict[str, Any] = {
        "n_items": n_items,
        "export_seconds": round(export_seconds, 2),
        "load_seconds": round(load_seconds, 2),
        "export_bytes": folder_size(path),
        "variables_bytes": folder_size(os.path.join(path, "variables")),
        "saved_model_pb_bytes": os.path.getsize(os.path.join(path, "saved_model.pb")),
        "item_table_bytes": (n_items + 1) * args.dim * 4,
        "stock_bruteforce_would_add_bytes": n_items * args.dim * 4 + n_items * 4,
        "latency": {},
    }
    for batch in args.batch_sizes:
        ids = np.zeros((batch, args.max_len), np.int32)
        for row in range(batch):
            length = int(rng.integers(5, args.max_len + 1))
            ids[row, args.max_len - length :] = rng.integers(1, n_items + 1, size=length)
        inputs = tf.constant(ids)
        for _ in range(args.warmup):
            serve(item_ids=inputs)["item_ids"].numpy()
        times = []
        for _ in range(args.calls):
            started = time.perf_counter()
            serve(item_ids=inputs)["item_ids"].numpy()  # .numpy() waits for the result
            times.append(time.perf_counter() - started)
        result["latency"][f"batch_{batch}"] = percentiles(times)
        print(f"{name} ({n_items:,} items) batch {batch}: {result['latency'][f'batch_{batch}']}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalogs", default="beauty,1m", help=f"comma-separated names from {sorted(CATALOGS)}")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "serving_latency.json"))
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    load_before = os.getloadavg()
    workdir = tempfile.mkdtemp(prefix="serving_latency_")
    try:
        results = {name: measure(name, CATALOGS[name], args, workdir) for name in args.catalogs.split(",")}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "command": " ".join(
            [os.path.basename(sys.executable), "-m", "benchmarks.serving_latency", *(argv or sys.argv[1:])]
        ),
        "what": "serving_default of the export, in-process (tf.saved_model.load), ms per call of one batch",
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
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
        },
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "tf_keras": keras.__version__,
            "tensorflow_recommenders": tfrs.__version__,
            "numpy": np.__version__,
        },
        "results": results,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
