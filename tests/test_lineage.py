"""Lineage that cannot break unseen (issue class 4): every record of a run carries its identity (run id, config hash,
data fingerprint) and every consumer checks it: a resumed run, mdcns-evaluate, mdcns-export; metadata.json is
checked against the records it describes, so a self-consistent hand edit is refused.

The data is written by the pipeline (with its fingerprint) from a small sequences file; "preprocessed again" is the
pipeline run again into the same folder with --overwrite.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import synthetic_sequences
from test_hostile_runs import KILLED, Killed, config_for, killed_at_epoch, read_json

import mdcns_tf  # noqa: F401
from mdcns_tf import evaluate, export, features, train
from mdcns_tf.config import ConfigError
from mdcns_tf.runs import lineage, ownership
from mdcns_tf.runs import state as run_state
from mdcns_tf.savedmodel import signatures
from pipeline import run as pipeline_run

SEQUENCES = synthetic_sequences(300, 60, seed=0)


def sequences_file(path: Path, sequences: list[list[int]]) -> Path:
    path.write_text("".join(f"u{u} " + " ".join(f"i{i}" for i in s) + "\n" for u, s in enumerate(sequences)))
    return path


def preprocess(input_path: Path, output: Path, *extra: str) -> str:
    args = [f"--input={input_path}", "--input_format=sequences", "--split=loo", f"--output={output}", *extra]
    assert pipeline_run.main(args) == 0
    return str(output)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two logs of the same 60 items: the original, and one where the first user's history changed."""
    root = tmp_path_factory.mktemp("logs")
    changed = [list(reversed(SEQUENCES[0])), *SEQUENCES[1:]]
    return sequences_file(root / "log.txt", SEQUENCES), sequences_file(root / "changed.txt", changed)


@pytest.fixture(scope="module")
def pipeline_data(inputs, tmp_path_factory: pytest.TempPathFactory) -> str:
    return preprocess(inputs[0], tmp_path_factory.mktemp("pipeline") / "data")


