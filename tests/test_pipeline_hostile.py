"""Hostile input: what the pipeline owns in --output, records vs metadata, oversized numbers, silent parsing
wrongness, bad paths. Each test pins a defect a hostile-input review found; expected values are worked out by hand."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import write_loo_dataset

from mdcns_tf import features
from pipeline import formats, outputs, readback, reading, run, splits, vocabulary

SEQUENCES = "u1 a b c\nu2 b c d\nu3 c d e a\n"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """``python -m pipeline.run ARGS``: the exit code and the last stderr line (the ``error:`` line, if any)."""
    rc = run.main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def sequences_args(input_path: Path | str, output: Path | str, *extra: str) -> list[str]:
    return [f"--input={input_path}", "--input_format=sequences", "--split=loo", f"--output={output}", *extra]


def parse_lines(fmt: str, data: bytes, **kwargs) -> tuple[list, list, dict]:
    """In-process parse of one file: ``(parsed values, [(line_no, reason)], counts)``."""
    parser = formats.LineParser(fmt, path="f", **kwargs)
    rows, rejected = [], []
    for line_no, (raw, _) in enumerate(reading.iter_lines(io.BytesIO(data)), 1):
        out = parser.parse(line_no, raw)
        if isinstance(out, formats.Rejection):
            rejected.append((out.line_no, out.reason))
        else:
            rows.extend(out)
    return rows, rejected, parser.counts


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (links not followed) with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()
    }


# --- 2. --overwrite deletes only what a previous run recorded as its own --------------------------------------


def test_overwrite_never_deletes_an_input_that_lives_in_the_output(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    data = write(out / features.ITEMS_FILE, SEQUENCES)  # a user's input that happens to be called items.txt
    rc, err = main(capsys, *sequences_args(data, out, "--overwrite"))
    assert rc == 2 and err.startswith("error: ") and "inside --output" in err
    assert data.read_text() == SEQUENCES


def test_files_no_manifest_claims_are_never_overwritten_or_deleted(tmp_path: Path, capsys) -> None:
    data = write(tmp_path / "seq.txt", SEQUENCES)
    out = tmp_path / "out"
    foreign = {
        features.ITEMS_FILE: b"my notes\n",
        "rejected/by-hand.txt": b"kept\n",
        "train/part-00000-of-00001.tfrecord.gz": b"not ours",
    }
    for name, body in foreign.items():
        write(out / name, body)
    for extra in ([], ["--overwrite"]):
        rc, err = main(capsys, *sequences_args(data, out, *extra))
        assert rc == 2 and "no pipeline manifest claims" in err and "items.txt" in err
        assert tree(out) == foreign  # nothing written, nothing deleted


def test_overwrite_does_not_follow_a_linked_split_directory(tmp_path: Path, capsys) -> None:
    other = tmp_path / "other_dataset"
    shard = write(other / "train" / "part-00000-of-00001.tfrecord.gz", b"another dataset's records")
    out = tmp_path / "out"
    out.mkdir()
    (out / "train").symlink_to(other / "train", target_is_directory=True)
    rc, err = main(capsys, *sequences_args(write(tmp_path / "seq.txt", SEQUENCES), out, "--overwrite"))
    assert rc == 2 and "symbolic link" in err and "train" in err
    assert shard.read_bytes() == b"another dataset's records"
    assert os.listdir(other / "train") == ["part-00000-of-00001.tfrecord.gz"]


def test_overwrite_does_not_delete_through_a_linked_output_file(tmp_path: Path, capsys) -> None:
    data = write(tmp_path / "seq.txt", SEQUENCES)
    out = tmp_path / "out"
    assert main(capsys, *sequences_args(data, out))[0] == 0
    precious = write(tmp_path / "precious.txt", "not the pipeline's\n")
    shard = out / "train" / "part-00000-of-00001.tfrecord.gz"
    shard.unlink()
    shard.symlink_to(precious)  # the manifest lists the shard, but it is a link now
    rc, err = main(capsys, *sequences_args(data, out, "--overwrite"))
    assert rc == 2 and "links (train/part-00000-of-00001.tfrecord.gz)" in err
    assert precious.read_text() == "not the pipeline's\n" and (out / features.ITEMS_FILE).exists()
    (out / features.USERS_FILE).unlink()
    (out / features.USERS_FILE).symlink_to(precious)
    rc, err = main(capsys, *sequences_args(data, out, "--overwrite"))
    assert rc == 2 and "users.txt is a symbolic link" in err


def test_overwrite_deletes_exactly_the_previous_runs_files(tmp_path: Path, capsys) -> None:
    data = write(tmp_path / "seq.txt", SEQUENCES)
    out = tmp_path / "out"
    assert main(capsys, *sequences_args(data, out, "--num_shards=2"))[0] == 0
    manifest = json.loads((out / features.MANIFEST_FILE).read_text())
    assert manifest["state"] == "complete"
    assert sorted(manifest["files"]) == sorted(tree(out).keys() - {features.MANIFEST_FILE})
    assert len([f for f in manifest["files"] if f.startswith("train/")]) == 2
    write(out / "README.md", "the user's own file, at no output path\n")
    rc, err = main(capsys, *sequences_args(data, out))
    assert rc == 2 and "pass --overwrite" in err
    assert main(capsys, *sequences_args(data, out, "--overwrite", "--num_shards=1"))[0] == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == ["part-00000-of-00001.tfrecord.gz"]  # no stale shard
    assert (out / "README.md").exists()
    assert readback.full_sequences(str(out)) == {"u1": ["a", "b", "c"], "u2": ["b", "c", "d"], "u3": list("cdea")}


def test_a_crashed_runs_claim_lets_overwrite_clean_up(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    outputs.write_manifest(str(out), outputs.RUNNING)  # what a run writes before its first output
    write(out / "train" / "part-00000-of-00003.tfrecord.gz", b"half written")
    data = write(tmp_path / "seq.txt", SEQUENCES)
    assert main(capsys, *sequences_args(data, out))[0] == 2
    assert main(capsys, *sequences_args(data, out, "--overwrite"))[0] == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == ["part-00000-of-00001.tfrecord.gz"]


# --- 3. records and metadata are checked against each other ---------------------------------------------------


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two pipeline outputs of different data (module-scoped: a pipeline run costs seconds)."""
    root = tmp_path_factory.mktemp("two_datasets")
    a, b = root / "a", root / "b"
    run.run(sequences_args(write(root / "a.txt", SEQUENCES), a))
    run.run(sequences_args(write(root / "b.txt", "x1 p q r s t\nx2 q r s\n"), b))
    return a, b


