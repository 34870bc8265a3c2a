"""No false result (issue class 2): a run whose loss stops being a number fails with a sentence and reports and
exports nothing; a split with no user is refused before training instead of measuring 0.0."""

from __future__ import annotations

import json
import os

import pytest
from conftest import synthetic_sequences, write_loo_dataset
from test_run_ownership import cli_argv

import mdcns_tf  # noqa: F401
from mdcns_tf import features, train
from mdcns_tf.runs.metrics_file import write_metrics
from mdcns_tf.savedmodel import versions


@pytest.mark.parametrize("trainer", ["single", "mdcns"])
def test_a_diverging_run_stops_with_a_sentence_and_reports_nothing(tiny_dataset, tmp_path, capsys, trainer):
    out = tmp_path / "run"
    extra = ["train.learning_rate=1.0e+30", "train.epochs=3", "export.enabled=true", f"trainer={trainer}"]
    if trainer == "mdcns":
        extra += ["mdcns.pool_size=10"]
    status = train.main(cli_argv(tiny_dataset, out, *extra))
    err = capsys.readouterr().err
    assert status == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training diverged" in errors[0] and "learning_rate" in errors[0], err
    assert not (out / "metrics.json").exists()
    model_dir = out / "export" / "mdcns"
    assert not model_dir.exists() or versions.serving_versions(str(model_dir)) == []


def test_metrics_that_are_not_numbers_are_never_written(tmp_path):
    with pytest.raises(ValueError, match="NaN or infinite"):
        write_metrics(str(tmp_path), {"valid": {"ndcg@10": float("nan")}})
    with pytest.raises(ValueError, match="NaN or infinite"):
        write_metrics(str(tmp_path), {"history": [{"epoch": 1, "loss": float("inf")}]})
    assert not os.listdir(tmp_path)
    write_metrics(str(tmp_path), {"valid": {"ndcg@10": 0.25}})
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f) == {"valid": {"ndcg@10": 0.25}}


@pytest.mark.parametrize(("empty", "extra"), [("valid", []), ("test", []), ("train", [])])
def test_an_empty_split_is_refused_before_training(tmp_path, capsys, empty, extra):
    data_dir = str(tmp_path / "data")
    metadata = write_loo_dataset(data_dir, synthetic_sequences(40, 30, seed=3), 30)
    # the split's records emptied, as a user split whose fraction rounds to 0 users writes it
    folder = os.path.join(data_dir, empty)
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))
    import tensorflow as tf

    with tf.io.TFRecordWriter(os.path.join(folder, f"part-0{features.TFRECORD_SUFFIX}"), options="GZIP"):
        pass
    metadata.records[empty] = 0
    metadata.save(data_dir)
    status = train.main(cli_argv(data_dir, tmp_path / "run", "eval.test=true", *extra))
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"the {empty} split holds no record" in err, err
    assert not (tmp_path / "run" / "metrics.json").exists()
