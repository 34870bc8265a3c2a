"""Hostile runs of the trainer: a reused or damaged output_dir, an interrupted run resumed by another config, export
targets that cannot be written, and config values that used to crash or slip through validation.

Runs are tiny (the session's 300-user dataset, one step an epoch) and in-process; an interruption is an exception
raised by a callback at the start of an epoch, after `BackupAndRestore` saved the previous one: Keras does not run
``on_train_end`` then, so the backup stays behind exactly as after a SIGKILL (tests/test_resume.py kills for real).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator

import pytest
from conftest import REPO
from test_export import KEYS, MAX_LEN, TOP_K, make_encoder, write_vocabulary

import mdcns_tf  # noqa: F401
from mdcns_tf import recommend, train
from mdcns_tf.config import Config, ConfigError
from mdcns_tf.config_loader import load_config
from mdcns_tf.runs import ownership
from mdcns_tf.runs import state as run_state
from mdcns_tf.savedmodel import assets, publish, versions
from mdcns_tf.training import callbacks

BASE = [
    "data.max_len=12",
    "data.batch_size=512",  # one step an epoch
    "data.bucket_by_length=false",
    "model.dim=16",
    "model.num_layers=1",
    "model.num_heads=1",
    "train.verbose=0",
    "train.tensorboard=false",
    "eval.test=false",
    "export.enabled=false",
    "export.top_k=10",
]
KILLED = ("train.epochs=2", "seed=1")  # the config of the interrupted run below


def config_for(data_dir: str, output_dir: str | os.PathLike, *extra: str) -> Config:
    return load_config(None, [*BASE, f"data.dir={data_dir}", f"output_dir={output_dir}", *extra])


class Killed(Exception):
    """Stands for the kill: raised at the start of an epoch, after the previous epoch was backed up."""


@contextlib.contextmanager
def killed_at_epoch(epoch: int) -> Iterator[None]:
    original = callbacks.ProgressLog.on_epoch_begin

    def on_epoch_begin(self: callbacks.ProgressLog, index: int, logs: dict | None = None) -> None:
        if index == epoch:
            raise Killed
        original(self, index, logs)

    callbacks.ProgressLog.on_epoch_begin = on_epoch_begin
    try:
        yield
    finally:
        callbacks.ProgressLog.on_epoch_begin = original


@pytest.fixture(scope="module")
def killed_run(tiny_dataset: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An output_dir whose 2-epoch run was interrupted after epoch 1: backup of epoch 1, best/ of epoch 1."""
    output_dir = str(tmp_path_factory.mktemp("killed") / "run")
    with killed_at_epoch(1), pytest.raises(Killed):
        train.run(config_for(tiny_dataset, output_dir, *KILLED))
    assert os.path.exists(os.path.join(output_dir, "backup", "chief", "checkpoint"))
    return output_dir


def copy_of(run_dir: str, destination: os.PathLike) -> str:
    shutil.copytree(run_dir, destination)
    return str(destination)


def file_ending(folder: str, suffix: str) -> str:
    return os.path.join(folder, next(name for name in os.listdir(folder) if name.endswith(suffix)))


def read_json(*parts: str) -> dict:
    with open(os.path.join(*parts)) as f:
        return json.load(f)


# -- 1a: a new run never uses an earlier run's best weights ------------------------------------------------------------


def test_a_run_without_a_best_epoch_never_restores_an_earlier_runs_weights(tiny_dataset, tmp_path):
    reused = tmp_path / "reused"
    first = train.run(config_for(tiny_dataset, reused, "seed=1", "train.epochs=1"))
    assert first["best_epoch"] > 0
    # validation_freq above the epochs: no epoch is validated, so none sets a best value.
    unvalidated = ("seed=2", "train.epochs=1", "train.validation_freq=2")
    second = train.run(config_for(tiny_dataset, reused, *unvalidated))
    fresh = train.run(config_for(tiny_dataset, tmp_path / "fresh", *unvalidated))

    # The reused folder's run is the fresh run, not the first run's restored weights (the export is of the same
    # in-memory model the metrics are measured on).
    assert second["valid"] == pytest.approx(fresh["valid"], abs=1e-6)
    assert second["valid"] != pytest.approx(first["valid"], abs=1e-6)
    assert second["best_epoch"] == fresh["best_epoch"] == 0
    assert (first["weights"], second["weights"]) == ("best_epoch", "last_epoch")
    assert read_json(reused, "metrics.json")["valid"] == second["valid"]
    assert not os.path.exists(reused / "best" / "weights.index"), "the first run's best weights were left behind"


# -- 1b: an interrupted run is resumed by its own config only ----------------------------------------------------------