def test_metadata_records_a_fingerprint_of_records_and_vocabularies(two_datasets) -> None:
    a, _ = two_datasets
    fingerprint = features.Metadata.load(str(a)).fingerprint
    shard = "part-00000-of-00001.tfrecord.gz"
    assert fingerprint["splits"]["train"] == {
        "records": 3,
        "files": {shard: features.file_sha256(str(a / "train" / shard))},
    }
    assert fingerprint["vocabularies"][features.ITEMS_FILE] == features.file_sha256(str(a / features.ITEMS_FILE))


def test_metadata_of_another_dataset_is_refused_naming_the_file(two_datasets, tmp_path: Path) -> None:
    a, b = two_datasets
    data = shutil.copytree(a, tmp_path / "mixed")
    shutil.copy(b / features.METADATA_FILE, data / features.METADATA_FILE)
    with pytest.raises(features.RecordsMismatchError, match=r"train/part-00000-of-00001\.tfrecord\.gz: .*differs"):
        features.Metadata.load(str(data))


def test_a_swapped_vocabulary_is_refused(two_datasets, tmp_path: Path) -> None:
    a, b = two_datasets
    data = shutil.copytree(a, tmp_path / "mixed")
    shutil.copy(b / features.ITEMS_FILE, data / features.ITEMS_FILE)
    with pytest.raises(features.RecordsMismatchError, match=r"items\.txt: sha256 differs"):
        features.Metadata.load(str(data))


