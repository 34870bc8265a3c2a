"""Property-based tests (hypothesis) of the readers: whatever bytes a log file holds, with whatever line endings, plain
or compressed, every line is read and accounted for; a truncated compressed file is an error naming it.

- In process (`inputfiles.InputStream` -> `reading.iter_lines` -> `formats.LineParser`, a few hundred examples):
  lines read = the file's lines as universal newlines count them (``bytes.splitlines``: ``\\n``, ``\\r\\n``, ``\\r``);
  data lines = lines with content (not blank) minus the header; rows read = parsed + rejected; the same counts and
  rows from the gzip file of the same bytes; any proper prefix of a compressed file is an `InputFileError`.
- Through the command line (`run.main`, a handful of examples): a folder holding the file plain and gzip-compressed;
  ``metadata.json`` counts twice the file's lines, rows read = written + rejected + filtered; a truncated gzip is
  exit code 2 with one ``error:`` line naming it.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import tempfile
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mdcns_tf import features
from pipeline import formats, inputfiles, reading, run

ENDINGS = st.sampled_from([b"\n", b"\r\n", b"\r"])
LINES = st.one_of(
    st.sampled_from([b"u1\ti1\t5", b"u1\ti2\t6", b"u2\ti1\t7", b"u1 a b", b"u2 c", b"u1,i3,8", b"user\titem\ttime"]),
    st.sampled_from([b"", b"  ", b"\t", b"\xef\xbb\xbfu1 a", b"\x00", b"u1 a\x0cu2 b", b"u1\ti1\t88\x00", b"\xff"]),
    st.binary(max_size=12),  # anything, \r and \n included
)


@st.composite
def log_files(draw: st.DrawFn) -> bytes:
    """Lines of any bytes, each ended by \\n, \\r\\n or \\r (mixed within a file), the last one maybe not."""
    lines = draw(st.lists(LINES, max_size=20))
    endings = draw(st.lists(ENDINGS, min_size=len(lines), max_size=len(lines)))
    data = b"".join(line + ending for line, ending in zip(lines, endings, strict=True))
    return data[: -len(endings[-1])] if lines and draw(st.booleans()) else data


def mislabelled(data: bytes) -> bool:
    """Plain bytes that start like a compressed file, UTF-16/32 text or a zip archive: not read as lines but refused
    with an error naming the file (`inputfiles.content_problem`)."""
    return inputfiles.content_problem("f", data[:16], inputfiles.compression_of("f")) is not None


def lines_with_content(data: bytes) -> int:
    """Lines that are not blank (blank: UTF-8 whitespace only, after the byte order mark of the first line)."""
    count = 0
    for i, line in enumerate(data.splitlines()):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            count += 1
            continue
        count += bool((text[1:] if i == 0 and text.startswith("\ufeff") else text).strip())
    return count


COMPRESS = {
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": zstandard.ZstdCompressor().compress,
    ".deflate": zlib.compress,
}


def read(fmt: str, raw: bytes, path: str) -> tuple[list, list, dict]:
    """``(parsed values, [(line, reason)], counts)`` of a file holding ``raw``, read as the pipeline reads it."""
    stream = inputfiles.InputStream(io.BytesIO(raw), path, len(raw), inputfiles.compression_of(path))
    parser = formats.LineParser(fmt, path=path)
    rows, rejected = [], []
    for line_no, (line, _) in enumerate(reading.iter_lines(stream), 1):
        out = parser.parse(line_no, line)
        if isinstance(out, formats.Rejection):
            rejected.append((line_no, out.reason))
        else:
            rows.extend(out)
    return rows, rejected, parser.counts


# --- in process ----------------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@example(fmt="sequences", data=b"u1 a b c\ru2 d e f\ru3 g h i\r")  # the reported old-Mac file
@example(fmt="interactions", data=b"u1\ti1\t881250949\r\nu2\ti2\t8812")  # cut mid-field, no final newline
@given(fmt=st.sampled_from(formats.FORMATS), data=log_files())
def test_every_line_of_any_file_is_read_and_accounted_for(fmt: str, data: bytes) -> None:
    if mislabelled(data):
        with pytest.raises(inputfiles.InputFileError, match="^log.txt: "):
            read(fmt, data, "log.txt")
        return
    rows, rejected, c = read(fmt, data, "log.txt")
    assert c["lines_read"] == len(data.splitlines())
    data_lines = c["lines_read"] - c["empty_lines"] - c["header_lines"]
    assert data_lines == lines_with_content(data) - c["header_lines"]
    assert data_lines == len(rows) + len(rejected)
    assert c["rows_read"] == c["rows_parsed"] + c["rows_rejected"] and c["rows_rejected"] == len(rejected)
    assert c["rows_parsed"] == sum(len(value[3]) for _, value in rows)
    if fmt != "sequences":
        assert c["rows_read"] == data_lines  # one row a line with content
    if data.rstrip(b"\r\n") != data and data.strip():
        assert formats.UNTERMINATED_LINE not in {reason for _, reason in rejected}
    # the same bytes compressed: the same lines, rows and rejections
    assert read(fmt, gzip.compress(data), "log.txt.gz") == (rows, rejected, c)


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=log_files(), ext=st.sampled_from(sorted(COMPRESS)), cut=st.floats(0, 1, exclude_max=True))
def test_any_truncated_compressed_file_is_an_error_naming_it(data: bytes, ext: str, cut: float) -> None:
    """Any proper prefix of a one-stream compressed file (a cut at a stream boundary of a multi-stream file is a
    valid file of fewer streams: no reader can tell)."""
    compressed = COMPRESS[ext](data)
    path = f"/logs/part-7.tsv{ext}"
    with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: "):
        read("interactions", compressed[: int(cut * len(compressed))], path)
    if not mislabelled(data):
        assert read("interactions", compressed, path) == read("interactions", data, "/logs/part-7.tsv")


# --- through the command line ---------------------------------------------------------------------------------------


@settings(max_examples=2, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@example(fmt="sequences", data=b"u1 a b c\ru2 d e f\ru3 g h i\r")
@given(fmt=st.sampled_from(formats.FORMATS), data=log_files())
def test_the_pipeline_counts_every_line_plain_and_gzip(fmt: str, data: bytes) -> None:
    if mislabelled(data):
        return  # refused at launch (tests/test_pipeline_inputs.py)
    with tempfile.TemporaryDirectory(prefix="pipeline_readers_") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        (root / "in" / "a.txt").write_bytes(data)
        (root / "in" / "b.txt.gz").write_bytes(gzip.compress(data))
        rc = run.main([f"--input={root / 'in'}", f"--input_format={fmt}", "--split=loo", f"--output={root / 'out'}"])
        c = features.Metadata.load(str(root / "out")).counts
        assert rc == (0 if c["users_written"] else 1)
        assert c["rows_read"] == c["rows_written"] + c["rows_rejected"] + c["rows_filtered"]
        assert c["lines_read"] == 2 * len(data.splitlines())
        assert c["lines_read"] - c["empty_lines"] == 2 * lines_with_content(data)
        _, rejected, counts = read(fmt, data, "a.txt")
        assert (c["rows_read"], c["rows_rejected"]) == (2 * counts["rows_read"], 2 * len(rejected))
        if fmt != "sequences":
            assert c["rows_read"] == 2 * (lines_with_content(data) - counts["header_lines"])
        rejected_lines = [line.split("\t") for f in (root / "out" / "rejected").glob("*.txt") for line in open(f)]
        by_file = {
            name: sorted((int(r[1]), r[2]) for r in rejected_lines if os.path.basename(r[0]) == name)
            for name in ("a.txt", "b.txt.gz")
        }
        assert by_file["a.txt"] == by_file["b.txt.gz"] == sorted(rejected)


@settings(max_examples=2, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=log_files().filter(lambda d: len(d) > 8), cut=st.floats(0.05, 0.95))
def test_the_pipeline_stops_on_a_truncated_gzip_naming_it(data: bytes, cut: float) -> None:
    compressed = gzip.compress(data)
    with tempfile.TemporaryDirectory(prefix="pipeline_readers_") as tmp:
        path = Path(tmp) / "log.tsv.gz"
        path.write_bytes(compressed[: int(cut * len(compressed))])
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = run.main([f"--input={path}", "--input_format=interactions", "--split=loo", f"--output={tmp}/out"])
        lines = [line for line in err.getvalue().splitlines() if line.startswith("error: ")]
        assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"error: {path}: ")
        assert not os.path.exists(f"{tmp}/out/{features.METADATA_FILE}")