def test_a_killed_run_is_not_resumed_by_another_config(killed_run, tiny_dataset, tmp_path):
    output_dir = copy_of(killed_run, tmp_path / "run")
    with open(os.path.join(output_dir, "config.yaml")) as f:
        before = f.read()
    with pytest.raises(ConfigError, match=r"(?s)backup of an interrupted run with another config.*--restart"):
        train.run(config_for(tiny_dataset, output_dir, "train.epochs=2", "seed=2"))
    with open(os.path.join(output_dir, "config.yaml")) as f:
        assert f.read() == before, "config.yaml must still describe the interrupted run"
    assert os.path.exists(os.path.join(output_dir, "backup", "chief", "checkpoint")), "the backup was touched"


@pytest.mark.parametrize("recorded", [True, False], ids=["hash_recorded", "older_backup_without_hash"])
def test_a_killed_run_resumes_with_its_own_config_wherever_it_was_moved(
    killed_run, tiny_dataset, tmp_path, recorded, caplog
):
    # Another output_dir (the hash ignores it): a run folder may be copied or moved, as the benchmark scratch is.
    output_dir = copy_of(killed_run, tmp_path / "moved")
    record = os.path.join(output_dir, "backup", run_state.BACKUP_RECORD)
    expected = run_state.config_hash(config_for(tiny_dataset, "elsewhere", *KILLED).to_dict())
    killed = read_json(record)
    assert killed[run_state.HASH_KEY] == expected and killed == read_json(output_dir, ownership.MANIFEST)["run"]
    if not recorded:
        # A folder of an older version: no run manifest, no backup record (its run's config.yaml vouches for the
        # backup), the best state with the config hash only: resumed, with a warning that the data is unchecked.
        os.remove(record)
        os.remove(os.path.join(output_dir, ownership.MANIFEST))
        state = read_json(output_dir, "best", "state.json")
        with open(os.path.join(output_dir, "best", "state.json"), "w") as f:
            json.dump({k: v for k, v in state.items() if k not in (run_state.RUN_KEY, run_state.DATA_KEY)}, f)
    result = train.run(config_for(tiny_dataset, output_dir, *KILLED))
    assert len(result["seconds_per_epoch"]) == 1, "epoch 1 must come from the backup, not be trained again"
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert sorted(os.listdir(os.path.join(output_dir, "backup"))) == [], "backup and its record are gone at the end"
    assert (result["run"][run_state.RUN_KEY] == killed[run_state.RUN_KEY]) == recorded  # the same run, resumed
    assert ("records no data fingerprint" in caplog.text) == (not recorded)
    assert not os.path.exists(os.path.join(output_dir, "previous_runs")), "a resumed run moves nothing aside"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("state_not_json", r"best/state.json is not a model-selection state"),
        ("state_wrong_shape", r"'best_epoch' must be an integer >= 0"),
        ("backup_index", r"backup/chief cannot be read"),
        ("backup_data_truncated", r"backup/chief cannot be read"),
        ("best_weights", r"best weights in .* cannot be read"),
        ("best_of_another_config", r"best was written by another config"),
    ],
)
def test_a_damaged_run_folder_is_a_clear_error_before_training(killed_run, tiny_dataset, tmp_path, damage, message):
    output_dir = copy_of(killed_run, tmp_path / "run")
    best, chief = os.path.join(output_dir, "best"), os.path.join(output_dir, "backup", "chief")
    state_path = os.path.join(best, "state.json")
    state = read_json(state_path)
    if damage == "state_not_json":
        with open(state_path, "w") as f:
            f.write('{"best": 0.1, "best_epoch"')  # cut off mid-write by a full disk
    elif damage == "state_wrong_shape":
        with open(state_path, "w") as f:
            json.dump({**state, "best_epoch": "one"}, f)
    elif damage == "best_of_another_config":
        with open(state_path, "w") as f:
            json.dump({**state, run_state.HASH_KEY: "0123456789abcdef"}, f)
    elif damage == "backup_index":
        with open(file_ending(chief, ".index"), "r+b") as f:
            f.write(b"not an sstable" * 4)
    else:  # a data file cut short
        with open(file_ending(best if damage == "best_weights" else chief, ".data-00000-of-00001"), "r+b") as f:
            f.truncate(8)
    with pytest.raises(ConfigError, match=rf"(?s){message}.*--restart"):
        train.run(config_for(tiny_dataset, output_dir, *KILLED))
    assert not os.path.exists(os.path.join(output_dir, "metrics.json"))