def test_an_extra_record_file_is_refused(two_datasets, tmp_path: Path) -> None:
    a, b = two_datasets
    data = shutil.copytree(a, tmp_path / "mixed")
    shutil.copy(b / "valid" / "part-00000-of-00001.tfrecord.gz", data / "valid" / "part-extra.tfrecord.gz")
    with pytest.raises(features.RecordsMismatchError, match=r"valid/part-extra\.tfrecord\.gz: a record file"):
        features.Metadata.load(str(data))


def test_old_metadata_without_fingerprint_warns_and_its_ids_are_scanned(tmp_path: Path) -> None:
    # items 1..6 in use, item 6 in user 1's training input; users 1..2
    metadata = write_loo_dataset(str(tmp_path), [[6, 1, 2, 3], [1, 2, 3, 4]], n_items=6)
    with pytest.warns(features.MissingFingerprintWarning, match="no record fingerprint"):
        assert features.Metadata.load(str(tmp_path)).n_items == 6
    # the metadata of a 5-item dataset: item 6 of the train records is out of its range
    metadata.n_items, metadata.item_counts = 5, metadata.item_counts[:6]
    metadata.save(str(tmp_path))
    with pytest.warns(features.MissingFingerprintWarning):
        with pytest.raises(features.RecordsMismatchError, match=r"train/part-0\.tfrecord\.gz: item ids span \[1, 6\]"):
            features.Metadata.load(str(tmp_path))


