"""Distributed training: two `MultiWorkerMirroredStrategy` workers on 127.0.0.1 end with identical weights and only
the chief writes the run's files; a 2-replica `MirroredStrategy` step equals the one-device step on the same batch
(per-replica loss scaling); an export that crashes leaves no version folder TF Serving would load.

Workers are subprocesses (a strategy must be configured before TensorFlow initialises its devices), waited for
while they make progress: a collective that never completes fails the test instead of hanging CI, and a loaded
machine that makes them slow does not.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import REPO, synthetic_sequences, wait_while_progressing, write_loo_dataset

# Runs `mdcns_tf.train.run` and records a digest of the trained weights (the model `run` built, before and after
# restoring the best epoch) to its own file, so the test can compare workers without sharing memory.
WORKER_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    import mdcns_tf
    from mdcns_tf import train
    from mdcns_tf.config_loader import load_config

    built = []
    build_model = train.build_model

    def recording_build_model(config, metadata):
        built.append(build_model(config, metadata))
        return built[-1]

    train.build_model = recording_build_model
    result = train.run(load_config(sys.argv[1], sys.argv[3:]))
    model = built[0]
    arrays = [v.numpy() for v in model.encoder.weights]
    digest = hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()
    with open(sys.argv[2], "w") as f:
        json.dump({"sha256": digest, "steps": int(model.optimizer.iterations.numpy()), "valid": result["valid"]}, f)
    """
)

# One SGD step on one fixed batch, on one device and on two logical CPUs with MirroredStrategy; writes the largest
# weight difference. Full softmax and no dropout: the step is deterministic, so only the gradient scaling can differ.
# Every sequence has the same length, so both replicas train the same number of positions and the mean of the
# replicas' mean losses is exactly the batch mean (with unequal counts it is the mean of per-replica means).
MIRRORED_SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, sys
    import mdcns_tf
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tf_keras as keras
    from mdcns_tf import data, train
    from mdcns_tf.config_loader import load_config
    from mdcns_tf.features import Metadata

    config = load_config(None, sys.argv[2:])
    metadata = Metadata.load(config.data.dir)
    data_config = dataclasses.replace(config.data, batch_size=8, max_train_sequences=8)
    batch = next(iter(data.train_dataset(data_config, seed=0)))
    one_batch = tf.data.Dataset.from_tensors(batch)

    def one_step(strategy, initial=None):
        with strategy.scope():
            model = train.build_model(config, metadata)
            model.build_for_input(config.data.max_len)
            if initial is not None:
                for variable, value in zip(model.trainable_weights, initial):
                    variable.assign(value)
            model.compile(optimizer=keras.optimizers.SGD(1.0))
        before = [v.numpy() for v in model.trainable_weights]
        model.fit(one_batch, epochs=1, verbose=0)
        return before, [v.numpy() for v in model.trainable_weights]

    initial, single = one_step(tf.distribute.get_strategy())
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    _, mirrored = one_step(strategy, initial)
    update = max(float(np.abs(a - b).max()) for a, b in zip(single, initial))
    gap = max(float(np.abs(a - b).max()) for a, b in zip(single, mirrored))
    with open(sys.argv[1], "w") as f:
        json.dump({"replicas": strategy.num_replicas_in_sync, "update": update, "gap": gap}, f)
    """
)

COMMON = [
    "model.dim=16",
    "model.num_layers=1",
    "model.num_heads=1",
    "model.dropout=0.0",
    "data.max_len=10",
    "train.tensorboard=false",
    "train.verbose=0",
    "seed=5",
]


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = REPO + os.pathsep + os.environ.get("PYTHONPATH", "")
    return {**env, **extra}


def finish(processes: list[subprocess.Popen], logs: list[str]) -> None:
    """Waits for all while they make progress (`wait_while_progressing`: a loaded machine makes them slow, not
    failed); on a stall or a failure kills the others and fails with the failing log's tail."""
    try:
        codes = wait_while_progressing(processes, logs)
        for code, log in zip(codes, logs, strict=True):
            if code != 0:
                with open(log) as f:
                    pytest.fail(f"{log} exited with {code}:\n{f.read()[-3000:]}")
    except TimeoutError as e:
        pytest.fail(f"the workers stopped making progress ({e}); logs: {logs}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("distributed_data"))
    write_loo_dataset(data_dir, synthetic_sequences(240, 50, seed=1), 50)
    return data_dir


def test_two_workers_end_with_identical_weights_and_only_the_chief_writes(tmp_path, small_dataset):
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    output_dir = tmp_path / "run"  # shared by both workers, as on a shared file system
    overrides = [
        *COMMON,
        f"data.dir={small_dataset}",
        f"output_dir={output_dir}",
        "train.distribute=multi_worker",
        "train.epochs=2",
        "data.batch_size=32",
        "export.top_k=5",
    ]
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes, logs = [], []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        logs.append(str(tmp_path / f"worker{index}.log"))
        with open(logs[-1], "w") as log:
            command = [
                sys.executable,
                str(script),
                os.path.join(REPO, "configs", "base.yaml"),
                str(tmp_path / f"worker{index}.json"),
                *overrides,
            ]
            processes.append(subprocess.Popen(command, env=environment(TF_CONFIG=tf_config), stdout=log, stderr=log))
    finish(processes, logs)

    chief, worker = (json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2))
    assert chief["steps"] == worker["steps"] > 0
    assert chief["sha256"] == worker["sha256"], "the workers' weights diverged: gradients were not all-reduced"
    assert chief["valid"] == worker["valid"]  # evaluation is sharded too; metrics are reduced across workers
    assert 0.0 < chief["valid"]["recall@20"] <= 1.0  # a mean over users, not a sum over workers
    # Only the chief's files remain: one metrics.json, one best/ selection, one export version, no worker temp dirs
    # (BackupAndRestore removes its checkpoints when training ends and may leave the empty backup/ folder).
    # run_manifest.json: what the chief's run owns there (mdcns_tf.runs.ownership); no worker's lock file is left
    expected = ["best", "config.yaml", "export", "metrics.json", "run_manifest.json"]
    assert sorted(set(os.listdir(output_dir)) - {"backup"}) == expected
    assert not any(files for _, _, files in os.walk(output_dir / "backup"))
    assert not [p for p in output_dir.rglob("workertemp*")]
    assert os.listdir(output_dir / "export" / "mdcns") == ["1"]
    assert json.loads((output_dir / "metrics.json").read_text())["epochs_run"] == 2