def test_restart_flag_trains_another_config_from_scratch(killed_run, tiny_dataset, tmp_path, capsys):
    output_dir = copy_of(killed_run, tmp_path / "run")
    other = ("train.epochs=2", "seed=2")
    argv = ["--config", os.path.join(REPO, "configs", "base.yaml")]
    for override in (*BASE, f"data.dir={tiny_dataset}", f"output_dir={output_dir}", *other):
        argv += ["--set", override]
    assert train.main(argv) == 2
    assert "--restart" in capsys.readouterr().err
    assert train.main([*argv, "--restart"]) == 0
    metrics = read_json(output_dir, "metrics.json")
    assert len(metrics["seconds_per_epoch"]) == 2 and metrics["best_epoch"] > 0
    config = load_config(os.path.join(output_dir, "config.yaml"))
    assert config.seed == 2
    assert read_json(output_dir, "best", "state.json")[run_state.HASH_KEY] == run_state.config_hash(config.to_dict())


# -- 6, 7: export targets ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "", "-rf", "/abs"])
def test_model_names_must_be_one_safe_path_component(name, tmp_path):
    with pytest.raises(ConfigError, match="export.model_name"):
        load_config(None, [f"export.model_name={name}"])
    with pytest.raises(ValueError, match="single folder name"):
        versions.check_target(str(tmp_path / "export"), name)
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "export")


def test_export_problems_fail_before_the_first_step(tiny_dataset, tmp_path):
    taken = tmp_path / "taken"
    os.makedirs(taken / "export" / "mdcns" / "3")
    with pytest.raises(ConfigError, match=r"export.version: .*mdcns/3 exists"):
        train.run(config_for(tiny_dataset, taken, "export.enabled=true", "export.version=3"))
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "export").write_text("a file where the export folder should be")
    with pytest.raises(ConfigError, match=r"export: .*/blocked/export is a file, where the export's model folder goes"):
        train.run(config_for(tiny_dataset, blocked, "export.enabled=true"))
    for output_dir in (taken, blocked):
        assert not os.path.exists(output_dir / "best") and not os.path.exists(output_dir / "metrics.json")


# -- 7: config values --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["train.monitor=ndcg@abc"], "train.monitor"),
        (["train.monitor=ndcg@20@x"], "train.monitor"),
        (["train.monitor=ndcg"], "train.monitor"),  # "val_ndcg" is never logged: no epoch could ever be selected
        (["train.monitor=mrr@20"], "train.monitor"),
        (["train.monitor=ndcg@020"], "train.monitor"),
        (["eval.ks=[true, 20]"], "eval.ks"),  # bool is an int: it would report recall@True
        (["eval.ks=[5, 20, 5]"], "eval.ks"),
        (["train.validation_freq=0"], "train.validation_freq"),
        (["seed=-1"], "seed"),
        (["export.version=-2"], "export.version"),
        (["train.verbose=3"], "train.verbose"),
        (["train.learning_rate=.nan"], "train.learning_rate"),
        (["model.options.sasrec=5"], "model.options.sasrec"),
        (["sampler.uniform={1: 2, a: 3}"], "sampler.uniform"),
        (["train.epochs=["], "train.epochs"),  # a value that is not YAML
    ],
)
def test_bad_values_are_config_errors_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, overrides)


@pytest.mark.parametrize("base", ["5", "[5]", "{a: 1}", "[parent.yaml, null]"])
def test_a_base_that_is_not_file_names_is_a_config_error(tmp_path, base):
    (tmp_path / "parent.yaml").write_text("seed: 1\n")
    (tmp_path / "child.yaml").write_text(f"base: {base}\n")
    with pytest.raises(ConfigError, match="base: expected a file name or a list of file names"):
        load_config(str(tmp_path / "child.yaml"))


# -- 8: recommend prints the export's own keys -------------------------------------------------------------------------


def test_recommend_prints_the_keys_of_the_exports_vocabulary(tmp_path, capsys):
    write_vocabulary(str(tmp_path / "data"), KEYS)
    path = publish.export_saved_model(
        make_encoder(), str(tmp_path / "models"), "m", MAX_LEN, TOP_K, data_dir=str(tmp_path / "data"), verify=False
    )
    # The data folder was re-run since: same items, renumbered. Its keys would name other items.
    write_vocabulary(str(tmp_path / "renumbered"), KEYS[::-1])
    for extra in ([], ["--data", str(tmp_path / "renumbered")]):
        assert recommend.main(["--model", str(tmp_path / "models" / "m"), "--history", "3,17,42", *extra]) == 0
        out = capsys.readouterr()
        rows = re.findall(r"item (\d+) \(key ([^)]*)\)", out.out)
        assert len(rows) == TOP_K
        assert all(key == KEYS[int(item) - 1] for item, key in rows), rows
        assert ("is not the export's vocabulary" in out.err) == bool(extra)
    assert assets.read_vocabulary(path) == KEYS
