"""Input read whole or not at all (`pipeline.inputfiles`, `pipeline.reading.iter_lines`, the line rules of
`pipeline.formats`): a damaged, truncated, mislabelled or changing file stops the run with an error naming it; line
endings of any kind give as many lines as the file shows; a line that may not be one whole line is a rejected row.
Never fewer rows read than the file holds, never two users mixed into one."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest
import zstandard

from mdcns_tf import features
from pipeline import formats, inputfiles, readback, reading, run

ROWS = b"".join(b"u%d\ti%d\t%d\n" % (i % 50, i, 881250949 + i) for i in range(4000))
COMPRESSORS = {
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".lzma": lambda data: lzma.compress(data, format=lzma.FORMAT_ALONE),
    ".zst": lambda data: zstandard.ZstdCompressor(write_checksum=True).compress(data),
    ".deflate": zlib.compress,
}
MULTI_STREAM = (".gz", ".bz2", ".xz", ".zst")  # formats whose files may be several streams one after the other


def content(path: Path, size: int | None = -1) -> bytes:
    """What the pipeline reads from ``path`` (size: the file's own unless given)."""
    with inputfiles.open_input(str(path), path.stat().st_size if size == -1 else size) as stream:
        return b"".join(iter(lambda: stream.read(1 << 16), b""))


def lines_of(data: bytes) -> list[bytes]:
    return [line for line, _ in reading.iter_lines(io.BytesIO(data))]


def parse(fmt: str, data: bytes) -> tuple[list, list, dict]:
    parser = formats.LineParser(fmt, path="f")
    rows, rejected = [], []
    for line_no, raw in enumerate(lines_of(data), 1):
        out = parser.parse(line_no, raw)
        if isinstance(out, formats.Rejection):
            rejected.append((line_no, out.reason))
        else:
            rows.extend(out)
    return rows, rejected, parser.counts


def cli(capsys: pytest.CaptureFixture, input_path: Path, output: Path, fmt: str = "interactions", *extra: str):
    """``python -m pipeline.run``: ``(exit code, stderr)``."""
    rc = run.main([f"--input={input_path}", f"--input_format={fmt}", "--split=loo", f"--output={output}", *extra])
    return rc, capsys.readouterr().err


# --- compressed files: whole, or an error naming the file -----------------------------------------------------


@pytest.mark.parametrize("ext", COMPRESSORS)
def test_a_whole_compressed_file_reads_as_its_text(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"log.tsv{ext}"
    path.write_bytes(COMPRESSORS[ext](ROWS))
    assert content(path) == ROWS


@pytest.mark.parametrize("ext", COMPRESSORS)
def test_a_truncated_compressed_file_is_an_error_naming_it(tmp_path: Path, ext: str) -> None:
    data = COMPRESSORS[ext](ROWS)
    for cut in sorted({1, 2, 10, len(data) // 3, len(data) // 2, len(data) - 8, len(data) - 1}):
        path = tmp_path / f"cut{cut}.tsv{ext}"
        path.write_bytes(data[:cut])
        with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: ") as error:
            content(path)
        assert "truncated" in str(error.value) or "not valid" in str(error.value) or "damaged" in str(error.value)


@pytest.mark.parametrize("ext", [ext for ext in COMPRESSORS if ext != ".lzma"])
def test_a_damaged_byte_is_an_error_not_other_rows(tmp_path: Path, ext: str) -> None:
    """Every format checks its data (gzip CRC32, bzip2 block CRCs, xz CRC64, zlib Adler-32, zstd when the frame has
    a checksum, as the zstd tool writes by default). The .lzma "alone" format and zstd frames without a checksum
    have none: a flipped byte there is caught only when it breaks the stream (documented in `pipeline.inputfiles`)."""
    data = COMPRESSORS[ext](ROWS)
    for offset in (len(data) // 4, len(data) // 2, len(data) - 12):
        path = tmp_path / f"flip{offset}.tsv{ext}"
        path.write_bytes(data[:offset] + bytes([data[offset] ^ 0x55]) + data[offset + 1 :])
        with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: "):
            content(path)


@pytest.mark.parametrize("ext", MULTI_STREAM)
def test_concatenated_streams_are_read_one_after_the_other(tmp_path: Path, ext: str) -> None:
    half = len(ROWS) // 2
    path = tmp_path / f"joined.tsv{ext}"
    path.write_bytes(COMPRESSORS[ext](ROWS[:half]) + COMPRESSORS[ext](ROWS[half:]))  # cat a.gz b.gz > joined.gz
    assert content(path) == ROWS


@pytest.mark.parametrize("ext", COMPRESSORS)
def test_bytes_after_the_compressed_data_are_an_error(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"tail.tsv{ext}"
    path.write_bytes(COMPRESSORS[ext](ROWS) + b"u9\ti9\t1\n")
    with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: the bytes after the end of the .* are not"):
        content(path)


@pytest.mark.parametrize(("ext", "ok"), [(".gz", True), (".xz", True), (".bz2", False), (".zst", False)])
def test_zero_padding_after_the_data_only_where_the_format_allows_it(tmp_path: Path, ext: str, ok: bool) -> None:
    path = tmp_path / f"padded.tsv{ext}"
    path.write_bytes(COMPRESSORS[ext](ROWS) + b"\0" * 1000)
    if ok:
        assert content(path) == ROWS
    else:
        with pytest.raises(inputfiles.InputFileError, match=str(path)):
            content(path)
    path.write_bytes(COMPRESSORS[ext](ROWS) + b"\0" * 10 + b"x")  # padding, then something else
    with pytest.raises(inputfiles.InputFileError, match=str(path)):
        content(path)


@pytest.mark.parametrize("ext", COMPRESSORS)
def test_an_empty_compressed_file_is_an_error(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"empty.tsv{ext}"
    path.write_bytes(b"")
    with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: empty \(0 bytes\)"):
        inputfiles.check_local_file(str(path))
    with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: empty \(0 bytes\)"):
        content(path)


def test_an_empty_plain_file_holds_no_line(tmp_path: Path) -> None:
    path = tmp_path / "empty.tsv"
    path.write_bytes(b"")
    inputfiles.check_local_file(str(path))
    assert content(path) == b"" and lines_of(b"") == []


# --- names and contents that disagree ---------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".gz", ".GZ", ".bz2", ".xz", ".zst", ".zstd"])
def test_a_compression_name_on_a_plain_file_is_an_error(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"plain.tsv{ext}"
    path.write_bytes(ROWS)
    for check in (lambda: inputfiles.check_local_file(str(path)), lambda: content(path)):
        with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: named as .* but not .*rename it without"):
            check()


@pytest.mark.parametrize("ext", [".deflate", ".lzma"])
def test_a_plain_file_named_as_a_format_without_magic_fails_at_its_start(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"plain.tsv{ext}"
    path.write_bytes(ROWS)
    with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: not valid .* data from its start"):
        content(path)


@pytest.mark.parametrize(("ext", "wanted"), [(".gz", ".gz"), (".bz2", ".bz2"), (".xz", ".xz"), (".zst", ".zst")])
@pytest.mark.parametrize("name", ["log.tsv", "log", "log.gz.txt"])
def test_a_compressed_file_without_its_name_is_an_error(tmp_path: Path, ext: str, wanted: str, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(COMPRESSORS[ext](ROWS))
    for check in (lambda: inputfiles.check_local_file(str(path)), lambda: content(path)):
        with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: .*-compressed, .*rename it to end in {wanted}"):
            check()


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (ROWS.decode().encode("utf-16"), "UTF-16"),
        (ROWS.decode().encode("utf-16-be").join([b"\xfe\xff", b""]), "UTF-16"),
        (ROWS.decode().encode("utf-32"), "UTF-32"),
    ],
)
def test_utf16_and_utf32_text_is_an_error_saying_to_convert(tmp_path: Path, data: bytes, what: str) -> None:
    path = tmp_path / "log.tsv"
    path.write_bytes(data)
    with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: {what} text: convert it to UTF-8"):
        inputfiles.check_local_file(str(path))


def test_a_zip_archive_is_an_error_saying_to_extract_it(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("log.csv", ROWS)
    with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: a zip archive: extract it"):
        content(path)


def tar_of(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("log.tsv")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "what"),
    [
        ("log.tar", tar_of(ROWS), "a tar archive: extract it"),
        ("log.7z", b"7z\xbc\xaf\x27\x1c\x00\x04" + ROWS, "a 7-Zip archive: extract it"),
        ("log.rar", b"Rar!\x1a\x07\x01\x00" + ROWS, "a RAR archive: extract it"),
        ("log.tsv.Z", b"\x1f\x9d\x90" + ROWS, r"compressed with compress \(.Z\) or lz4"),
        ("log.tsv.lz4", b"\x04\x22\x4d\x18" + ROWS, r"compressed with compress \(.Z\) or lz4"),
    ],
)
def test_archives_and_unread_compressions_are_errors(tmp_path: Path, name: str, data: bytes, what: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    for check in (lambda: inputfiles.check_local_file(str(path)), lambda: content(path)):
        with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: {what}"):
            check()


@pytest.mark.parametrize(
    ("inner", "what"),
    [
        (tar_of(ROWS), "a tar archive"),  # .tar.gz
        (gzip.compress(ROWS), r"gzip-compressed data \(compressed twice\?\)"),
        (bz2.compress(ROWS), "bzip2-compressed data"),
        (ROWS.decode().encode("utf-16"), "UTF-16 text"),
    ],
)
def test_a_compressed_file_holding_no_text_is_an_error(tmp_path: Path, inner: bytes, what: str) -> None:
    path = tmp_path / "log.tsv.gz"
    path.write_bytes(gzip.compress(inner))
    with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: its gzip data holds {what}"):
        content(path)


# --- files that change, cannot be read, or are no files ---------------------------------------------------------


@pytest.mark.parametrize("ext", ["", ".gz"])
def test_a_file_whose_size_changed_since_the_launch_is_an_error(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"log.tsv{ext}"
    path.write_bytes(COMPRESSORS[".gz"](ROWS) if ext else ROWS)
    size = path.stat().st_size
    for launch_size, now in ((size + 100, str(size)), (size - 1, f"at least {size}")):
        with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: {launch_size} bytes when the run .* {now} now"):
            content(path, size=launch_size)


def test_a_file_growing_while_it_is_read_is_stopped_at_its_launch_size(tmp_path: Path) -> None:
    """A log still being written (or a device that never ends) is not read past the size it had at launch."""
    path = tmp_path / "live.tsv"
    path.write_bytes(ROWS)
    stream = inputfiles.open_input(str(path), len(ROWS))
    first = stream.read(1000)
    with open(path, "ab") as f:
        f.write(b"u1\ti1\t88")  # a writer appends, the last line not finished
    with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: {len(ROWS)} bytes when the run started"):
        while stream.read(1 << 16):
            pass
    stream.close()
    assert first == ROWS[:1000]


def test_a_read_error_is_an_error_naming_the_file() -> None:
    class Failing(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            raise PermissionError(13, "Permission denied")

    stream = inputfiles.InputStream(Failing(), "/data/log.tsv", 10, inputfiles.compression_of("/data/log.tsv"))
    with pytest.raises(inputfiles.InputFileError, match=r"^/data/log.tsv: cannot be read \(Permission denied\)"):
        stream.read()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_an_error_at_launch(tmp_path: Path) -> None:
    path = tmp_path / "log.tsv"
    path.write_bytes(ROWS)
    path.chmod(0)
    with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: cannot be read"):
        inputfiles.check_local_file(str(path))


def test_a_link_to_nothing_among_the_inputs_is_an_error(tmp_path: Path) -> None:
    """Beam's listing skips a file it cannot stat: the link's rows would be lost without a word."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tsv").write_bytes(ROWS)
    (tmp_path / "in" / "b.tsv").symlink_to(tmp_path / "moved" / "b.tsv")
    for pattern in (tmp_path / "in", tmp_path / "in" / "*.tsv", tmp_path / "in" / "b.tsv"):
        with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'in' / 'b.tsv'} is a symbolic link to nothing"):
            reading.match_inputs(str(pattern))


def test_a_pipe_is_not_an_input_file(tmp_path: Path) -> None:
    path = tmp_path / "fifo.tsv"
    os.mkfifo(path)
    with pytest.raises(inputfiles.InputFileError, match=rf"^{path}: not a regular file"):
        reading.match_inputs(str(tmp_path))


# --- line endings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        (b"a\nb\n", [b"a", b"b"]),
        (b"a\r\nb\r\n", [b"a", b"b"]),
        (b"a\rb\r", [b"a", b"b"]),  # old Mac
        (b"a\rb\r\nc\nd\r", [b"a", b"b", b"c", b"d"]),  # every ending in one file
        (b"a\r\rb", [b"a", b"", b"b"]),  # \r\r: two endings, an empty line between them
        (b"a\n\rb", [b"a", b"", b"b"]),  # \n\r is not one ending
        (b"\r\n", [b""]),
        (b"\r", [b""]),
        (b"a", [b"a"]),
    ],
)
def test_every_line_ending_ends_one_line(data: bytes, lines: list[bytes]) -> None:
    assert lines_of(data) == lines == data.splitlines()


def test_a_crlf_split_between_two_reads_is_one_ending(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"ab\r\ncd\r\r\nef\rgh\r\n"
    expected = data.splitlines()
    for chunk in range(1, 8):
        monkeypatch.setattr(reading, "_READ_CHUNK", chunk)
        assert lines_of(data) == expected, chunk


def test_old_mac_sequences_are_one_user_a_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The reported case: a \\r-only `sequences` file merged every user into one."""
    path = tmp_path / "seq.txt"
    path.write_bytes(b"u1 a b c\ru2 d e f\ru3 g h i\r")
    rc, _ = cli(capsys, path, tmp_path / "out", "sequences")
    assert rc == 0
    assert readback.full_sequences(str(tmp_path / "out")) == {"u1": list("abc"), "u2": list("def"), "u3": list("ghi")}


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("compress", [False, True])
def test_each_ending_gives_the_same_rows_plain_or_gzip(tmp_path: Path, ending: bytes, compress: bool) -> None:
    rows = [b"1\t10\t5\t881250949", b"1\t11\t4\t881250950", b"2\t10\t3\t881250951"] * 3
    data = ending.join(rows) + ending
    path = tmp_path / ("log.tsv.gz" if compress else "log.tsv")
    path.write_bytes(gzip.compress(data) if compress else data)
    parsed, rejected, counts = parse("interactions", content(path))
    assert (len(parsed), rejected, counts["lines_read"]) == (9, [], 9)


# --- lines that may not be one whole line -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_a_last_line_without_its_ending_is_rejected_not_parsed(fmt: str) -> None:
    """A file cut mid-line: the last timestamp (or item) is cut short and still parses, so the line is rejected."""
    line = {"interactions": b"u1\ti9\t88125", "sequences": b"u1 a b c", "pairs": b"u1 a"}[fmt]
    rows, rejected, counts = parse(fmt, line)
    assert (rows, rejected) == ([], [(1, formats.UNTERMINATED_LINE)])
    assert counts["rows_read"] == counts["rows_rejected"] == 1
    rows, rejected, _ = parse(fmt, line + b"\n")
    assert len(rows) == 1 and rejected == []


@pytest.mark.parametrize("tail", [b"", b"   ", b"\t", b"\n", b"\r", b"\r\n"])
def test_a_file_ending_in_an_ending_or_blanks_has_no_unterminated_row(tail: bytes) -> None:
    rows, rejected, counts = parse("pairs", b"u1 a\nu1 b\n" + tail)
    assert len(rows) == 2 and rejected == []
    assert counts["empty_lines"] == (1 if tail else 0)  # blanks, or the empty line the extra ending ends


def test_the_reported_truncated_gzip_is_an_error_not_1074_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The issue's example: a 4,000-row .gz cut short read 'up to the cut', exit 0, the last timestamp halved."""
    data = gzip.compress(ROWS)
    path = tmp_path / "log.tsv.gz"
    path.write_bytes(data[: len(data) // 3])
    rc, err = cli(capsys, path, tmp_path / "out")
    assert rc == 2
    assert err.strip().splitlines()[-1].startswith(f"error: {path}: the gzip data ends before its end marker")
    assert "Traceback" not in err
    assert not (tmp_path / "out" / features.METADATA_FILE).exists()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"u1\ti1\t100\x00", formats.NUL_BYTE),
        (b"u1\x00\ti1\t100", formats.NUL_BYTE),
        (b"\x00\x00\x00\x00", formats.NUL_BYTE),  # a zero-filled block
        (b"u\x00s\x00e\x00r\x00", formats.NUL_BYTE),  # UTF-16 without its byte-order mark
        *((b"u1\ti1\t100" + sep + b"u2\ti2\t200", formats.LINE_BREAK_CHARACTER) for sep in (b"\x0b", b"\x0c")),
        *(
            ((b"u1\ti1\t100" + sep.encode() + b"u2\ti2\t200"), formats.LINE_BREAK_CHARACTER)
            for sep in ("\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
        ),
    ],
)
def test_nul_bytes_and_other_line_breaks_are_rejected_rows(line: bytes, reason: str) -> None:
    for fmt in formats.FORMATS:
        rows, rejected, _ = parse(fmt, b"u0\ti0\t1\n" + line + b"\n")
        assert [r for r in rejected if r[0] == 2] == [(2, reason)] and all(value[2] != 2 for _, value in rows), fmt


@pytest.mark.parametrize("separator", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_a_line_break_character_never_mixes_two_users_in_sequences(separator: str) -> None:
    """Whitespace splitting would read ``u1 a b<LS>u2 c d`` as one user with the items a b u2 c d."""
    rows, rejected, counts = parse("sequences", f"u1 a b{separator}u2 c d\nu3 e f\n".encode())
    assert [user for user, _ in rows] == ["u3"] and rejected == [(1, formats.LINE_BREAK_CHARACTER)]
    assert counts["rows_read"] == 2 + 1  # u3's two items and the rejected line


def test_a_lone_form_feed_or_blank_line_break_is_an_empty_line() -> None:
    rows, rejected, counts = parse("pairs", b"u1 a\n\x0c\n \x0b \nu1 b\n")
    assert len(rows) == 2 and rejected == [] and counts["empty_lines"] == 2


def test_a_utf8_bom_is_skipped_only_at_the_start_of_the_file() -> None:
    rows, rejected, _ = parse("pairs", b"\xef\xbb\xbfu1 a\n\xef\xbb\xbfu2 b\n")
    assert [(user, value[3]) for user, value in rows] == [("u1", ("a",))]
    assert rejected == [(2, formats.BAD_KEY_CHARACTER)]  # a BOM inside the file is a character of the key
    rows, rejected, counts = parse("pairs", b"\n\xef\xbb\xbfu1 a\n")  # after an empty first line: not a BOM
    assert rows == [] and rejected == [(2, formats.BAD_KEY_CHARACTER)] and counts["empty_lines"] == 1
    rows, _, _ = parse("interactions", b"\xef\xbb\xbfuser,item,timestamp\r\nu1,a,1\r\n")  # BOM before a header
    assert rows == [("u1", (1, 0, 2, ("a",)))]
