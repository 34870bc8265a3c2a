"""Numbers out of range and errors a user can act on: every flag whose size grows the Beam graph or a worker's
memory is bounded with a message, and a bad --input, --output, flag or input file is one ``error:`` line naming it
(exit code 2), found before anything runs where it can be, never a traceback."""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import pytest

from mdcns_tf import cli, features
from pipeline import config, inputfiles, portable, reading, run, sequences, splits

SEQUENCES = b"u1 a b c\nu2 b c d\nu3 c d e a\n"


def main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, list[str]]:
    """``python -m pipeline.run ARGS``: the exit code and the stderr lines that are not log lines."""
    rc = run.main(list(args))
    err = capsys.readouterr().err.splitlines()
    return rc, [line for line in err if not line[:4].isdigit() and not line.startswith(("INFO:", "WARNING:"))]


def args(input_path: Path | str, output: Path | str, *extra: str, fmt: str = "sequences") -> list[str]:
    return [f"--input={input_path}", f"--input_format={fmt}", "--split=loo", f"--output={output}", *extra]


def one_error(rc: int, lines: list[str], *fragments: str) -> str:
    """The run failed with exit code 2 and exactly one ``error:`` line holding every fragment (no traceback)."""
    assert rc == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --- 2. numbers out of range ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "fragments"),
    [
        ("--kcore_rounds=101", ["--kcore_rounds 101 is above 100", "unrolled"]),
        ("--kcore_rounds=1000000000", ["--kcore_rounds 1000000000 is above 100"]),
        ("--num_shards=10001", ["--num_shards 10001 is above 10000", "file"]),
        (f"--max_line_bytes={config.MAX_LINE_BYTES + 1}", ["--max_line_bytes", "is above 268435456", "memory"]),
        ("--direct_num_workers=-1", ["--direct_num_workers -1"]),
        (f"--direct_num_workers={4 * (os.cpu_count() or 1) + 1}", ["--direct_num_workers", "4 per core"]),
    ],
)
def test_flags_beyond_their_bound_are_one_line_errors(tmp_path: Path, capsys, flag: str, fragments: list) -> None:
    (tmp_path / "seq.txt").write_bytes(SEQUENCES)
    rc, lines = main(capsys, *args(tmp_path / "seq.txt", tmp_path / "out", "--kcore=2", flag))
    one_error(rc, lines, *fragments)
    assert not (tmp_path / "out").exists()


def test_the_bounds_themselves_are_accepted() -> None:
    cfg = config.PipelineConfig(
        "in",
        "sequences",
        "loo",
        "out",
        kcore=2,
        kcore_rounds=sequences.MAX_KCORE_ROUNDS,
        num_shards=config.MAX_NUM_SHARDS,
        max_line_bytes=config.MAX_LINE_BYTES,
    )
    assert cfg.kcore_rounds == 100
    for rounds in (0, sequences.MAX_KCORE_ROUNDS + 1):
        with pytest.raises(ValueError, match="k-core rounds must be in 1..100"):
            sequences.KCore(2, rounds)


def test_the_most_kcore_rounds_build_and_run(tmp_path: Path, capsys) -> None:
    """The bound is below where Beam's graph optimiser overflowed the recursion limit (~300 rounds)."""
    (tmp_path / "seq.txt").write_bytes(SEQUENCES)
    rc, lines = main(capsys, *args(tmp_path / "seq.txt", tmp_path / "out", "--kcore=2", "--kcore_rounds=100"))
    assert rc == 0, lines
    c = features.Metadata.load(str(tmp_path / "out")).counts
    assert (c["kcore_items_below_k"], c["kcore_users_below_k"], c["rows_written"]) == (0, 0, 9)  # e: once


