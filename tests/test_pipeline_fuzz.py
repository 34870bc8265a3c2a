"""Property-based fuzzing (hypothesis) of the three input formats: whatever the file, every line is accounted for.

Two levels, bounded to a few seconds each so the suite adds well under a minute to CI:

- in-process (`formats.LineParser`, hundreds of examples): no exception; each line is empty, the header, parsed or
  rejected, exactly once; keys are clean; the vocabulary order is total;
- the whole pipeline through its CLI (`run.main`, a handful of examples): exit 0, or 1 for an empty result, never a
  traceback; ``rows_read = rows_written + rows_rejected + rows_filtered``; ``rejected/`` holds exactly the rejected
  lines; the written sequences are the parsed ones; nothing outside ``--output`` is written or deleted.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mdcns_tf import features
from pipeline import formats, readback, reading, run, sequences, vocabulary

# --- generated files ------------------------------------------------------------------------------------------

HUGE = "9" * 5000  # beyond int()'s 4,300-digit limit
NUMBERS = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e400", "-1e400", "1_000", "0x10", "nan", "inf", ".5", "5.", "1e3", HUGE, "0" * 5000 + "7"]),
)
KEYS = st.one_of(
    st.sampled_from(["1", "2", "3", "10", "49", "49.0", "049", "+7", "-1", "a", "b", "u1", "i1", "x", HUGE]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=6),
)
FIELDS = st.one_of(
    KEYS,
    NUMBERS,
    KEYS.map(lambda key: f'"{key}"'),  # CSV quoting
    st.sampled_from(['"', '"a,b"', '"a""b"', '"open', "", " ", "\t", "\x00", "\u2028", "\ufeff"]),
)
SEPARATORS = st.sampled_from(["\t", ",", "::", " ", "  ", " \t", ";"])


@st.composite
def text_lines(draw: st.DrawFn) -> bytes:
    fields = draw(st.lists(FIELDS, min_size=0, max_size=6))
    return draw(SEPARATORS).join(fields).encode("utf-8")


LINES = st.one_of(
    text_lines(),
    text_lines(),  # twice: mostly field-shaped lines, some raw bytes
    st.binary(max_size=24),
    st.sampled_from([b"", b"  ", b"\r", b"\xef\xbb\xbfu1 a b", b"userId,movieId,rating,timestamp", b"user item"]),
)


SMALL_KEYS = st.sampled_from(["1", "2", "3", "10", "49", "49.0", "u1", "u2", "a", "b"])
SMALL_NUMBERS = st.integers(0, 10**10).map(str)


@st.composite
def files(draw: st.DrawFn) -> bytes:
    """One input file: mostly rows of a few keys and numbers with the file's own separator (so that many lines
    parse, dedupe and k-core have something to do), mixed with hostile lines; ``\n``, ``\r\n`` or ``\r``
    endings, with or without a final one."""
    separator = draw(SEPARATORS)
    shapes = st.one_of(  # a valid row of each format: interactions (3 or 4 columns), pairs, sequences
        st.tuples(SMALL_KEYS, SMALL_KEYS, SMALL_NUMBERS),
        st.tuples(SMALL_KEYS, SMALL_KEYS, SMALL_NUMBERS, SMALL_NUMBERS),
        st.tuples(SMALL_KEYS, SMALL_KEYS),
        st.tuples(SMALL_KEYS, SMALL_KEYS, SMALL_KEYS, SMALL_KEYS),
    )
    row = shapes.map(lambda fields: separator.join(fields).encode())
    lines = draw(st.lists(st.one_of(row, row, row, LINES), min_size=0, max_size=30))
    ending = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    return ending.join(lines) + draw(st.sampled_from([b"", ending]))


def parse(fmt: str, data: bytes, path: str = "f", ordinal: int = 0) -> tuple[list, list, dict]:
    """``(parsed values, rejections, counts)`` of one file, as `reading.ReadAndParse` parses it."""
    parser = formats.LineParser(fmt, path=path, file_ordinal=ordinal)
    rows, rejected = [], []
    for line_no, (raw, _) in enumerate(reading.iter_lines(io.BytesIO(data)), 1):
        out = parser.parse(line_no, raw)
        if isinstance(out, formats.Rejection):
            rejected.append(out)
        else:
            rows.extend(out)
    return rows, rejected, parser.counts


def physical_lines(data: bytes) -> int:
    """Lines as universal newlines count them (``\\n``, ``\\r\\n`` and ``\\r`` each end one; `bytes.splitlines`
    knows only these three): a ``\\r``-only file has as many lines as it shows."""
    return len(data.splitlines())


# --- in-process: the parser -----------------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(formats.FORMATS), data=files())
def test_parser_accounts_for_every_line(fmt: str, data: bytes) -> None:
    rows, rejected, counts = parse(fmt, data)
    assert counts["lines_read"] == physical_lines(data)
    assert counts["rows_read"] == counts["rows_parsed"] + counts["rows_rejected"]
    assert counts["rows_rejected"] == len(rejected) == sum(v for k, v in counts.items() if k.startswith("rejected_"))
    assert {r.reason for r in rejected} <= set(formats.REASONS)
    assert counts["rows_parsed"] == sum(len(value[3]) for _, value in rows)
    # every line exactly once: empty, the header (interactions only, at most one), parsed, or rejected
    parsed_lines = [value[2] for _, value in rows]
    rejected_lines = [r.line_no for r in rejected]
    assert len(set(parsed_lines)) == len(parsed_lines) and not set(parsed_lines) & set(rejected_lines)
    assert counts["header_lines"] <= (1 if fmt == "interactions" else 0)
    data_lines = counts["lines_read"] - counts["empty_lines"] - counts["header_lines"]
    assert data_lines == len(parsed_lines) + len(rejected_lines)
    if fmt != "sequences":
        assert counts["rows_read"] == data_lines
    keys = set()
    for user, (timestamp, _, _, items) in rows:
        assert math.isfinite(float(timestamp))
        for key in (user, *items):
            assert key and key.isprintable() and len(key) <= formats.MAX_KEY_CHARS
            assert formats.normalize_key(key) == key
            if fmt != "interactions":
                assert not any(c.isspace() for c in key)  # whitespace always separates tokens
            keys.add(key)
    order = vocabulary.vocabulary_order(keys)
    assert sorted(order) == sorted(keys)
    integers = [key for key in order if formats.is_integer_key(key)]
    assert order[: len(integers)] == integers  # integer keys first, so one odd key cannot renumber them


# --- the whole pipeline -----------------------------------------------------------------------------------------

HOSTILE = (
    b'\xef\xbb\xbf"u1","a","10"\r\n'  # BOM, quoted CSV (interactions: a data row, not a header)
    b"u1\ta b c\n"  # tab after the user (sequences: 3 items)
    + f"u2 {HUGE} 3\n".encode()  # an oversized id
    + b"u2 49 49.0\n"  # one item twice
    b"u3 \xff\xfe 1\n"  # not UTF-8
    b"\n   \n"
    b"u3 x y z 1 2 3\n"
    b"u4 p\nu4 q\nu4 r\n"
)


def tree(root: Path, skip: Path | None = None) -> dict[str, bytes]:
    """Every file under ``root`` except under ``skip``, with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and (skip is None or skip not in p.parents)
    }


