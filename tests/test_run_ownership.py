"""Nothing lost, nothing mixed (issue class 3): the trainer deletes or replaces only what a record proves it wrote,
refuses output_dir values that are not a folder of the run's own, keeps a second run (or pipeline) out of a folder
in use, and starts a fresh run without another run's TensorBoard events.

Runs are the tiny in-process runs of tests/test_hostile_runs.py; a "live run" elsewhere is a child process that
holds the folder's lock the way a run does (`mdcns_tf.runs.ownership.lock`), then is killed.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from test_hostile_runs import BASE, config_for, read_json

import mdcns_tf  # noqa: F401
from mdcns_tf import features, train
from mdcns_tf.config import ConfigError
from mdcns_tf.runs import ownership
from mdcns_tf.runs import state as run_state
from pipeline import run as pipeline_run


def cli_argv(data_dir: str, output_dir: str | Path, *extra: str) -> list[str]:
    argv = ["--config", os.path.join(REPO, "configs", "base.yaml")]
    for override in (*BASE, f"data.dir={data_dir}", f"output_dir={output_dir}", "train.epochs=1", *extra):
        argv += ["--set", override]
    return argv


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    """The single ``error:`` line of a command's stderr (and no traceback)."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def user_folder(root: Path) -> dict[str, bytes]:
    """A folder of the user's that happens to use the trainer's names."""
    files = {
        "best/holiday.jpg": b"not weights",
        "backup/chief/checkpoint": b"the user's own backup tool",
        "tensorboard/events.out.tfevents.1.other": b"another project's events",
        "config.yaml": b"seed: 99\n",
        "metrics.json": b'{"mine": true}',
    }
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body)
    return files


# -- what is not ours is never deleted or replaced --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["best/holiday.jpg", "backup/chief/checkpoint", "tensorboard", "config.yaml", "metrics.json"]
)
@pytest.mark.parametrize("restart", [False, True], ids=["fresh", "restart"])
def test_entries_no_record_claims_are_never_deleted_or_replaced(tiny_dataset, tmp_path, capsys, name, restart):
    out = tmp_path / "out"
    files = {k: v for k, v in user_folder(out).items() if k.startswith(name)}
    for other in {"best", "backup", "tensorboard", "config.yaml", "metrics.json"} - {name.split("/")[0]}:
        (out / other).unlink() if (out / other).is_file() else __import__("shutil").rmtree(out / other)
    assert train.main(cli_argv(tiny_dataset, out) + (["--restart"] if restart else [])) == 2
    line = one_error_line(capsys)
    assert os.path.join(str(out), name.split("/")[0]) in line and "no record of a training run" in line
    assert tree(out) == files, "a file the trainer did not write was touched"


def test_a_link_at_an_entry_is_foreign_even_in_the_runs_own_folder(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    train.run(config_for(tiny_dataset, out, "train.epochs=1"))
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "keep").mkdir(parents=True)
    (elsewhere / "keep" / "file").write_text("precious")
    import shutil

    shutil.rmtree(out / "best")
    (out / "best").symlink_to(elsewhere / "keep", target_is_directory=True)  # the manifest lists best; a link now
    assert train.main([*cli_argv(tiny_dataset, out), "--restart"]) == 2
    assert "best" in one_error_line(capsys)
    assert (elsewhere / "keep" / "file").read_text() == "precious"


