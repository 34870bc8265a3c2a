"""``--vocabulary_from PREVIOUS_OUTPUT``: day 1's items and users keep their ids in day 2's output, new ones come
after day 1's largest id in vocabulary order, day 1's items absent from day 2 keep theirs; metadata names the parent;
a folder that is not a complete, self-consistent pipeline output is refused with one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mdcns_tf import features
from pipeline import parent, readback, run, vocabulary

DAY1 = "alice a b c\nbob b c x\ncarol c a b\ndave x a b\n"
# a is gone; x, b, c stay; p, q, 12 and 3 are new (integers first, numerically, then the rest sorted); erin is new
DAY2 = "alice b c q\nbob x 12 p\nerin 3 b c x\ncarol c b x\n"


def write_output(tmp_path: Path, name: str, text: str, *flags: str) -> Path:
    (tmp_path / f"{name}.txt").write_text(text)
    out = tmp_path / name
    run.run(
        [f"--input={tmp_path / f'{name}.txt'}", "--input_format=sequences", "--split=loo", f"--output={out}", *flags]
    )
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def day1(tmp_path: Path) -> Path:
    return write_output(tmp_path, "day1", DAY1)


def test_day1_ids_are_kept_and_new_ones_appended(tmp_path: Path, day1: Path) -> None:
    day2 = write_output(tmp_path, "day2", DAY2, f"--vocabulary_from={day1}")
    items1 = readback.read_vocab(str(day1), features.ITEMS_FILE)
    items2 = readback.read_vocab(str(day2), features.ITEMS_FILE)
    assert items1 == ["a", "b", "c", "x"]
    assert items2 == [*items1, "3", "12", "p", "q"]  # "a" (not in day 2) keeps id 1
    users1 = readback.read_vocab(str(day1), features.USERS_FILE)
    assert readback.read_vocab(str(day2), features.USERS_FILE) == [*users1, "erin"]  # dave keeps his index

    # the records hold day 2's events under those ids
    assert readback.full_sequences(str(day2)) == {line.split()[0]: line.split()[1:] for line in DAY2.splitlines()}
    meta = features.Metadata.load(str(day2))
    assert (meta.n_items, meta.n_users, len(meta.item_counts)) == (8, 5, 9)
    assert meta.item_counts[1] == 0  # "a": in the catalogue, not in day 2's training records
    assert meta.records == {"train": 4, "valid": 4, "test": 4}  # dave, absent from day 2, has no record
    assert meta.counts["users_written"] == 4
    assert meta.source["vocabulary_from"] == {
        "path": str(day1),
        "metadata_sha256": sha256(day1 / features.METADATA_FILE),
        "items_sha256": sha256(day1 / features.ITEMS_FILE),
        "users_sha256": sha256(day1 / features.USERS_FILE),
        "n_items": 4,
        "n_users": 4,
        "new_items": 4,
        "new_users": 1,
    }
    assert meta.source["options"]["vocabulary_from"] == str(day1)

    # day 3 from day 2 keeps day 1's ids too, and a log with nothing new adds nothing
    day3 = write_output(tmp_path, "day3", "dave x a b\n", f"--vocabulary_from={day2}")
    assert readback.read_vocab(str(day3), features.ITEMS_FILE) == items2
    vocabulary_from = features.Metadata.load(str(day3)).source["vocabulary_from"]
    assert (vocabulary_from["new_items"], vocabulary_from["new_users"]) == (0, 0)


def test_a_user_split_is_drawn_over_the_users_of_this_log(tmp_path: Path, day1: Path) -> None:
    many = "".join(f"n{i} b c x\n" for i in range(20))
    (tmp_path / "day2.txt").write_text(many)
    out = tmp_path / "day2"
    flags = ["--input_format=sequences", "--split=user", f"--vocabulary_from={day1}"]
    run.run([f"--input={tmp_path / 'day2.txt'}", f"--output={out}", *flags])
    meta = features.Metadata.load(str(out))
    assert meta.n_users == 24 and meta.counts["users_written"] == 20
    assert meta.records == {"train": 14, "valid": 4, "test": 2}  # 70/20/10 of the 20 users present, not of 24
    recorded = {u for split in features.SPLITS for u, _, _ in readback.read_split(str(out), split)}
    assert recorded == set(range(5, 25))  # day 1's users (1..4) keep their indices and have no record


def test_a_time_split_extends_the_parent_too(tmp_path: Path, day1: Path) -> None:
    (tmp_path / "day2.tsv").write_text("alice\tb\t1\nalice\tz\t2\nalice\tc\t5\nbob\tc\t1\nbob\tx\t2\n")
    out = tmp_path / "day2"
    flags = ["--input_format=interactions", "--split=time", "--cutoff=4", f"--vocabulary_from={day1}"]
    run.run([f"--input={tmp_path / 'day2.tsv'}", f"--output={out}", *flags])
    assert readback.read_vocab(str(out), features.ITEMS_FILE) == ["a", "b", "c", "x", "z"]
    held_out = readback.read_split(str(out), "valid")
    assert held_out == [(1, [2, 5], 3)]  # alice: b z -> c, under day 1's ids


def main(capsys: pytest.CaptureFixture, tmp_path: Path, parent_dir: Path | str, output: str = "out") -> str:
    (tmp_path / "new.txt").write_text(DAY2)
    rc = run.main(
        [
            f"--input={tmp_path / 'new.txt'}",
            "--input_format=sequences",
            "--split=loo",
            f"--output={tmp_path / output}",
            f"--vocabulary_from={parent_dir}",
        ]
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if not line[:4].isdigit()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_folder_that_is_not_a_pipeline_output_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert "is not a pipeline output folder (no metadata.json" in main(capsys, tmp_path, tmp_path / "empty")
    assert "is not a pipeline output folder" in main(capsys, tmp_path, tmp_path / "missing")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda d: (d / features.ITEMS_FILE).write_text("a\nb\nZ\nx\n"), "items.txt is not the file its metadata"),
        (lambda d: (d / features.USERS_FILE).unlink(), "users.txt is not the file its metadata"),
        (lambda d: _edit_metadata(d, n_items=5), "items.txt is not the file its metadata"),
        (lambda d: _edit_metadata(d, schema_version=0), "schema_version 0"),
        (lambda d: _edit_metadata(d, fingerprint=None), "items.txt is not the file its metadata"),
        (lambda d: (d / features.METADATA_FILE).write_text("{"), "metadata.json cannot be read"),
        (lambda d: (d / features.MANIFEST_FILE).unlink(), "no manifest.json"),
        (lambda d: _edit_manifest(d, state="running"), "not that of a complete run (state 'running'"),
        (lambda d: _edit_manifest(d, files=[]), "missing ['metadata.json', 'items.txt', 'users.txt']"),
    ],
    ids=[
        "items_edited",
        "users_gone",
        "n_items",
        "schema",
        "no_fingerprint",
        "bad_json",
        "no_manifest",
        "running",
        "files",
    ],
)
def test_a_parent_failing_its_identity_check_is_refused(tmp_path: Path, capsys, day1: Path, damage, fragment) -> None:
    damage(day1)
    line = main(capsys, tmp_path, day1)
    assert fragment in line and f"--vocabulary_from {day1}" in line, line
    assert not (tmp_path / "out").exists()


def _edit_metadata(folder: Path, **changes) -> None:
    meta = json.loads((folder / features.METADATA_FILE).read_text())
    (folder / features.METADATA_FILE).write_text(json.dumps({**meta, **changes}))


def _edit_manifest(folder: Path, **changes) -> None:
    manifest = json.loads((folder / features.MANIFEST_FILE).read_text())
    (folder / features.MANIFEST_FILE).write_text(json.dumps({**manifest, **changes}))


def test_the_output_folder_itself_is_refused_as_parent(tmp_path: Path, capsys, day1: Path) -> None:
    line = main(capsys, tmp_path, day1, output="day1")
    assert "is the --output folder" in line
    assert (day1 / features.ITEMS_FILE).exists()  # nothing deleted


def test_a_parent_changed_after_the_launch_is_refused_by_the_worker(tmp_path: Path, day1: Path) -> None:
    checked = parent.load_parent(str(day1), str(tmp_path / "out"))
    assert vocabulary.extend_parent(["q", "b", "3"], checked, features.ITEMS_FILE) == ["a", "b", "c", "x", "3", "q"]
    (day1 / features.ITEMS_FILE).write_text("a\nb\nc\nx\ny\n")
    with pytest.raises(parent.ParentVocabularyError, match="items.txt changed while the pipeline ran"):
        vocabulary.extend_parent(["q"], checked, features.ITEMS_FILE)