def expected_sequences(fmt: str, parsed: list, dedupe: bool, min_len: int) -> dict[str, list[str]]:
    """What the pipeline should write for ``parsed`` values (no k-core): sorted per user, deduped, long enough."""
    by_user: dict[str, list] = defaultdict(list)
    for user, value in parsed:
        by_user[user].append(value)
    out = {}
    for user, values in by_user.items():
        _, items = sequences.build_sequence((user, values), fmt == "interactions", dedupe)
        if len(items) >= min_len:
            out[user] = items
    return out


def run_cli(root: Path, fmt: str, flags: list[str]) -> int:
    """``python -m pipeline.run`` on ``root/in`` into ``root/out``, from inside ``root`` (so that a write into the
    working directory would show up there); returns the exit code."""
    split = "user" if "--split=user" in flags else "loo"
    others = [flag for flag in flags if not flag.startswith("--split")]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        args = [f"--input={root / 'in'}", f"--input_format={fmt}", f"--output={root / 'out'}", f"--split={split}"]
        return run.main([*args, *others])
    finally:
        os.chdir(cwd)


def parse_inputs(fmt: str, root: Path, n_files: int) -> tuple[list, set[tuple[str, str, str]], dict[str, int]]:
    """In-process parse of ``root/in/part{i}.txt``: ``(parsed values, {(path, line, reason)}, summed counts)``."""
    rows, rejected, totals = [], set(), defaultdict(int)
    for i in range(n_files):
        path = root / "in" / f"part{i}.txt"
        file_rows, file_rejected, counts = parse(fmt, path.read_bytes(), str(path), ordinal=i)
        rows += file_rows
        rejected |= {(r.path, str(r.line_no), r.reason) for r in file_rejected}
        for key, value in counts.items():
            totals[key] += value
    return rows, rejected, totals