def test_trainer_refuses_mismatched_data_before_building_anything(two_datasets, tmp_path: Path) -> None:
    from mdcns_tf import train
    from mdcns_tf.config_loader import load_config

    a, b = two_datasets
    data = shutil.copytree(a, tmp_path / "mixed")
    shutil.copy(b / features.METADATA_FILE, data / features.METADATA_FILE)
    config = load_config(None, [f"data.dir={data}", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(features.RecordsMismatchError):
        train.run(config)
    assert not (tmp_path / "run").exists()


# --- 4. one oversized number is one rejected row --------------------------------------------------------------

HUGE = "9" * 5000  # beyond int()'s 4,300-digit limit


def test_oversized_numbers_are_rejected_with_a_reason() -> None:
    data = f"1\t10\t100\n1\t11\t{HUGE}\n1\t12\t5\t{HUGE}\n{HUGE}\t13\t101\n1\t{HUGE}\t102\n1\t14\t{'0' * 5000}7\n"
    rows, rejected, counts = parse_lines("interactions", data.encode(), delimiter="\t", delimiter_fixed=True)
    assert rejected == [
        (2, formats.TIMESTAMP_OUT_OF_RANGE),
        (3, formats.WRONG_COLUMN_COUNT),  # the layout has 3 columns (from the first line)
        (4, formats.KEY_TOO_LONG),
        (5, formats.KEY_TOO_LONG),
    ]
    assert [(u, v[0], v[3]) for u, v in rows] == [("1", 100, ("10",)), ("1", 7, ("14",))]  # leading zeros are fine
    assert counts["rows_read"] == counts["rows_parsed"] + counts["rows_rejected"] == 6
    _, rejected, _ = parse_lines("interactions", f"1,10,5,100\n1,11,{HUGE},101\n1,12,1e400,102\n".encode())
    assert rejected == [(2, formats.RATING_OUT_OF_RANGE), (3, formats.RATING_OUT_OF_RANGE)]
    assert vocabulary.vocabulary_order(["2", "1" + "0" * 5000, "10"]) == ["2", "10", "1" + "0" * 5000]


def test_oversized_numbers_do_not_kill_the_pipeline(tmp_path: Path, capsys) -> None:
    lines = [f"u{u}\ti{i}\t{100 * u + i}" for u in range(1, 4) for i in range(1, 5)]
    lines[1:1] = [f"u1\ti9\t{HUGE}", f"{HUGE}\ti1\t7", f"u2\t{HUGE}\t7"]
    data = write(tmp_path / "log.tsv", "\n".join(lines) + "\n")
    rc, _ = main(capsys, f"--input={data}", "--input_format=interactions", "--split=loo", f"--output={tmp_path / 'o'}")
    assert rc == 0
    c = features.Metadata.load(str(tmp_path / "o")).counts
    assert (c["rows_read"], c["rows_written"], c["rows_rejected"], c["rows_filtered"]) == (15, 12, 3, 0)
    assert (c["rejected_timestamp_out_of_range"], c["rejected_key_too_long"]) == (1, 2)
    rejected = (tmp_path / "o" / "rejected" / "rejected-00000-of-00001.txt").read_text().splitlines()
    assert sorted(line.split("\t")[1:3] for line in rejected) == [
        ["2", "timestamp_out_of_range"],
        ["3", "key_too_long"],
        ["4", "key_too_long"],
    ]


# --- 5. silent wrongness in parsing ---------------------------------------------------------------------------


def test_a_quoted_csv_keeps_its_first_data_row() -> None:
    rows, rejected, counts = parse_lines("interactions", b'"1","10","100"\n"1","11","101"\n"2","10","5"\n')
    assert [(u, v[0], v[3]) for u, v in rows] == [("1", 100, ("10",)), ("1", 101, ("11",)), ("2", 5, ("10",))]
    assert rejected == [] and counts["header_lines"] == 0


def test_headers_are_lines_that_do_not_parse_as_data_and_are_counted() -> None:
    rows, _, counts = parse_lines("interactions", b'"userId","movieId","rating","timestamp"\n7,3,4.5,100\n')
    assert rows == [("7", (100, 0, 2, ("3",)))] and counts["header_lines"] == 1
    rows, _, counts = parse_lines("interactions", b"who,what,when\nu,i,3\n")  # no number: a header
    assert rows == [("u", (3, 0, 2, ("i",)))] and counts["header_lines"] == 1
    _, rejected, counts = parse_lines("interactions", b"1,2,abc\n1,3,5\n")  # a number: a broken row, not a header
    assert rejected == [(1, formats.NON_NUMERIC_TIMESTAMP)] and counts["header_lines"] == 0
    _, rejected, _ = parse_lines("interactions", b'"1","2,"3"\n1,3,5\n')
    assert rejected == [(1, formats.BAD_QUOTING)]


def test_any_whitespace_separates_tokens_in_sequences_and_pairs() -> None:
    rows, rejected, _ = parse_lines("sequences", b"u1\ti1 i2  i3\nu2\ti4\ti5\n")
    assert [(u, v[3]) for u, v in rows] == [("u1", ("i1", "i2", "i3")), ("u2", ("i4", "i5"))] and rejected == []
    rows, rejected, _ = parse_lines("pairs", b"u1\ti1\nu1 \t i2\nu1\ti3 i4\n")
    assert [(u, v[3]) for u, v in rows] == [("u1", ("i1",)), ("u1", ("i2",))]
    assert rejected == [(3, formats.WRONG_COLUMN_COUNT)]  # 3 tokens, not the item "i3 i4"
    rows, _, _ = parse_lines("sequences", b"u1,i1,i2 i3\n")  # a detected comma separates, and so does a space
    assert [(u, v[3]) for u, v in rows] == [("u1", ("i1", "i2", "i3"))]


def test_a_zero_fraction_key_is_the_integer_and_one_odd_key_does_not_renumber() -> None:
    rows, _, _ = parse_lines("sequences", b"7 49 49.0 50 49.000\n7.0 1.\n")
    assert [(u, v[3]) for u, v in rows] == [("7", ("49", "49", "50", "49")), ("7", ("1",))]
    rows, _, _ = parse_lines("interactions", b"1,49.0,100\n1,049,101\n1,4.9e1,102\n")
    assert [v[3][0] for _, v in rows] == ["49", "049", "4.9e1"]  # leading zeros and other spellings stay keys
    assert vocabulary.vocabulary_order(["1", "2", "10", "x"]) == ["1", "2", "10", "x"]
    assert splits.parse_split_file("49.0\ttest\n") == {"49": "test"}  # matched as the input's keys are


@pytest.mark.parametrize(
    ("text", "counts"),
    [
        ("u1,a,,b\nu2\n\n", "rows read 2 = written 0 + rejected 2 (empty_key 1, no_items 1) + filtered 0"),
        ("u1 a b\nu2 c\n", "rows read 3 = written 0 + rejected 0 + filtered 3 (dedupe 0, kcore 0, min_seq_len 3)"),
        ("\n  \n", "2 lines read (2 empty, 0 header), rows read 0"),
    ],
)
def test_an_empty_result_exits_non_zero_naming_the_counts(tmp_path: Path, capsys, text: str, counts: str) -> None:
    data = write(tmp_path / "seq.txt", text)
    rc, err = main(capsys, *sequences_args(data, tmp_path / "out"))
    assert rc == 1
    assert err.startswith("error: no user left in ") and counts in err and "rejected/" in err


# --- 6. paths -------------------------------------------------------------------------------------------------


def test_a_directory_input_reads_its_files(tmp_path: Path, capsys) -> None:
    write(tmp_path / "in" / "a.txt", "u1 a b c\n")
    write(tmp_path / "in" / "b.txt", "u2 b c d\n")
    write(tmp_path / "in" / ".DS_Store", "\x00junk")  # hidden: not data
    write(tmp_path / "in" / "sub" / "c.txt", "u3 x y z\n")  # subdirectories are not read
    for given in (str(tmp_path / "in"), str(tmp_path / "in") + "/"):
        out = tmp_path / f"out{len(given)}"
        assert main(capsys, *sequences_args(given, out))[0] == 0
        assert readback.full_sequences(str(out)) == {"u1": ["a", "b", "c"], "u2": ["b", "c", "d"]}
    assert main(capsys, *sequences_args(tmp_path / "*", tmp_path / "glob"))[0] == 2  # a glob of directories only


def test_an_empty_output_is_a_one_line_error(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = write(tmp_path / "seq.txt", SEQUENCES)
    rc, err = main(capsys, *sequences_args(data, ""))
    assert rc == 2 and err == "error: --output is empty: name the output directory"
    assert sorted(os.listdir(tmp_path)) == ["seq.txt"]  # nothing written into the working directory


def test_output_equal_to_the_input_file_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    data = write(tmp_path / "seq.txt", SEQUENCES)
    rc, err = main(capsys, *sequences_args(data, data))
    assert rc == 2 and err.startswith("error: --output") and "existing file" in err
    assert data.read_text() == SEQUENCES and sorted(os.listdir(tmp_path)) == ["seq.txt"]


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--delimiter=", "--delimiter is empty"),
        ("--num_shards=-1", "--num_shards must be >= 0"),
        ("--max_line_bytes=0", "--max_line_bytes >= 1"),
        ("--input=", "--input is empty"),
    ],
)
def test_bad_flag_values_are_one_line_errors(tmp_path: Path, capsys, flag: str, message: str) -> None:
    data = write(tmp_path / "seq.txt", SEQUENCES)
    rc, err = main(capsys, *sequences_args(data, tmp_path / "out"), flag)
    assert rc == 2 and err.startswith("error: ") and message in err
    assert not (tmp_path / "out").exists()
