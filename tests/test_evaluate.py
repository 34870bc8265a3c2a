"""`python -m mdcns_tf.evaluate` re-measures a finished run's selected weights."""

from __future__ import annotations

import json
import os

import pytest
import tf_keras as keras

import mdcns_tf  # noqa: F401
from mdcns_tf import evaluate, metrics, train
from mdcns_tf.config_loader import load_config


@pytest.fixture
def process_random_state():
    """`train.run` switches Keras dropout to `tf.random.Generator`s for the whole process; later tests in this
    process (the export's variable inventory) expect the default, so it is switched back."""
    yield
    keras.backend.experimental.disable_tf_random_generator()


def test_re_evaluation_reproduces_the_run_metrics(tiny_dataset, tmp_path, process_random_state):
    run_dir = str(tmp_path / "run")
    overrides = [
        f"data.dir={tiny_dataset}",
        f"output_dir={run_dir}",
        "model.dim=16",
        "model.num_layers=1",
        "data.max_len=12",
        "data.batch_size=64",
        "train.epochs=3",
        "train.tensorboard=false",
        "train.verbose=0",
        "export.enabled=false",
    ]
    result = train.run(load_config(None, overrides))
    assert evaluate.main(["--run", run_dir, "--output", str(tmp_path / "again.json")]) == 0
    with open(tmp_path / "again.json") as f:
        again = json.load(f)
    for split in ("valid", "test"):
        for name, value in result[split].items():
            assert again[split][name] == pytest.approx(value, abs=1e-6), (split, name)
    assert result["test"]["recall@20"] > 0
    # Both say which ranking metric produced them, and the run's history stamps each epoch's end in wall-clock time.
    assert result["metric_version"] == again["metric_version"] == metrics.METRIC_VERSION == 2
    stamps = [h["wall_time"] for h in result["history"]]
    assert len(stamps) == 3 and stamps == sorted(stamps) and stamps[0] > 1.7e9


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path, capsys):
    assert evaluate.main(["--run", str(tmp_path)]) == 2
    assert "config.yaml not found" in capsys.readouterr().err
    os.makedirs(tmp_path / "best")
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    assert evaluate.main(["--run", str(tmp_path)]) == 2
    assert "has not finished a validated epoch" in capsys.readouterr().err
