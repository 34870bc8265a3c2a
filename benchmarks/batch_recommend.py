"""Users per second of ``python -m pipeline.recommend`` (Beam RunInference over the exported SavedModel) at a
12,101-item catalogue (Beauty's size), direct runner with 2 worker processes.

    python -m benchmarks.batch_recommend [--users 40000] [--events 400000] [--batch-sizes 512] [--workers 2]
        [--out benchmarks/results/batch_recommend.json]

The data: a `pipeline.synthetic` log over 12,101 items (plus a few "cover" users whose sequences walk the items the
log left out, so the vocabulary holds every item), preprocessed by ``python -m pipeline.run --split loo``. The
model: an untrained SASRec (2 layers, d 64, max_len 50; weights do not change the cost), exported with K 10 and a
model card recording the data's fingerprint, as `mdcns_tf.train` writes it. Each timed run is a child process
``python -m pipeline.recommend ... --split all --direct_num_workers=W --direct_running_mode=multi_processing``:
``users_per_s`` is users / the pipeline's own run time (its log line; worker start-up and model loading included),
``users_per_s_wall`` users / the whole command (Python, TensorFlow and Beam imports, the data's fingerprint check
and the identity check included). ``model_only_users_per_s``: ``serving_default`` alone, in this process, on the
same padded histories in batches of the same size: the ceiling the pipeline's overhead is measured against.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
from mdcns_tf import features
from mdcns_tf.backbones import build_backbone
from mdcns_tf.config import ModelConfig
from mdcns_tf.savedmodel import publish
from pipeline import readback, synthetic

N_ITEMS = 12_101
MAX_LEN = 50
TOP_K = 10
FINISHED = re.compile(r"pipeline\.recommend finished in ([0-9.]+)s: (\d+) users")


def write_log(path: str, users: int, events: int, seed: int) -> None:
    """The synthetic log, then one "cover" user per 10 items the log does not hold (each item once)."""
    with open(path, "w") as f:
        synthetic.generate(f, users=users, items=N_ITEMS, events=events, seed=seed)
    seen = set()
    with open(path) as f:
        for line in f:
            seen.add(int(line.split("\t")[1]))
    missing = [item for item in range(1, N_ITEMS + 1) if item not in seen]
    with open(path, "a") as f:
        for start in range(0, len(missing), 10):
            chunk = missing[start : start + 10]
            chunk += [1, 2, 3][: max(0, 3 - len(chunk))]  # the leave-one-out minimum length
            for t, item in enumerate(chunk):
                f.write(f"cover-{start}\t{item}\t{t}\n")


def run_child(args: list[str]) -> tuple[float, str]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    seconds = time.monotonic() - start
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise RuntimeError(f"{args[0]} failed with exit code {done.returncode}")
    return seconds, done.stderr


def export_model(data_dir: str, root: str) -> str:
    metadata = features.Metadata.load(data_dir, verify=False)
    keras.utils.set_random_seed(0)
    encoder = build_backbone(ModelConfig(dim=64, num_layers=2, num_heads=2, dropout=0.0), metadata.n_items, MAX_LEN)
    encoder(tf.zeros([1, MAX_LEN], tf.int32))
    card = {"provenance": {"data": {"dir": data_dir, "fingerprint": metadata.fingerprint}}}
    return publish.export_saved_model(encoder, root, "mdcns", MAX_LEN, TOP_K, data_dir=data_dir, model_card=card)


def model_only(version_dir: str, data_dir: str, batch_size: int) -> float:
    """Users/s of ``serving_default`` alone on the test users' whole sequences (input + target), padded."""
    serve = tf.saved_model.load(version_dir).signatures["serving_default"]
    histories = [ids + [target] for _, ids, target in readback.read_split(data_dir, "test")]
    padded = np.zeros((len(histories), MAX_LEN), np.int32)
    for row, history in enumerate(histories):
        tail = history[-MAX_LEN:]
        padded[row, MAX_LEN - len(tail) :] = tail
    serve(item_ids=tf.constant(padded[:batch_size]))
    start = time.monotonic()
    for begin in range(0, len(padded), batch_size):
        serve(item_ids=tf.constant(padded[begin : begin + batch_size]))
    return len(padded) / (time.monotonic() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch-sizes", default="512", help="comma-separated --batch_size values, one run each")
    parser.add_argument("--workers", type=int, default=2, help="--direct_num_workers")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "batch_recommend.json"))
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    report = common.envelope(common.command_line("benchmarks.batch_recommend", argv))
    work = tempfile.mkdtemp(prefix="batch_recommend_")
    rows: list[dict[str, Any]] = []
    try:
        log, data = os.path.join(work, "log.tsv"), os.path.join(work, "data")
        write_log(log, args.users, args.events, args.seed)
        run_child(["pipeline.run", f"--input={log}", "--input_format=interactions", "--split=loo", f"--output={data}"])
        metadata = features.Metadata.load(data)
        if metadata.n_items != N_ITEMS:
            raise RuntimeError(f"the data holds {metadata.n_items} items, not {N_ITEMS}")
        version_dir = export_model(data, os.path.join(work, "models"))
        for batch_size in batch_sizes:
            output = os.path.join(work, f"out-{batch_size}")
            command = [
                "pipeline.recommend",
                f"--model={version_dir}",
                f"--data={data}",
                f"--output={output}",
                f"--batch_size={batch_size}",
                f"--direct_num_workers={args.workers}",
                "--direct_running_mode=multi_processing",
            ]
            load_before = os.getloadavg()
            wall, log_text = run_child(command)
            match = FINISHED.search(log_text)
            if match is None:
                raise RuntimeError("pipeline.recommend logged no 'finished in' line")
            with open(os.path.join(output, "_SUCCESS")) as f:
                summary = json.load(f)
            users = summary["users_out"]
            assert users == summary["users_in"] == metadata.n_users, summary
            rows.append(
                {
                    "batch_size": batch_size,
                    "users": users,
                    "pipeline_seconds": float(match.group(1)),
                    "wall_seconds": round(wall, 2),
                    "users_per_s": round(users / float(match.group(1))),
                    "users_per_s_wall": round(users / wall),
                    "model_only_users_per_s": round(model_only(version_dir, data, batch_size)),
                    "files": len(summary["files"]),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report |= {
        "what": (
            "python -m pipeline.recommend --split all (every user's whole sequence) on the direct runner, "
            f"--direct_num_workers={args.workers} --direct_running_mode=multi_processing, JSON lines out; "
            "users_per_s = users / the pipeline's run time (worker start-up and model loading included), "
            "users_per_s_wall = users / the whole command; model_only_users_per_s = serving_default alone in one "
            "process on the test users' padded sequences"
        ),
        "data": {
            "log": f"pipeline.synthetic --users {args.users} --items {N_ITEMS} --events {args.events} --seed "
            f"{args.seed} (+ cover users so every item occurs)",
            "n_users": metadata.n_users,
            "n_items": metadata.n_items,
            "split": "loo",
        },
        "model": {
            "backbone": "sasrec",
            "num_layers": 2,
            "dim": 64,
            "max_len": MAX_LEN,
            "top_k": TOP_K,
            "weights": "untrained",
            "index": "exact",
        },
        "target": "users_per_s >= 2000 on 2 cores",
        "rows": rows,
    }
    common.write_result(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