def test_mirrored_step_equals_the_single_device_step(tmp_path):
    equal_lengths = str(tmp_path / "data")
    write_loo_dataset(equal_lengths, synthetic_sequences(16, 50, seed=2, min_len=12, max_len=12), 50)
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    result, log = tmp_path / "mirrored.json", str(tmp_path / "mirrored.log")
    overrides = [*COMMON, f"data.dir={equal_lengths}", "loss.name=softmax", "data.bucket_by_length=false"]
    with open(log, "w") as f:
        process = subprocess.Popen(
            [sys.executable, str(script), str(result), *overrides], env=environment(), stdout=f, stderr=f
        )
    finish([process], [log])
    outcome = json.loads(result.read_text())
    assert outcome["replicas"] == 2
    assert outcome["update"] > 1e-3  # the step did move the weights
    # Without dividing each replica's loss by 2 the summed gradient, hence the update, would be twice as large.
    assert outcome["gap"] < 1e-5 * max(1.0, outcome["update"]), outcome


def test_multi_worker_without_tf_config_is_a_clear_error(tmp_path, small_dataset, monkeypatch):
    from mdcns_tf import train
    from mdcns_tf.config import ConfigError
    from mdcns_tf.config_loader import load_config

    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = load_config(None, [f"data.dir={small_dataset}", f"output_dir={tmp_path}", "train.distribute=multi_worker"])
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        train.run(config)
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}')
    with pytest.raises(ConfigError, match="task.index 3"):
        train.run(config)


def test_crash_mid_export_leaves_no_servable_version(tmp_path, monkeypatch):
    import tensorflow as tf

    from mdcns_tf.backbones import build_backbone
    from mdcns_tf.config import ModelConfig
    from mdcns_tf.savedmodel import publish, versions

    encoder = build_backbone(ModelConfig(dim=8, num_layers=1, num_heads=1), n_items=20, max_len=5)
    encoder(tf.zeros([1, 5], tf.int32))

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(tf.saved_model, "save", crash)
    base = tmp_path / "export"
    with pytest.raises(OSError, match="simulated"):
        publish.export_saved_model(encoder, str(base), "mdcns", max_len=5, top_k=3, verify=False)
    # TF Serving loads the children of the model folder whose names are integers: there must be none, and the
    # staging dot-folder is cleaned up.
    assert versions.serving_versions(str(base / "mdcns")) == []
    assert [name for name in os.listdir(base / "mdcns") if name.isdigit()] == []
    monkeypatch.undo()
    np.testing.assert_equal(versions.next_version(str(base / "mdcns")), 1)


# Exports with the real `tf.saved_model.save`, then SIGKILLs itself before the version folder is renamed into place:
# the worst moment, with a complete SavedModel on disk under its staging name.
KILLED_EXPORT_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import mdcns_tf
    import tensorflow as tf
    from mdcns_tf.backbones import build_backbone
    from mdcns_tf.config import ModelConfig
    from mdcns_tf.savedmodel import publish

    encoder = build_backbone(ModelConfig(dim=8, num_layers=1, num_heads=1), n_items=20, max_len=5)
    encoder(tf.zeros([1, 5], tf.int32))
    save = tf.saved_model.save

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    tf.saved_model.save = save_then_die
    publish.export_saved_model(encoder, sys.argv[1], "mdcns", max_len=5, top_k=3, verify=False)
    """
)


def test_sigkill_mid_export_leaves_only_a_hidden_staging_folder(tmp_path):
    script, log = tmp_path / "killed_export.py", str(tmp_path / "killed_export.log")
    script.write_text(KILLED_EXPORT_SCRIPT)
    base = tmp_path / "export"
    with open(log, "w") as f:
        process = subprocess.Popen([sys.executable, str(script), str(base)], env=environment(), stdout=f, stderr=f)
    try:
        (code,) = wait_while_progressing([process], [log])
    finally:
        if process.poll() is None:
            process.kill()
    assert code == -9, open(log).read()[-2000:]
    children = os.listdir(base / "mdcns")
    assert children and all(name.startswith(".") for name in children), children  # the staging folder stays ...
    assert export_versions(str(base / "mdcns")) == []  # ... but TF Serving sees no version in it


def export_versions(model_dir: str) -> list[int]:
    from mdcns_tf.savedmodel import versions

    return versions.serving_versions(model_dir)
