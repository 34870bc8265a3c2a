"""``--split_file``: a given user split (e.g. the MDCNS authors' Beauty split) replaces the seeded assignment."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from mdcns_tf import features
from pipeline import readback, run, splits

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SEQUENCES = "u1 a b c\nu2 b c d\nu3 c d e a\nu4 a c\nu5 d e\nu6 e a b\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def pipeline_args(tmp_path: Path, split_file: Path, *extra: str) -> list[str]:
    return [
        f"--input={write(tmp_path, 'seq.txt', SEQUENCES)}",
        "--input_format=sequences",
        "--split=user",
        f"--split_file={split_file}",
        f"--output={tmp_path / 'out'}",
        *extra,
    ]


def test_parse_split_file_skips_comments_and_blank_lines() -> None:
    text = "# user\tsplit\n\nu2\tvalid\n u4 \ttest\nu5\ttrain\n"
    assert splits.parse_split_file(text) == {"u2": "valid", "u4": "test", "u5": "train"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("u1\tvalid\nu1\ttest\n", "1 duplicate users: line 2 user 'u1'"),
        (
            "u1\tval\nu2\tTest\n",
            "2 unknown split names (expected one of ['train', 'valid', 'test']): line 1 'val', line 2",
        ),
        ("u1 valid\n", "1 lines are not 'user<TAB>split': line 1 'u1 valid'"),
        ("u1\tvalid\textra\n", "lines are not 'user<TAB>split'"),
        ("# only a comment\n", "no 'user<TAB>split' line"),
    ],
)
def test_parse_split_file_errors_name_the_offenders(text: str, message: str) -> None:
    with pytest.raises(splits.SplitFileError, match="^--split_file: .*" + re.escape(message)):
        splits.parse_split_file(text)


def test_error_lists_at_most_five_offenders_and_counts_the_rest() -> None:
    text = "".join(f"u{i}\tvalid\nu{i}\ttest\n" for i in range(8))
    with pytest.raises(splits.SplitFileError, match=r"8 duplicate users: .*'u4' and 3 more$"):
        splits.parse_split_file(text)


def test_file_assignment_defaults_to_train_and_rejects_unknown_users() -> None:
    assert splits.file_split_assignment(["a", "b", "c"], {"b": "test"}) == {"a": "train", "b": "test", "c": "train"}
    with pytest.raises(splits.SplitFileError, match=r"2 users are not in the data: 'x', 'yy'"):
        splits.file_split_assignment(["a"], {"yy": "valid", "a": "test", "x": "valid"})


def test_pipeline_uses_the_split_file_and_records_it(tmp_path: Path) -> None:
    split_file = write(tmp_path, "split.tsv", "# the held-out users\nu2\tvalid\nu4\ttest\nu6\tvalid\n")
    run.run(pipeline_args(tmp_path, split_file))
    out = str(tmp_path / "out")
    meta = features.Metadata.load(out)
    users = readback.read_vocab(out, features.USERS_FILE)
    by_split = {s: sorted(users[u - 1] for u, _, _ in readback.read_split(out, s)) for s in features.SPLITS}
    assert by_split == {"train": ["u1", "u3", "u5"], "valid": ["u2", "u6"], "test": ["u4"]}
    assert meta.split["split_file"] == str(split_file)
    assert meta.split["split_file_sha256"] == hashlib.sha256(split_file.read_bytes()).hexdigest()
    assert meta.split["split_file_users"] == {"train": 0, "valid": 2, "test": 1}
    assert meta.split["seed"] is None and meta.split["fractions"] is None  # no seeded assignment took part
    # a held-out user's input is its sequence minus the last item, the target is the last item
    items = readback.read_vocab(out, features.ITEMS_FILE)
    ((u, ids, target),) = readback.read_split(out, "test")
    assert [items[i - 1] for i in ids] == ["a"] and items[target - 1] == "c"


@pytest.mark.parametrize(
    "split_text, extra, message",
    [
        ("u2\tvalid\nu9\ttest\nu8\ttest\n", [], "2 users are not in the data: 'u8', 'u9'"),
        ("u2\tvalid\n", ["--split=loo"], "--split_file assigns users to splits: it needs --split user"),
        ("u2\tvalid\nu2\ttest\n", [], "1 duplicate users: line 2 user 'u2'"),
        # u5 has 2 items; --min_seq_len 3 removes it, so the split file names a user the data no longer has
        ("u5\ttest\n", ["--min_seq_len=3"], "1 users are not in the data: 'u5'"),
    ],
)
def test_bad_split_file_is_a_one_line_error_without_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture, split_text: str, extra: list[str], message: str
) -> None:
    split_file = write(tmp_path, "split.tsv", split_text)
    assert run.main(pipeline_args(tmp_path, split_file, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not (tmp_path / "out" / features.METADATA_FILE).exists()  # nothing a trainer could read


def test_missing_split_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run.main(pipeline_args(tmp_path, tmp_path / "absent.tsv")) == 2
    err = capsys.readouterr().err
    assert "--split_file" in err and "does not exist" in err


@pytest.mark.skipif(
    not (DATA / "mdcns_authors_split" / "Beauty_split.tsv").exists(),
    reason="../shared/data/mdcns_authors_split is absent (a fresh clone has no shared data)",
)
def test_authors_beauty_split_reproduces_their_counts(tmp_path: Path) -> None:
    run.run(
        [
            f"--input={DATA / 'amazon_lastfm_s3rec' / 'Beauty.txt'}",
            "--input_format=sequences",
            "--split=user",
            f"--split_file={DATA / 'mdcns_authors_split' / 'Beauty_split.tsv'}",
            f"--output={tmp_path / 'out'}",
        ]
    )
    meta = json.loads((tmp_path / "out" / features.METADATA_FILE).read_text())
    assert meta["records"] == {"train": 15654, "valid": 4472, "test": 2237}
    # the authors' training logs print 123,086 prefixes of length >= 2 over their training users
    train = readback.read_split(str(tmp_path / "out"), "train")
    assert sum(len(ids) - 1 for _, ids, _ in train) == 123_086