@settings(max_examples=5, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@example(fmt="interactions", inputs=[HOSTILE, b"userId,movieId,timestamp\nu9,m,1\nu9,n,2\nu9,o,3\n"], flags=[])
@example(fmt="sequences", inputs=[HOSTILE], flags=["--dedupe"])
@example(fmt="pairs", inputs=[HOSTILE, b"u5 a\nu5 b\n"], flags=["--split=user"])
@given(
    fmt=st.sampled_from(formats.FORMATS),
    inputs=st.lists(files(), min_size=1, max_size=3),
    flags=st.sampled_from([[], ["--dedupe"], ["--split=user"], ["--kcore=2"]]),
)
def test_pipeline_accounts_for_every_line_and_writes_only_its_output(
    fmt: str, inputs: list[bytes], flags: list[str]
) -> None:
    with tempfile.TemporaryDirectory(prefix="pipeline_fuzz_") as tmp:
        root, out = Path(tmp), Path(tmp) / "out"
        (root / "in").mkdir()
        for i, data in enumerate(inputs):
            (root / "in" / f"part{i}.txt").write_bytes(data)
        before = tree(root)
        rc = run_cli(root, fmt, flags)
        assert tree(root, skip=out) == before  # inputs untouched, nothing written outside --output

        meta = features.Metadata.load(str(out))  # also verifies the records against their fingerprint
        c = meta.counts
        assert rc == (0 if c["users_written"] else 1)
        assert c["rows_read"] == c["rows_written"] + c["rows_rejected"] + c["rows_filtered"]
        filtered = ("rows_filtered_dedupe", "rows_filtered_kcore", "rows_filtered_min_seq_len")
        assert c["rows_filtered"] == sum(c[key] for key in filtered)

        # the pipeline counted and rejected what the same parser finds line by line in-process
        rows, rejected, totals = parse_inputs(fmt, root, len(inputs))
        for key in ("lines_read", "empty_lines", "header_lines", "rows_read", "rows_rejected"):
            assert c[key] == totals[key], key
        assert c["rows_written"] + c["rows_filtered"] == totals["rows_parsed"]
        lines = [line.split("\t", 3) for f in (out / "rejected").glob("*.txt") for line in f.read_text().splitlines()]
        assert len(lines) == c["rows_rejected"]
        assert {tuple(fields[:3]) for fields in lines} == rejected

        if "--kcore=2" not in flags:
            min_len = 2 if "--split=user" in flags else 3
            expected = expected_sequences(fmt, rows, "--dedupe" in flags, min_len)
            assert readback.full_sequences(str(out)) == expected


HOSTILE_PARSES = {  # by hand: the first line makes the file comma-delimited; whitespace separates keys too
    "interactions": (
        [("u1", 1, ("a",))],
        {2: "wrong_column_count", 3: "wrong_column_count", 4: "wrong_column_count", 5: "non_utf8"}
        | {line: "wrong_column_count" for line in range(8, 12)},
    ),
    "sequences": (
        [("u1", 1, ("a", "10")), ("u1", 2, ("a", "b", "c")), ("u2", 4, ("49", "49"))]
        + [("u3", 8, ("x", "y", "z", "1", "2", "3")), ("u4", 9, ("p",)), ("u4", 10, ("q",)), ("u4", 11, ("r",))],
        {3: "key_too_long", 5: "non_utf8"},
    ),
    "pairs": (
        [("u4", 9, ("p",)), ("u4", 10, ("q",)), ("u4", 11, ("r",))],
        {1: "wrong_column_count", 2: "wrong_column_count", 3: "wrong_column_count", 4: "wrong_column_count"}
        | {5: "non_utf8", 8: "wrong_column_count"},
    ),
}


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_hostile_example_parses_as_documented(fmt: str) -> None:
    """The hand-made hostile file the pipeline examples use, line by line."""
    rows, rejected, counts = parse(fmt, HOSTILE)
    expected_rows, expected_rejected = HOSTILE_PARSES[fmt]
    assert [(user, value[2], value[3]) for user, value in rows] == expected_rows
    assert {r.line_no: r.reason for r in rejected} == expected_rejected
    assert (counts["empty_lines"], counts["header_lines"]) == (2, 0)