@pytest.fixture(scope="module")
def finished(pipeline_data: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """A finished run on the pipeline's data, exported at the end of training."""
    out = str(tmp_path_factory.mktemp("finished") / "run")
    return out, train.run(config_for(pipeline_data, out, "train.epochs=2", "export.enabled=true"))


def copy(source: str, destination: Path) -> str:
    shutil.copytree(source, destination)
    return str(destination)


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def card(version_dir: str) -> dict:
    return read_json(version_dir, signatures.MODEL_CARD_FILE)


# -- one identity, carried by every record ---------------------------------------------------------------------------


def test_weights_metrics_and_model_card_carry_the_same_run_identity(finished, pipeline_data, capsys):
    out, result = finished
    run = result["run"]
    metadata = features.Metadata.load(pipeline_data)
    assert run[run_state.DATA_KEY] == lineage.data_fingerprint(pipeline_data, metadata)
    assert run[run_state.DATA_KEY] == lineage.fingerprint_digest(metadata.fingerprint)  # the pipeline's fingerprint
    assert run[run_state.HASH_KEY] == result["provenance"]["config_hash"]
    assert read_json(out, "metrics.json")["run"] == run
    assert lineage.weights_identity(out) == run
    assert read_json(out, ownership.MANIFEST)["run"] == run
    assert card(result["export_path"])["run"] == run
    assert export.main(["--run", out]) == 0
    again = card(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["run"] == run and again["data_check"]["mismatch_allowed"] is False


def test_an_identical_copy_of_the_data_is_the_same_data(finished, pipeline_data, tmp_path, capsys):
    out, result = finished
    same = copy(pipeline_data, tmp_path / "copy")
    argv = ["--run", out, "--splits", "valid", "--set", f"data.dir={same}", "--output", str(tmp_path / "e.json")]
    assert evaluate.main(argv) == 0
    measured = read_json(str(tmp_path), "e.json")
    assert measured["run"] == result["run"] and measured["data"]["mismatch_allowed"] is False
    assert measured["valid"] == pytest.approx(result["valid"], abs=1e-6)
    # mdcns-export --data: the run's data where it is now (moved), checked by its fingerprint all the same
    run = copy(out, tmp_path / "run")
    assert export.main(["--run", run, "--data", same]) == 0
    exported = card(capsys.readouterr().out.strip().splitlines()[-1])
    assert exported["data_check"]["dir"] == same and exported["run"] == result["run"]
    assert export.main(["--run", run, "--data", str(tmp_path / "run")]) == 2  # not a data folder
    assert "no metadata.json" in one_error_line(capsys)


# -- a killed run resumes only on its own data ----------------------------------------------------------------------


def test_a_killed_run_does_not_resume_on_data_preprocessed_again_since(inputs, tmp_path, capsys):
    data = preprocess(inputs[0], tmp_path / "data")
    out = str(tmp_path / "run")
    with killed_at_epoch(1), pytest.raises(Killed):
        train.run(config_for(data, out, *KILLED))
    recorded = read_json(out, "backup", run_state.BACKUP_RECORD)[run_state.DATA_KEY]
    preprocess(inputs[1], Path(data), "--overwrite")  # same path, same item count, one user's history changed
    now = lineage.data_fingerprint(data, features.Metadata.load(data))
    with pytest.raises(
        ConfigError, match=rf"(?s)trained on data with fingerprint {recorded}.*now holds .*{now}.*--restart"
    ):
        train.run(config_for(data, out, *KILLED))
    assert os.path.exists(os.path.join(out, "backup", "chief", "checkpoint")), "the refused run touched the backup"
    # The same log preprocessed again gives the same records: the run resumes (no false refusal).
    preprocess(inputs[0], Path(data), "--overwrite")
    result = train.run(config_for(data, out, *KILLED))
    assert len(result["seconds_per_epoch"]) == 1 and result["run"][run_state.DATA_KEY] == recorded


def test_best_weights_of_another_data_set_are_not_resumed_with_the_backup(inputs, tmp_path):
    data = preprocess(inputs[0], tmp_path / "data")
    out = str(tmp_path / "run")
    with killed_at_epoch(1), pytest.raises(Killed):
        train.run(config_for(data, out, *KILLED))
    state_path = os.path.join(out, "best", "state.json")
    state = read_json(state_path)
    with open(state_path, "w") as f:
        json.dump({**state, run_state.DATA_KEY: "0123456789abcdef"}, f)
    with open(os.path.join(out, "backup", run_state.BACKUP_RECORD), "w") as f:  # an older backup record: no print
        json.dump({run_state.HASH_KEY: state[run_state.HASH_KEY]}, f)
    with pytest.raises(ConfigError, match="trained on data with fingerprint 0123456789abcdef"):
        train.run(config_for(data, out, *KILLED))


# -- export and evaluate check the data and the records --------------------------------------------------------------


def test_export_and_evaluate_refuse_data_preprocessed_again_unless_told(finished, inputs, tmp_path, capsys):
    out = copy(finished[0], tmp_path / "run")
    recorded = finished[1]["run"][run_state.DATA_KEY]
    data = preprocess(inputs[1], tmp_path / "changed")
    now = lineage.data_fingerprint(data, features.Metadata.load(data))
    config_path = os.path.join(out, "config.yaml")
    with open(config_path) as f:
        text = f.read()
    with open(config_path, "w") as f:  # data.dir of the run now holds other data
        f.write(text.replace(finished[1]["dataset"]["dir"], data))
    # The records follow the edited config (its hash covers data.dir), so that only the data differs.
    state = read_json(out, "best", "state.json")
    own_hash = run_state.config_hash(read_yaml(config_path))
    rewrite(os.path.join(out, "best", "state.json"), {**state, run_state.HASH_KEY: own_hash})
    metrics = read_json(out, "metrics.json")
    rewrite(os.path.join(out, "metrics.json"), {**metrics, "run": {**metrics["run"], run_state.HASH_KEY: own_hash}})

    assert export.main(["--run", out]) == 2
    line = one_error_line(capsys)
    assert f"records data fingerprint {recorded}" in line and f"fingerprint {now}" in line
    assert lineage.ALLOW_FLAG in line
    assert evaluate.main(["--run", out, "--splits", "valid"]) == 2
    assert lineage.ALLOW_FLAG in one_error_line(capsys)

    assert export.main(["--run", out, lineage.ALLOW_FLAG]) == 0
    exported = card(capsys.readouterr().out.strip().splitlines()[-1])
    check = exported["data_check"]
    assert check["mismatch_allowed"] is True and (check["data_fingerprint"], check["run_data_fingerprint"]) == (
        now,
        recorded,
    )
    assert evaluate.main(["--run", out, "--splits", "valid", lineage.ALLOW_FLAG]) == 0
    measured = json.loads(capsys.readouterr().out)
    assert measured["data"]["mismatch_allowed"] is True and measured["data"]["run_data_fingerprint"] == recorded


def read_yaml(path: str) -> dict:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def rewrite(path: str, value: dict) -> None:
    with open(path, "w") as f:
        json.dump(value, f)


@pytest.mark.parametrize("foreign", ["metrics.json", "config.yaml", "best"])
def test_export_refuses_a_run_folder_that_mixes_two_runs(finished, pipeline_data, tmp_path, capsys, foreign):
    out = copy(finished[0], tmp_path / "run")
    other = str(tmp_path / "other")
    # best/ of a run with the very same config and data: only the run id tells the runs apart
    train.run(config_for(pipeline_data, other, "train.epochs=2", *([] if foreign == "best" else ["seed=9"])))
    if foreign == "best":
        shutil.rmtree(os.path.join(out, "best"))
        shutil.copytree(os.path.join(other, "best"), os.path.join(out, "best"))
    else:
        shutil.copy(os.path.join(other, foreign), os.path.join(out, foreign))
    before = sorted(os.listdir(os.path.join(out, "export", "mdcns")))
    assert export.main(["--run", out]) == 2
    line = one_error_line(capsys)
    expected = "is not the config the best weights" if foreign == "config.yaml" else "belongs to another run"
    assert expected in line and ("run_id" in line) == (foreign != "config.yaml"), line
    assert sorted(os.listdir(os.path.join(out, "export", "mdcns"))) == before, "nothing exported"
    assert export.main(["--run", out, lineage.ALLOW_FLAG]) == 2  # the flag is for the data only


def test_older_runs_are_checked_on_what_their_records_hold(finished, tiny_dataset, tmp_path, capsys):
    # A run of an older version on pipeline data: no identity, but metrics.json's provenance holds the fingerprint.
    out = copy(finished[0], tmp_path / "run")
    state = read_json(out, "best", "state.json")
    rewrite(
        os.path.join(out, "best", "state.json"),
        {k: v for k, v in state.items() if k not in ("run_id", "data_fingerprint")},
    )
    metrics = read_json(out, "metrics.json")
    rewrite(os.path.join(out, "metrics.json"), {k: v for k, v in metrics.items() if k != "run"})
    assert evaluate.main(["--run", out, "--splits", "valid"]) == 0
    capsys.readouterr()
    # ... and on data without a fingerprint nothing says which data it was: refused unless told.
    older = str(tmp_path / "older")
    train.run(config_for(tiny_dataset, older, "train.epochs=1"))
    state = read_json(older, "best", "state.json")
    rewrite(
        os.path.join(older, "best", "state.json"),
        {k: v for k, v in state.items() if k not in ("run_id", "data_fingerprint")},
    )
    metrics = read_json(older, "metrics.json")
    rewrite(os.path.join(older, "metrics.json"), {k: v for k, v in metrics.items() if k != "run"})
    assert evaluate.main(["--run", older, "--splits", "valid"]) == 2
    assert "records no data fingerprint" in one_error_line(capsys)
    assert evaluate.main(["--run", older, "--splits", "valid", lineage.ALLOW_FLAG]) == 0


# -- metadata.json edited by hand ----------------------------------------------------------------------------------


def edit_metadata(data: str, change) -> None:
    path = os.path.join(data, features.METADATA_FILE)
    meta = read_json(path)
    change(meta)
    rewrite(path, meta)


def move_counts(meta: dict) -> None:  # popularity changed, totals kept
    counts = meta["item_counts"]
    moved = min(counts[1], 3) or 1
    counts[1] -= moved
    counts[2] += moved


EDITS = {
    "item_counts_moved": (move_counts, "item_counts differ from the train records"),
    "one_more_item": (lambda m: (m.update(n_items=m["n_items"] + 1), m["item_counts"].append(0)), "n_items is 61"),
    "one_item_less": (lambda m: (m.update(n_items=m["n_items"] - 1), m["item_counts"].pop()), "n_items is 59"),
    "one_more_user": (lambda m: m.update(n_users=m["n_users"] + 1), "n_users is 301"),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_self_consistent_hand_edit_of_pipeline_metadata_is_refused(pipeline_data, tmp_path, capsys, edit):
    change, message = EDITS[edit]
    data = copy(pipeline_data, tmp_path / "data")
    edit_metadata(data, change)
    if edit == "one_item_less":
        counts = read_json(data, features.METADATA_FILE)["item_counts"]
        assert len(counts) == 60  # self-consistent: n_items + 1
    with pytest.raises(features.RecordsMismatchError, match=message):
        features.Metadata.load(data)
    assert train.main(cli(data, tmp_path / "out")) == 2
    line = one_error_line(capsys)
    assert message in line and "edited" in line


@pytest.mark.parametrize("edit", ["item_counts_moved", "one_item_less"])
def test_a_hand_edit_of_metadata_without_a_fingerprint_is_refused_too(tiny_dataset, tmp_path, edit):
    data = copy(tiny_dataset, tmp_path / "data")
    edit_metadata(data, EDITS[edit][0])
    message = "item_counts differ" if edit == "item_counts_moved" else "item ids span"
    with pytest.warns(features.MissingFingerprintWarning), pytest.raises(features.RecordsMismatchError, match=message):
        features.Metadata.load(data)


def cli(data: str, out: Path) -> list[str]:
    from test_run_ownership import cli_argv

    return cli_argv(data, out)
