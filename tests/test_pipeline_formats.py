"""Pure parsing (`pipeline.formats`, `pipeline.splits`): formats, rejections, accounting, fuzz."""

from __future__ import annotations

import io
import random

import pytest

import mdcns_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from pipeline import formats, reading, splits, vocabulary


def parse_all(fmt: str, data: bytes, max_line_bytes: int = 1 << 20, **kwargs) -> tuple[list, list, dict]:
    parser = formats.LineParser(fmt, path="f", **kwargs)
    rows, rejected = [], []
    for line_no, (raw, _) in enumerate(reading.iter_lines(io.BytesIO(data), max_line_bytes), 1):
        out = parser.parse(line_no, raw)
        if isinstance(out, formats.Rejection):
            rejected.append((out.line_no, out.reason))
        else:
            rows.extend(out)
    return rows, rejected, parser.counts


def check_accounting(fmt: str, rows: list, rejected: list, counts: dict) -> None:
    """The invariants every parse must keep, whatever the input."""
    assert counts["rows_read"] == counts["rows_parsed"] + counts["rows_rejected"]
    assert counts["rows_rejected"] == len(rejected)
    assert counts["rows_parsed"] == sum(len(value[3]) for _, value in rows)
    assert sum(v for k, v in counts.items() if k.startswith("rejected_")) == counts["rows_rejected"]
    data_lines = counts["lines_read"] - counts["empty_lines"] - counts["header_lines"]
    assert data_lines == len(rows) + len(rejected)  # every line: a value, a rejection, empty, or the header
    if fmt != "sequences":
        assert counts["rows_read"] == data_lines


@pytest.mark.parametrize(
    ("data", "delimiter", "layout"),
    [
        (b"1\t10\t5\t881250949\n", "\t", ("user", "item", "rating", "timestamp")),  # u.data
        (b"1::10::5::978300760\n", "::", ("user", "item", "rating", "timestamp")),  # ratings.dat
        (b"1,10,978300760,5\n", ",", ("user", "item", "timestamp", "rating")),  # the documented order
        (b"1 10 978300760\n", None, ("user", "item", "timestamp")),
    ],
)
def test_interactions_delimiter_and_layout_detection(data: bytes, delimiter: str | None, layout: tuple) -> None:
    parser = formats.LineParser("interactions")
    out = parser.parse(1, data.rstrip(b"\n"))
    assert parser.delimiter == delimiter
    assert parser.layout == layout
    assert out == [("1", (978300760 if b"978300760" in data else 881250949, 0, 1, ("10",)))]


def test_interactions_header_names_define_columns_and_are_not_rows() -> None:
    rows, rejected, counts = parse_all("interactions", b"userId,movieId,rating,timestamp\r\n7,3,4.5,100\r\n7,4,x,101\n")
    assert rows == [("7", (100, 0, 2, ("3",)))]
    assert rejected == [(3, formats.NON_NUMERIC_RATING)]
    assert counts["header_lines"] == 1 and counts["rows_read"] == 2


def test_malformed_first_row_is_rejected_not_taken_as_header() -> None:
    rows, rejected, _ = parse_all("interactions", b"1\t2\tabc\n1\t3\t5\n")
    assert rejected == [(1, formats.NON_NUMERIC_TIMESTAMP)]
    assert rows == [("1", (5, 0, 2, ("3",)))]


def test_rejection_reasons() -> None:
    data = b"\n".join(
        [
            b"u,i,1",
            b"u,i",  # too few columns
            b"u,i,1,2,3",  # too many
            b",i,1",  # empty user
            b"u,,1",  # empty item
            b"u,i,1e3",  # scientific notation is a number
            b"u,i,nan",
            b"u,i,1_000",  # Python-only number syntax is not a timestamp
            b"u\xff,i,1",  # not UTF-8
            b"u\x01,i,1",  # control character in a key (NUL: nul_byte, tests/test_pipeline_inputs.py)
            b"   ",  # empty line: skipped and counted, not a row
            b"u,i,-5.5",
        ]
    )
    data += b"\n"  # a last line without its newline is rejected (unterminated_line, tests/test_pipeline_inputs.py)
    rows, rejected, counts = parse_all("interactions", data)
    assert [value[0] for _, value in rows] == [1, 1000.0, -5.5]
    assert rejected == [
        (2, formats.WRONG_COLUMN_COUNT),
        (3, formats.WRONG_COLUMN_COUNT),
        (4, formats.EMPTY_KEY),
        (5, formats.EMPTY_KEY),
        (7, formats.NON_NUMERIC_TIMESTAMP),
        (8, formats.NON_NUMERIC_TIMESTAMP),
        (9, formats.NON_UTF8),
        (10, formats.BAD_KEY_CHARACTER),
    ]
    assert counts["empty_lines"] == 1
    check_accounting("interactions", rows, rejected, counts)


def test_sequences_and_pairs() -> None:
    rows, rejected, counts = parse_all("sequences", b"1 5 6 7\n2\n3 9\n\n")
    assert rows == [("1", (0, 0, 1, ("5", "6", "7"))), ("3", (0, 0, 3, ("9",)))]
    assert rejected == [(2, formats.NO_ITEMS)]
    assert counts["rows_read"] == 3 + 1 + 1  # one row per item occurrence plus one per rejected line
    check_accounting("sequences", rows, rejected, counts)

    rows, rejected, counts = parse_all("pairs", b"1 5\n1 6\n1 6 7\n2 5\n")
    assert [(u, v[2], v[3]) for u, v in rows] == [("1", 1, ("5",)), ("1", 2, ("6",)), ("2", 4, ("5",))]
    assert rejected == [(3, formats.WRONG_COLUMN_COUNT)]


