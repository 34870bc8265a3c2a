"""Every run says what it is: the provenance record in metrics.json and in each export's model card (also of a
re-export), git state that never fails, and the benchmarks stamping their results from the same module."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

import mdcns_tf  # noqa: F401
from mdcns_tf import export, metrics, train
from mdcns_tf.config import Config
from mdcns_tf.config_loader import load_config
from mdcns_tf.features import Metadata
from mdcns_tf.runs import provenance
from mdcns_tf.runs import state as run_state
from mdcns_tf.savedmodel import assets, signatures, versions

FINGERPRINT = {"algorithm": "sha256", "splits": {"train": {"records": 3, "files": {"part-0": "ab" * 32}}}}
RUN = [
    "data.max_len=12",
    "data.batch_size=512",  # one step an epoch
    "model.dim=16",
    "model.num_layers=1",
    "model.num_heads=1",
    "train.epochs=2",
    "train.verbose=0",
    "train.tensorboard=false",
    "export.top_k=5",
]


def check_record(record: dict, config_dict: dict, data_dir: str, fingerprint: dict | None) -> None:
    """The fields every record holds, with the types a reader can rely on."""
    assert record["config"] == config_dict
    assert record["config_hash"] == run_state.config_hash(config_dict)
    assert record["data"] == {"dir": data_dir, "fingerprint": fingerprint}
    assert record["metric_version"] == metrics.METRIC_VERSION
    assert record["argv"] == sys.argv
    assert set(record["versions"]) == set(provenance.PACKAGES)
    assert all(isinstance(v, str) and v[0].isdigit() for v in record["versions"].values()), record["versions"]
    git = record["git"]
    assert (git["commit"] is None and git["dirty"] is None) or (
        re.fullmatch(r"[0-9a-f]{40}", git["commit"]) and isinstance(git["dirty"], bool)
    ), git
    machine = record["machine"]
    assert isinstance(machine["cores"], int) and machine["cores"] >= 1
    assert machine["cpu_model"] and machine["platform"]
    assert machine["memory_gib"] is None or machine["memory_gib"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", record["created_at"])
    json.dumps(record)  # all of it is JSON


def test_run_record_fields():
    config_dict = Config().to_dict()
    record = provenance.run_record(config_dict, "data/x", FINGERPRINT)
    check_record(record, config_dict, "data/x", FINGERPRINT)
    # In this checkout the commit is the repository's HEAD.
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if head:
        assert record["git"]["commit"] == head


def test_git_state_never_fails_and_is_none_outside_a_checkout(tmp_path, monkeypatch):
    assert provenance.git_state(str(tmp_path)) == {"commit": None, "dirty": None}
    # A folder inside a checkout is not the checkout of the code there (an installed package in a venv in a repo).
    assert provenance.git_state(os.path.join(REPO, "mdcns_tf")) == {"commit": None, "dirty": None}
    monkeypatch.setenv("PATH", str(tmp_path))  # no git binary
    assert provenance.git_state(REPO) == {"commit": None, "dirty": None}


def test_a_missing_package_has_no_version():
    assert provenance.versions(("numpy", "no-such-distribution-here")) == {
        "numpy": np.__version__,
        "no-such-distribution-here": None,
    }


def test_benchmarks_stamp_results_with_the_same_module():
    from benchmarks import common

    assert common.versions() == provenance.versions((*provenance.PACKAGES, "matplotlib"))
    assert common.git_state() == provenance.git_state(common.REPO)
    assert set(provenance.machine()) - {"load_average_1m"} <= set(common.machine_info())
    for copy in ("cpu_model", "usable_cores", "subprocess", "platform", "importlib"):
        assert not hasattr(common, copy), f"benchmarks.common keeps its own {copy}"


# --- a tiny trained run: metrics.json, its export's model card, a re-export ------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tiny_dataset: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    output_dir = str(tmp_path_factory.mktemp("provenance") / "run")
    config = load_config(None, [*RUN, f"data.dir={tiny_dataset}", f"output_dir={output_dir}"])
    return output_dir, train.run(config)


def read_card(version_dir: str) -> dict:
    with open(os.path.join(version_dir, signatures.MODEL_CARD_FILE)) as f:
        return json.load(f)


def test_metrics_json_and_the_model_card_say_what_the_run_is(trained_run, tiny_dataset):
    output_dir, result = trained_run
    with open(os.path.join(output_dir, "metrics.json")) as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(result))
    config_dict = load_config(os.path.join(output_dir, "config.yaml")).to_dict()
    fingerprint = Metadata.load(tiny_dataset, verify=False).fingerprint  # None: conftest writes no fingerprint
    check_record(written["provenance"], config_dict, tiny_dataset, fingerprint)
    assert written["metric_version"] == metrics.METRIC_VERSION

    card = read_card(written["export_path"])
    assert card["provenance"] == written["provenance"]
    assert card["metrics"] == {k: written[k] for k in ("valid", "test", "best_epoch", "weights")}
    assert (card["model_name"], card["version"], card["top_k"], card["max_len"]) == ("mdcns", 1, 5, 12)
    assert card["signatures"] == list(signatures.SIGNATURES)


def test_reexport_serves_the_selected_weights_with_a_new_k(trained_run, tiny_dataset, capsys):
    output_dir, result = trained_run
    assert result["weights"] == "best_epoch"
    assert export.main(["--run", output_dir, "--top_k", "8"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path == os.path.join(output_dir, "export", "mdcns", "2")
    assert versions.serving_versions(os.path.join(output_dir, "export", "mdcns")) == [1, 2]

    # Same weights as the training run's export: the first 5 of its top 8 are the original top 5.
    history = np.zeros((3, 12), np.int32)
    history[:, -3:] = [[1, 2, 3], [10, 11, 12], [40, 7, 33]]
    first = tf.saved_model.load(result["export_path"]).signatures["serving_default"](item_ids=tf.constant(history))
    again = tf.saved_model.load(path).signatures["serving_default"](item_ids=tf.constant(history))
    assert again["item_ids"].shape == (3, 8)
    np.testing.assert_array_equal(again["item_ids"].numpy()[:, :5], first["item_ids"].numpy())
    np.testing.assert_allclose(again["scores"].numpy()[:, :5], first["scores"].numpy(), rtol=1e-5)
    assert assets.read_vocabulary(path) == assets.read_vocabulary(result["export_path"])

    card = read_card(path)
    assert card["top_k"] == 8 and card["version"] == 2
    assert card["training_provenance"] == result["provenance"]
    assert card["exported_from"] == os.path.abspath(output_dir)
    assert card["metrics"]["valid"] == result["valid"]
    config_dict = load_config(os.path.join(output_dir, "config.yaml"), ["export.top_k=8"]).to_dict()
    check_record(card["provenance"], config_dict, tiny_dataset, None)


def test_index_recall_of_a_trained_run_is_measured_on_its_own_test_users(trained_run, tmp_path, capsys):
    from benchmarks import serving_latency

    output_dir, _ = trained_run
    out = str(tmp_path / "recall.json")
    argv = ["--catalogs", "", "--trained-run", f"tiny={output_dir}", "--top-k", "5", "--out", out]
    assert serving_latency.main(argv) == 0
    with open(out) as f:
        report = json.load(f)
    assert report["results"] == {}  # --catalogs '': no latency, only the trained run
    tiny = report["trained_runs"]["tiny"]
    assert (tiny["test_users"], tiny["max_len"], tiny["n_items"]) == (300, 12, 60)  # the run's own split and shapes
    assert set(tiny["recall"]) == {"bfloat16"} and set(tiny["recall"]["bfloat16"]) == {"recall@10", "recall@5"}
    assert 0.0 <= tiny["recall"]["bfloat16"]["recall@5"]["min"] <= tiny["recall"]["bfloat16"]["recall@5"]["mean"] <= 1
    with pytest.raises(SystemExit):
        serving_latency.main(["--catalogs", "", "--trained-run", f"nothing={tmp_path}"])
    assert "not the output_dir of a training run" in capsys.readouterr().err


def test_reexport_errors_are_one_line(trained_run, tmp_path, capsys):
    output_dir, _ = trained_run
    assert export.main(["--run", str(tmp_path)]) == 2
    assert "config.yaml not found" in capsys.readouterr().err
    assert export.main(["--run", output_dir, "--version", "1"]) == 2
    assert "immutable" in capsys.readouterr().err
    assert export.main(["--run", output_dir, "--model_name", "../up"]) == 2
    assert "export.model_name" in capsys.readouterr().err
    assert export.main(["--run", output_dir, "--top_k", "61"]) == 2
    assert "exceeds the number of items" in capsys.readouterr().err