def test_a_split_file_too_large_for_the_graph_is_an_error(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(splits, "MAX_SPLIT_FILE_BYTES", 16)
    (tmp_path / "seq.txt").write_bytes(SEQUENCES)
    (tmp_path / "split.tsv").write_text("u1\ttest\nu2\tvalid\n")
    extra = ("--split_file", str(tmp_path / "split.tsv"))
    argv = [a.replace("--split=loo", "--split=user") for a in args(tmp_path / "seq.txt", tmp_path / "out", *extra)]
    rc, lines = main(capsys, *argv)
    one_error(rc, lines, "--split_file", "is larger than 0 MiB", "graph")


def test_a_split_file_that_is_a_folder_is_an_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "seq.txt").write_bytes(SEQUENCES)
    (tmp_path / "split").mkdir()
    argv = [a.replace("--split=loo", "--split=user") for a in args(tmp_path / "seq.txt", tmp_path / "out")]
    rc, lines = main(capsys, *argv, "--split_file", str(tmp_path / "split"))
    one_error(rc, lines, f"--split_file '{tmp_path / 'split'}' cannot be read")


def test_too_many_input_files_is_an_error(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(reading, "MAX_INPUT_FILES", 3)
    for i in range(4):
        (tmp_path / "in" / f"part{i}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "in" / f"part{i}.txt").write_bytes(SEQUENCES)
    rc, lines = main(capsys, *args(tmp_path / "in", tmp_path / "out"))
    one_error(rc, lines, "matches 4 files, more than 3", "merge the files")


# --- 3. one sentence, not a traceback: --output and --input ------------------------------------------------------


def test_an_output_inside_a_file_is_an_error_naming_the_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "seq.txt").write_bytes(SEQUENCES)
    rc, lines = main(capsys, *args(tmp_path / "seq.txt", tmp_path / "seq.txt" / "deeper" / "out"))
    one_error(rc, lines, "cannot be created", f"{tmp_path / 'seq.txt'} is not a folder")


def test_an_output_in_missing_folders_is_created(tmp_path: Path, capsys) -> None:
    (tmp_path / "seq.txt").write_bytes(SEQUENCES)
    rc, _ = main(capsys, *args(tmp_path / "seq.txt", tmp_path / "a" / "b" / "out"))
    assert rc == 0 and (tmp_path / "a" / "b" / "out" / features.METADATA_FILE).is_file()


def test_an_output_in_a_folder_that_is_not_writable_is_an_error(tmp_path: Path, capsys, monkeypatch) -> None:
    (tmp_path / "seq.txt").write_bytes(SEQUENCES)
    (tmp_path / "ro").mkdir()
    if os.geteuid() == 0:  # root writes anywhere: pretend the folder is read-only
        real_access = os.access
        read_only = str(tmp_path / "ro")
        monkeypatch.setattr(os, "access", lambda p, mode: str(p) != read_only and real_access(p, mode))
    else:
        (tmp_path / "ro").chmod(0o555)
    rc, lines = main(capsys, *args(tmp_path / "seq.txt", tmp_path / "ro" / "out"))
    one_error(rc, lines, f"{tmp_path / 'ro'} is not writable")


@pytest.mark.parametrize(
    ("layout", "fragments"),
    [
        ({}, ["is a directory without a file to read"]),
        ({".hidden": b"u1 a b c\n", "sub/part.txt": SEQUENCES}, ["is a directory without a file to read", "hidden"]),
    ],
)
def test_an_input_folder_without_files_is_an_error(tmp_path: Path, capsys, layout: dict, fragments: list) -> None:
    (tmp_path / "in").mkdir()
    for name, data in layout.items():
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data)
    rc, lines = main(capsys, *args(tmp_path / "in", tmp_path / "out"))
    one_error(rc, lines, f"--input '{tmp_path / 'in'}'", *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("pattern", ["missing.txt", "missing/*.txt", "*.nothing"])
def test_an_input_that_matches_nothing_is_an_error(tmp_path: Path, capsys, pattern: str) -> None:
    rc, lines = main(capsys, *args(tmp_path / pattern, tmp_path / "out"))
    one_error(rc, lines, "matches no file")


# --- 3. one sentence, not a traceback: damaged input ---------------------------------------------------------------


def test_a_mislabelled_input_is_refused_before_anything_runs(tmp_path: Path, capsys) -> None:
    (tmp_path / "seq.txt.gz").write_bytes(SEQUENCES)
    rc, lines = main(capsys, *args(tmp_path / "seq.txt.gz", tmp_path / "out"))
    one_error(rc, lines, f"{tmp_path / 'seq.txt.gz'}: named as gzip but not gzip data")
    assert not (tmp_path / "out").exists()


def test_a_damaged_file_among_good_ones_is_named(tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"part{i}.txt.gz").write_bytes(gzip.compress(SEQUENCES * 50))
    damaged = tmp_path / "in" / "part1.txt.gz"
    damaged.write_bytes(damaged.read_bytes()[:-20])
    rc, lines = main(capsys, *args(tmp_path / "in", tmp_path / "out"))
    one_error(rc, lines, f"error: {damaged}: the gzip data ends before its end marker", "fetch it again")
    assert not (tmp_path / "out" / features.METADATA_FILE).exists()


def test_a_file_changed_after_the_launch_is_an_error(tmp_path: Path, capsys, monkeypatch) -> None:
    path = tmp_path / "seq.txt"
    path.write_bytes(SEQUENCES)
    checked = run.prepare

    def prepare_then_append(cfg: config.PipelineConfig):
        prepared = checked(cfg)
        with open(path, "ab") as f:  # a writer appends between the launch's checks and the read
            f.write(b"u4 a b c\n")
        return prepared

    monkeypatch.setattr(run, "prepare", prepare_then_append)
    rc, lines = main(capsys, *args(path, tmp_path / "out"))
    one_error(rc, lines, f"{path}: {len(SEQUENCES)} bytes when the run started", "changed while the pipeline read it")


def test_the_traceback_on_request(tmp_path: Path, capsys, monkeypatch) -> None:
    (tmp_path / "seq.txt.gz").write_bytes(gzip.compress(SEQUENCES)[:-4])
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(Exception) as error:  # noqa: PT011  (Beam wraps it, the cause is ours)
        run.main(args(tmp_path / "seq.txt.gz", tmp_path / "out"))
    assert portable.worker_error(error.value, (inputfiles.InputFileError,)) is not None


def test_a_worker_process_error_is_found_in_its_traceback_text() -> None:
    """Worker processes (``--direct_running_mode=multi_processing``, portable runners) send the error back as text."""
    remote = RuntimeError(
        'Pipeline job failed\nTraceback (most recent call last):\n  File "reading.py", line 9, in process\n'
        "pipeline.inputfiles.InputFileError: /d/a.gz: the gzip data ends before its end marker [while running "
        "'Preprocess/ReadFiles/ReadAndParse']\n"
    )
    found = portable.worker_error(remote, (inputfiles.InputFileError, splits.SplitFileError))
    assert found == "/d/a.gz: the gzip data ends before its end marker"
    assert portable.worker_error(RuntimeError("ValueError: other"), (inputfiles.InputFileError,)) is None
    in_process = inputfiles.InputFileError("/d/a.gz: damaged [while running 'X']")
    assert portable.worker_error(ValueError("wrapped"), (inputfiles.InputFileError,)) is None
    try:
        raise RuntimeError("runner") from in_process
    except RuntimeError as e:
        assert portable.worker_error(e, (inputfiles.InputFileError,)) == "/d/a.gz: damaged"


def test_beams_logged_traceback_of_an_input_error_is_dropped() -> None:
    quiet = run.QuietWorkerErrors()
    error = inputfiles.InputFileError("/d/a.gz: damaged")
    record = logging.LogRecord("apache_beam.runners.common", logging.ERROR, "", 0, "x", (), (type(error), error, None))
    assert not quiet.filter(record)
    other = ValueError("a bug")
    record = logging.LogRecord("apache_beam.runners.common", logging.ERROR, "", 0, "x", (), (type(other), other, None))
    assert quiet.filter(record)
    assert quiet.filter(logging.LogRecord("pipeline", logging.ERROR, "", 0, "InputFileError: x", (), None))


def test_two_worker_processes_report_an_input_error_as_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    repo = str(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    (tmp_path / "seq.txt.gz").write_bytes(gzip.compress(SEQUENCES * 100)[:-30])
    extra = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")
    rc = run.main(args(tmp_path / "seq.txt.gz", tmp_path / "out", *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"error: {tmp_path / 'seq.txt.gz'}: the gzip data ends before its end")