def test_an_older_run_folder_whose_records_agree_is_taken_as_the_trainers(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    first = train.run(config_for(tiny_dataset, out, "train.epochs=1", "train.tensorboard=true"))
    # What an older version left: no run manifest, no identity in best/state.json or metrics.json.
    os.remove(out / ownership.MANIFEST)
    state = read_json(str(out), "best", "state.json")
    with open(out / "best" / "state.json", "w") as f:
        json.dump({k: v for k, v in state.items() if k not in ("run_id", "data_fingerprint")}, f)
    second = train.run(config_for(tiny_dataset, out, "train.epochs=1", "seed=3"))
    legacy = out / "previous_runs" / f"legacy-{first['run']['config_hash']}"
    assert sorted(os.listdir(legacy)) == ["config.yaml", "metrics.json", "tensorboard"]
    assert read_json(str(legacy), "metrics.json")["valid"] == first["valid"]
    assert second["run"]["run_id"] != first["run"]["run_id"]
    # A config.yaml that no other record agrees with proves nothing: the folder is not taken.
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("seed: 5\n")
    (other / "best").mkdir()
    (other / "best" / "state.json").write_text(json.dumps({**state, "config_hash": "0" * 16}))
    with pytest.raises(ConfigError, match="no record of a training run"):
        train.run(config_for(tiny_dataset, other, "train.epochs=1"))
    assert (other / "config.yaml").read_text() == "seed: 5\n"


# -- output_dir values that are not a folder of the run's own ---------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["", "  ", ".", "./", "./.", "..", "{cwd}", "{cwd}/", "/", "~/runs/x", '"~"', "{data}", "{data}/..", "{home}"],
)
def test_output_dirs_that_are_not_a_folder_of_the_runs_own_are_refused(
    tiny_dataset, tmp_path, capsys, monkeypatch, value
):
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("the user's")
    monkeypatch.chdir(work)
    value = value.format(cwd=work, data=tiny_dataset, home=os.path.expanduser("~"))
    before = sorted(os.listdir(tiny_dataset))
    assert train.main(cli_argv(tiny_dataset, value)) == 2
    line = one_error_line(capsys)
    assert "output_dir" in line and ("name a folder" in line or "write the path out" in line), line
    assert sorted(os.listdir(work)) == ["notes.txt"] and not os.path.exists(work / "~")
    assert sorted(os.listdir(tiny_dataset)) == before


# -- two runs on one folder --------------------------------------------------------------------------------------------

HOLDER = """
import sys, time
from mdcns_tf.runs import ownership
ownership.lock(sys.argv[1], exclusive=sys.argv[2] == "exclusive")
print("locked", flush=True)
time.sleep(600)
"""


def hold(folder: Path | str, mode: str = "exclusive") -> subprocess.Popen:
    """A live process holding ``folder``'s lock as a training run does (``mode``: exclusive, or shared: a training
    run reading its data folder)."""
    env = {**os.environ, "PYTHONPATH": REPO}
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), mode], stdout=subprocess.PIPE, env=env, text=True
    )
    assert child.stdout.readline().strip() == "locked"
    return child


def kill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)  # no clean-up: the kernel drops its lock
    child.wait()


