"""A sentence, not a traceback (issue class 6, the trainer's side): what a user can get wrong or find damaged is one
``error:`` line naming the thing and what to do, exit code 2, from mdcns-train, mdcns-evaluate and mdcns-export.
``MDCNS_TF_TRACEBACK=1`` still shows the trace.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
from test_hostile_runs import config_for
from test_lineage import inputs, pipeline_data, preprocess  # noqa: F401  (module fixtures)
from test_run_ownership import cli_argv

import mdcns_tf  # noqa: F401
from mdcns_tf import cli, evaluate, export, features, train


@pytest.fixture(scope="module")
def run_dir(tiny_dataset: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("errors") / "run")
    train.run(config_for(tiny_dataset, out, "train.epochs=1"))
    return out


def error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# -- output_dir and output paths --------------------------------------------------------------------------------------


def test_an_output_dir_that_is_a_file_or_under_one(tiny_dataset, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert train.main(cli_argv(tiny_dataset, a_file)) == 2
    assert f"output_dir '{a_file}' is a file, not a folder" in error_line(capsys)
    assert train.main(cli_argv(tiny_dataset, a_file / "run")) == 2
    assert f"cannot write in output_dir '{a_file / 'run'}' (Not a directory)" in error_line(capsys)
    assert a_file.read_text() == "mine"


def test_an_output_dir_that_cannot_be_written(tiny_dataset, tmp_path, capsys, monkeypatch):
    # Tests run as root here, which ignores permission bits: the refusal is what makedirs raises for a user.
    real = os.makedirs

    def denied(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "locked")):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", denied)
    assert train.main(cli_argv(tiny_dataset, tmp_path / "locked" / "run")) == 2
    line = error_line(capsys)
    assert "cannot write in output_dir" in line and "Permission denied" in line and "choose a folder" in line


@pytest.mark.parametrize("where", ["missing_folder", "a_folder", "under_a_file"])
def test_evaluate_output_that_cannot_be_written_fails_before_evaluating(run_dir, tmp_path, capsys, monkeypatch, where):
    target = {
        "missing_folder": tmp_path / "no" / "such" / "x.json",
        "a_folder": tmp_path,
        "under_a_file": tmp_path / "file.txt" / "x.json",
    }[where]
    (tmp_path / "file.txt").write_text("")
    monkeypatch.setattr(evaluate, "evaluate_run", lambda *a: pytest.fail("evaluated before checking --output"))
    assert evaluate.main(["--run", run_dir, "--output", str(target)]) == 2
    line = error_line(capsys)
    assert f"--output {target}" in line and ("create it" in line or "name the file" in line), line


# -- the export's model folder ----------------------------------------------------------------------------------------


def test_an_export_model_folder_that_is_a_file_or_an_empty_version(tiny_dataset, run_dir, tmp_path, capsys):
    run = str(tmp_path / "run")
    shutil.copytree(run_dir, run)
    os.makedirs(os.path.join(run, "export"))
    Path(run, "export", "mdcns").write_text("in the way")
    assert export.main(["--run", run]) == 2
    assert "export/mdcns is a file, where the export's model folder goes" in error_line(capsys)
    out = tmp_path / "fresh"
    (out / "export").mkdir(parents=True)
    (out / "export" / "mdcns").write_text("in the way")
    assert train.main(cli_argv(tiny_dataset, out, "export.enabled=true")) == 2
    assert "export/mdcns is a file" in error_line(capsys)
    os.remove(os.path.join(run, "export", "mdcns"))
    os.makedirs(os.path.join(run, "export", "mdcns", "3"))  # an empty version: a copy cut short
    assert export.main(["--run", run, "--version", "3"]) == 2
    assert "mdcns/3 exists and versions are immutable" in error_line(capsys)
    assert export.main(["--run", run]) == 0
    assert capsys.readouterr().out.strip().endswith(os.path.join("mdcns", "4"))


@pytest.mark.parametrize("run", ["a_file", "missing"])
def test_a_run_that_is_not_a_run_folder(run_dir, tmp_path, capsys, run):
    path = os.path.join(run_dir, "config.yaml") if run == "a_file" else str(tmp_path / "missing")
    for command in (evaluate.main, export.main):
        assert command(["--run", path]) == 2
        line = error_line(capsys)
        assert path in line and ("is not a folder" in line or "not found" in line), line


# -- damaged data ------------------------------------------------------------------------------------------------------


def damage(path: str, how: str) -> None:
    body = open(path, "rb").read()
    if how == "bit_flip":
        body = body[: len(body) // 2] + bytes([body[len(body) // 2] ^ 0x40]) + body[len(body) // 2 + 1 :]
    elif how == "cut_short":
        body = body[: len(body) * 2 // 3]
    elif how == "cut_at_a_record":  # a whole gzip stream of a file whose last record was cut
        raw = gzip.decompress(body)
        body = gzip.compress(raw[: len(raw) - 7])
    elif how == "stream_cut_between_records":  # reads as fewer whole records; only the gzip trailer tells
        raw, end = gzip.decompress(body), 0
        for _ in range(2):  # keep the first two records: 8-byte length, 4-byte CRC, data, 4-byte CRC each
            end += 16 + int.from_bytes(raw[end : end + 8], "little")
        body = gzip.compress(raw[:end])[:-8]
    else:
        body = b"<html>404 Not Found</html>"
    with open(path, "wb") as f:
        f.write(body)


@pytest.mark.parametrize("how", ["bit_flip", "cut_short", "cut_at_a_record", "stream_cut_between_records", "not_gzip"])
@pytest.mark.parametrize("fingerprinted", [True, False], ids=["pipeline_data", "data_without_fingerprint"])
def test_a_damaged_record_file_is_called_damaged(pipeline_data, tiny_dataset, tmp_path, capsys, how, fingerprinted):  # noqa: F811
    data = str(tmp_path / "data")
    shutil.copytree(pipeline_data if fingerprinted else tiny_dataset, data)
    shard = sorted(Path(data, "valid").glob("*" + features.TFRECORD_SUFFIX))[0]
    damage(str(shard), how)
    assert train.main(cli_argv(data, tmp_path / "out")) == 2
    line = error_line(capsys)
    assert f"{shard} is damaged (" in line and "re-run the pipeline" in line, line
    assert "different pipeline runs" not in line
    assert not os.path.exists(tmp_path / "out" / "best")


def test_a_whole_record_file_of_another_run_is_still_another_runs(pipeline_data, inputs, tmp_path, capsys):  # noqa: F811
    data = str(tmp_path / "data")
    shutil.copytree(pipeline_data, data)
    other = preprocess(inputs[1], tmp_path / "other")
    shard = sorted(Path(data, "train").glob("*" + features.TFRECORD_SUFFIX))[0]
    shutil.copy(sorted(Path(other, "train").glob("*" + features.TFRECORD_SUFFIX))[0], shard)
    assert train.main(cli_argv(data, tmp_path / "out")) == 2
    assert "different pipeline runs" in error_line(capsys)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot be read as metadata"),
        ("[1, 2]", "a JSON list, not an object"),
        ('{"schema_version": 1, "n_users": 3}', "is not pipeline metadata"),
        ("SIXTY", "cannot be read as metadata"),
    ],
)
def test_a_metadata_file_that_is_not_metadata(tiny_dataset, run_dir, tmp_path, capsys, content, message):
    data = str(tmp_path / "data")
    shutil.copytree(tiny_dataset, data)
    Path(data, features.METADATA_FILE).write_text(content)
    assert train.main(cli_argv(data, tmp_path / "out")) == 2
    assert message in error_line(capsys)
    assert evaluate.main(["--run", run_dir, "--set", f"data.dir={data}"]) == 2
    assert message in error_line(capsys)


def test_a_metadata_field_of_the_wrong_type(tiny_dataset, tmp_path, capsys):
    data = str(tmp_path / "data")
    shutil.copytree(tiny_dataset, data)
    meta = json.loads(Path(data, features.METADATA_FILE).read_text())
    Path(data, features.METADATA_FILE).write_text(json.dumps({**meta, "n_items": "60"}))
    assert train.main(cli_argv(data, tmp_path / "out")) == 2
    assert "n_users and n_items must be integers" in error_line(capsys)


# -- weights that do not fit the model the config and data describe ---------------------------------------------------


def test_weights_that_do_not_fit_the_data_or_the_config(run_dir, tmp_path, capsys):
    from conftest import synthetic_sequences, write_loo_dataset

    bigger = str(tmp_path / "bigger")
    write_loo_dataset(bigger, synthetic_sequences(300, 70, seed=1), 70)
    argv = ["--run", run_dir, "--splits", "valid", "--set", f"data.dir={bigger}", "--allow-data-mismatch"]
    assert evaluate.main(argv) == 2
    line = error_line(capsys)
    assert "the best weights in" in line and "do not fit" in line and "(70 items)" in line and "(61, 16)" in line
    assert evaluate.main(["--run", run_dir, "--splits", "valid", "--set", "model.dim=32"]) == 2
    assert "do not fit" in error_line(capsys)


@pytest.mark.parametrize("how", ["cut_short", "overwritten"])
def test_damaged_best_weights(run_dir, tmp_path, capsys, how):
    run = str(tmp_path / "run")
    shutil.copytree(run_dir, run)
    data_file = next(Path(run, "best").glob("weights.data-*"))
    if how == "cut_short":
        with open(data_file, "r+b") as f:
            f.truncate(10)
    else:
        Path(run, "best", "weights.index").write_bytes(b"not an sstable" * 8)
    for command, argv in ((evaluate.main, ["--splits", "valid"]), (export.main, [])):
        assert command(["--run", run, *argv]) == 2
        line = error_line(capsys)
        assert "best/weights cannot be read" in line and "damaged" in line, line


def test_the_traceback_is_there_when_asked_for(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    (tmp_path / "file").write_text("")
    with pytest.raises(Exception, match="is a file, not a folder"):
        train.main(cli_argv(tiny_dataset, tmp_path / "file"))


# -- a model folder for mdcns-recommend that is a file or an empty version ---------------------------------------------


def test_recommend_on_a_file_or_an_empty_version_is_one_line(tmp_path, capsys):
    from test_export import KEYS, MAX_LEN, TOP_K, make_encoder, write_vocabulary

    from mdcns_tf import recommend
    from mdcns_tf.savedmodel import publish

    write_vocabulary(str(tmp_path / "data"), KEYS)
    publish.export_saved_model(make_encoder(), str(tmp_path / "models"), "m", MAX_LEN, TOP_K, verify=False)
    model = tmp_path / "models" / "m"
    (model / "2").mkdir()  # the newest version is empty: a copy cut short
    (tmp_path / "a_file").write_text("")
    cases = {
        str(tmp_path / "a_file"): "is a file, not a model folder",
        str(model): "m/2 has no saved_model.pb: an empty or unfinished version",
        str(model / "2"): "m/2 has no saved_model.pb",
    }
    for path, message in cases.items():
        assert recommend.main(["--model", path, "--history", "3,17"]) == 2
        assert message in error_line(capsys), path
    assert recommend.main(["--model", str(model / "1"), "--history", "3,17"]) == 0