def test_long_lines_are_rejected_without_reading_them_whole() -> None:
    data = b"1 2 3\n" + b"9" * 5_000_000 + b"\n4 5\n" + b"7" * 3_000_000
    rows, rejected, counts = parse_all("sequences", data, max_line_bytes=1_000_000)
    assert [u for u, _ in rows] == ["1", "4"]
    assert rejected == [(2, formats.LINE_TOO_LONG), (4, formats.LINE_TOO_LONG)]
    assert counts["lines_read"] == 4


def test_vocabulary_order() -> None:
    assert vocabulary.vocabulary_order(["10", "9", "2", "10"]) == ["2", "9", "10"]
    assert vocabulary.vocabulary_order(["b10", "b9", "a"]) == ["a", "b10", "b9"]
    # one non-integer key goes last instead of renumbering the integer keys lexicographically
    assert vocabulary.vocabulary_order(["10", "x", "9"]) == ["9", "10", "x"]
    assert vocabulary.vocabulary_order(["07", "7", "-1"]) == ["-1", "07", "7"]


def test_split_sizes_and_assignment_are_exact_and_seeded() -> None:
    assert splits.split_sizes(10, 0.2, 0.1) == (7, 2, 1)
    assert splits.split_sizes(943, 0.2, 0.1) == (660, 189, 94)
    keys = [str(i) for i in range(1, 101)]
    a = splits.user_split_assignment(keys, 42, 0.2, 0.1)
    assert sorted(a.values()).count("train") == 70 and list(a.values()).count("valid") == 20
    assert a == splits.user_split_assignment(list(reversed(keys)), 42, 0.2, 0.1)  # input order does not matter
    assert a != splits.user_split_assignment(keys, 43, 0.2, 0.1)
    assert splits.loo_records(3, [1, 2, 3, 4]) == {
        "train": (3, [1, 2], 0),
        "valid": (3, [1, 2], 3),
        "test": (3, [1, 2, 3], 4),
    }
    assert splits.user_records(3, [1, 2], "test") == {"test": (3, [1], 2)}
    with pytest.raises(ValueError):
        splits.split_sizes(10, 0.6, 0.5)


def random_line(rng: random.Random, file_sep: bytes) -> bytes:
    """A mix of valid and broken lines for the fuzz test (half use the file's own separator)."""
    kind = rng.randrange(14)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))  # random bytes
    if kind == 1:
        return b""
    if kind == 2:
        return b" \t "
    if kind == 3:
        return b"x" * rng.randrange(2_000, 3_000)  # longer than the fuzz limit
    if kind == 4:
        return "\u00e9\u2028k,\u00ff".encode()  # valid UTF-8 with a line separator inside a key
    if kind == 5:
        return b"1,2," + rng.choice([b"abc", b"", b"1e999", b"--1", b"0x10"])  # non-numeric timestamps
    if kind == 6:
        return b"\xc3\x28 5 6"  # invalid UTF-8
    sep = rng.choice([b"\t", b",", b"::", b" "]) if kind < 9 else file_sep
    n = rng.randrange(0, 8) if kind < 11 else rng.choice([2, 3, 3, 4])
    fields = [str(rng.randrange(-3, 30)).encode() if rng.random() < 0.9 else b"" for _ in range(n)]
    return sep.join(fields)


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_fuzz_never_crashes_and_accounts_for_every_row(fmt: str) -> None:
    rng = random.Random(1234)
    totals: dict[str, int] = {}
    for _ in range(40):
        file_sep = rng.choice([b"\t", b",", b"::", b" "])
        lines = [random_line(rng, file_sep) for _ in range(rng.randrange(1, 120))]
        data = rng.choice([b"\n", b"\r\n"]).join(lines) + rng.choice([b"", b"\n"])
        if rng.random() < 0.2:  # duplicated lines are legal repeats, never a problem
            data += data
        rows, rejected, counts = parse_all(fmt, data, max_line_bytes=1_000)
        check_accounting(fmt, rows, rejected, counts)
        for user, (_, _, _, items) in rows:
            assert user and user.isprintable() and all(item and item.isprintable() for item in items)
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
    print(f"fuzz {fmt}: {dict(sorted(totals.items()))}")
    assert totals["rows_rejected"] > 0 and totals["rows_parsed"] > 0


@pytest.mark.parametrize(
    "record", [(3, [1, 2, 300], 7), (1, [], 0), (2**40, [2**62, 1], 5), (9, list(range(1, 2000, 7)), 0), (1, [-1], 0)]
)
def test_encoding_equals_make_example(record: tuple) -> None:
    tf = pytest.importorskip("tensorflow")
    from mdcns_tf import features
    from pipeline import encoding

    expected = tf.train.Example.FromString(features.make_example(*record))
    assert tf.train.Example.FromString(encoding.encode_example(*record)) == expected
    parsed = tf.io.parse_single_example(encoding.encode_example(*record), features.feature_spec())
    assert tf.sparse.to_dense(parsed[features.ITEM_IDS]).numpy().tolist() == record[1]
    assert (int(parsed[features.USER_INDEX]), int(parsed[features.TARGET])) == (record[0], record[2])