def test_a_second_training_on_a_live_runs_folder_is_refused_until_that_run_dies(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    child = hold(out)
    try:
        assert train.main(cli_argv(tiny_dataset, out)) == 2
        line = one_error_line(capsys)
        assert f"output_dir {out} is in use by another live process" in line and "mdcns-tf train pid" in line
        assert sorted(os.listdir(out)) == [features.LOCK_FILE]  # nothing of the refused run
    finally:
        kill(child)
    assert train.main(cli_argv(tiny_dataset, out)) == 0  # the lock died with its process, its file stayed
    assert not os.path.exists(out / features.LOCK_FILE), "a finished run leaves no lock file"


def test_a_run_holds_its_lock_while_it_trains(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "out"
    seen = []
    original = train._train

    def spy(config, start):  # while the run trains: another process is refused
        probe = "from mdcns_tf.runs import ownership; import sys; ownership.lock(sys.argv[1])"
        env = {**os.environ, "PYTHONPATH": REPO}
        done = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True, text=True, env=env)
        seen.append(done.stderr.strip().splitlines()[-1])
        return original(config, start)

    monkeypatch.setattr(train, "_train", spy)
    train.run(config_for(tiny_dataset, out, "train.epochs=1"))
    assert "FolderInUseError" in seen[0] and "is in use by another live process" in seen[0]


def test_a_process_may_take_its_own_lock_again(tmp_path):
    first = ownership.lock(str(tmp_path))
    second = ownership.lock(str(tmp_path))
    shared = ownership.lock(str(tmp_path), exclusive=False)  # held exclusively already
    for key in (shared, second):
        ownership.unlock(key)
        assert os.path.exists(tmp_path / features.LOCK_FILE)
    ownership.unlock(first)
    assert not os.path.exists(tmp_path / features.LOCK_FILE)


def test_a_read_only_data_folder_is_read_without_a_lock_or_with_the_one_it_has(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):  # root ignores permission bits: the folder refuses writes as a mount would
        if str(path).startswith(str(tmp_path)) and flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(30, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    assert ownership.lock(str(tmp_path), exclusive=False) is None
    monkeypatch.setattr(os, "open", real_open)
    (tmp_path / features.LOCK_FILE).touch()
    monkeypatch.setattr(os, "open", read_only)
    key = ownership.lock(str(tmp_path), exclusive=False)
    assert key is not None
    ownership.unlock(key)
    assert os.path.exists(tmp_path / features.LOCK_FILE)  # a shared holder never deletes it


def test_a_filesystem_without_locks_is_warned_about_not_a_failure(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING):
        assert ownership.lock(str(tmp_path)) is None
    assert "runs on this folder are not kept apart" in caplog.text


SEQUENCES = "".join(f"u{u} " + " ".join(f"i{(u * 3 + k) % 40}" for k in range(6)) + "\n" for u in range(60))


def pipeline_args(data: Path, output: Path, *extra: str) -> list[str]:
    return [f"--input={data}", "--input_format=sequences", "--split=loo", f"--output={output}", *extra]


def test_a_second_pipeline_and_a_pipeline_on_a_live_trainings_data_are_refused(tmp_path, capsys):
    data = tmp_path / "log.txt"
    data.write_text(SEQUENCES)
    out = tmp_path / "data"
    assert pipeline_run.main(pipeline_args(data, out)) == 0
    assert not os.path.exists(out / features.LOCK_FILE), "a finished pipeline leaves no lock file"
    before = tree(out)
    for mode, who in (("exclusive", "mdcns-tf train pid"), ("shared", "a training run reading it")):
        if mode == "exclusive":  # a pipeline holds it the way a training run holds its output_dir
            (out / features.LOCK_FILE).touch()
        child = hold(out, mode)
        try:
            assert pipeline_run.main(pipeline_args(data, out, "--overwrite")) == 2
            line = one_error_line(capsys)
            assert f"--output '{out}' is in use by another live process" in line and who in line, line
        finally:
            kill(child)
        assert {k: v for k, v in tree(out).items() if k != features.LOCK_FILE} == before  # nothing mixed or deleted
    assert pipeline_run.main(pipeline_args(data, out, "--overwrite")) == 0


def test_a_training_is_refused_on_data_a_pipeline_is_writing(tiny_dataset, tmp_path, capsys):
    data = tmp_path / "data"
    import shutil

    shutil.copytree(tiny_dataset, data)
    child = hold(data)  # exclusive: a pipeline writing it
    try:
        assert train.main(cli_argv(str(data), tmp_path / "out")) == 2
        assert f"data.dir {data} is in use by another live process" in one_error_line(capsys)
    finally:
        kill(child)


# -- a fresh run starts with none of another run's TensorBoard events -------------------------------------------------


def events(folder: Path) -> list[str]:
    return sorted(glob.glob(str(folder / "**" / "events.out.tfevents.*"), recursive=True))


def test_a_fresh_run_moves_the_previous_runs_records_and_events_aside(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    first = train.run(config_for(tiny_dataset, out, "train.epochs=1", "train.tensorboard=true"))
    old_events = events(out / "tensorboard")
    assert old_events
    time.sleep(1)  # event file names carry the second they were opened
    second = train.run(config_for(tiny_dataset, out, "train.epochs=1", "seed=7", "train.tensorboard=true"))
    aside = out / "previous_runs" / first["run"]["run_id"]
    assert events(aside / "tensorboard") == [e.replace(str(out), str(aside)) for e in old_events]
    assert not set(map(os.path.basename, events(out / "tensorboard"))) & set(map(os.path.basename, old_events))
    assert read_json(str(aside), "metrics.json")["run"] == first["run"]
    assert read_json(str(out), "metrics.json")["run"] == second["run"] != first["run"]
    manifest = read_json(str(out), ownership.MANIFEST)
    assert manifest["run"] == second["run"] and "tensorboard" in manifest["owns"]
    assert read_json(str(out), "best", "state.json")["run_id"] == second["run"]["run_id"]
    # a resumed run is the same run: it keeps its events (tests/test_hostile_runs.py resumes a killed run)
    assert run_state.RUN_KEY in second["run"]
