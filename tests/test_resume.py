"""A training run killed with SIGKILL mid-epoch resumes from its `BackupAndRestore` backup and ends where an
uninterrupted run with the same seed ends: same epochs, same best epoch, same metrics (tolerance below).

The trainer is MDCNS with dropout, so the backup must carry everything that makes a step reproducible: both
students, both optimizers (the peer's is a second Adam), the candidate-pool generator, the dropout generators, and
the data order (the shuffle is seeded with the epoch, not with how many epochs this process has run).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from conftest import REPO, synthetic_sequences, write_loo_dataset

# Same seed, same data order, same random streams: the runs do the same float operations in the same order on one
# CPU device, so metrics agree to float32 rounding. The tolerance only absorbs oneDNN's thread-count dependent
# reduction order; a lost or repeated epoch moves NDCG by far more than this.
TOLERANCE = 1e-5
RUN_TIMEOUT = 150  # seconds a single training subprocess may take before the test fails instead of hanging CI

OVERRIDES = [
    "trainer=mdcns",
    "mdcns.pool_size=16",
    "model.dim=16",
    "model.num_layers=1",
    "model.dropout=0.2",
    "data.max_len=10",
    "data.batch_size=64",
    "train.epochs=6",
    "train.patience=10",
    "train.tensorboard=false",
    "train.verbose=0",
    "export.enabled=false",
    "seed=3",
]


def trainer_command(data_dir: str, output_dir: str) -> list[str]:
    sets = [*OVERRIDES, f"data.dir={data_dir}", f"output_dir={output_dir}"]
    config = os.path.join(REPO, "configs", "base.yaml")
    return [sys.executable, "-m", "mdcns_tf.train", "--config", config, *(a for s in sets for a in ("--set", s))]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def wait(process: subprocess.Popen, log_path: str, timeout: float = RUN_TIMEOUT) -> None:
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"training did not finish within {timeout}s; log: {log_path}")
    if code != 0:
        with open(log_path) as f:
            pytest.fail(f"training exited with {code}:\n{f.read()[-3000:]}")


def test_sigkill_mid_epoch_resumes_to_the_same_result(tmp_path):
    data_dir = str(tmp_path / "data")
    write_loo_dataset(data_dir, synthetic_sequences(1500, 80, seed=0), 80)
    run_a, run_b = str(tmp_path / "a"), str(tmp_path / "b")
    logs = {name: str(tmp_path / f"{name}.log") for name in ("a", "b1", "b2")}

    with open(logs["a"], "w") as log_a, open(logs["b1"], "w") as log_b1:
        # A (uninterrupted) and the first life of B run side by side to keep the test short.
        a = subprocess.Popen(trainer_command(data_dir, run_a), env=environment(), stdout=log_a, stderr=log_a)
        b = subprocess.Popen(trainer_command(data_dir, run_b), env=environment(), stdout=log_b1, stderr=log_b1)
        backup_index = os.path.join(run_b, "backup", "chief", "checkpoint")
        deadline = time.monotonic() + RUN_TIMEOUT
        while not os.path.exists(backup_index) and b.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if b.poll() is not None or not os.path.exists(backup_index):
            b.kill()
            a.kill()
            pytest.fail(f"run B ended or stalled before writing a backup; log: {logs['b1']}")
        time.sleep(0.3)  # into the next epoch: the kill lands mid-epoch, after at least one completed epoch
        b.send_signal(signal.SIGKILL)
        b.wait()
        wait(a, logs["a"])

    assert b.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(run_b, "metrics.json")), "run B finished before it was killed"
    # The backup holds what a step's randomness and state depend on, not only the model weights.
    names = [name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(os.path.dirname(backup_index)))]
    assert any(name.startswith("model/peer_optimizer/") for name in names), "the peer's Adam state is not backed up"
    assert any("generator" in name for name in names), "the candidate-pool generator state is not backed up"
    killed_at = json.load(open(os.path.join(run_b, "best", "state.json")))["history"]

    with open(logs["b2"], "w") as log_b2:
        b = subprocess.Popen(trainer_command(data_dir, run_b), env=environment(), stdout=log_b2, stderr=log_b2)
        wait(b, logs["b2"])
    # B's second life starts after the last backed-up epoch (it resumed, it did not start over).
    resumed_epochs = [int(e) for e in re.findall(r"epoch (\d+)/6 took", open(logs["b2"]).read())]
    assert resumed_epochs and resumed_epochs[0] > 1, resumed_epochs
    assert resumed_epochs[0] <= len(killed_at) + 1, (resumed_epochs, killed_at)

    a_metrics = json.load(open(os.path.join(run_a, "metrics.json")))
    b_metrics = json.load(open(os.path.join(run_b, "metrics.json")))
    assert b_metrics["epochs_run"] == a_metrics["epochs_run"] == 6, "an epoch was lost or repeated"
    assert b_metrics["best_epoch"] == a_metrics["best_epoch"]
    assert [h["epoch"] for h in b_metrics["history"]] == list(range(1, 7))
    for split in ("valid", "test"):
        for name, value in a_metrics[split].items():
            assert b_metrics[split][name] == pytest.approx(value, abs=TOLERANCE), (split, name)
    for a_epoch, b_epoch in zip(a_metrics["history"], b_metrics["history"], strict=True):
        assert b_epoch["loss"] == pytest.approx(a_epoch["loss"], abs=TOLERANCE * 100), a_epoch["epoch"]
    assert not os.path.exists(os.path.join(run_b, "backup", "chief")), "the backup is removed once training ends"
