"""An input file's content as its writer wrote it, or an `InputFileError` naming the file and what to do.

    open_input(path, size)   -> a stream whose ``read(n)`` returns the file's (decompressed) bytes
    check_local_file(path)   the same first-bytes checks at launch, for local files (an error before anything runs)

Beam's ``FileSystems.open`` decompresses by the file's name and stops silently where a compressed stream is cut: a
truncated ``.gz`` reads as a shorter file whose last line is cut in half (a 4,000-row file read as 1,074 rows, the
last timestamp halved). So the pipeline opens every input ``UNCOMPRESSED`` and decompresses it here, strictly:

- **Compression comes from the name**, with Beam's rules (`CompressionTypes.detect_compression_type`: ``.gz``,
  ``.bz2``, ``.zst``/``.zstd``, ``.xz``/``.lzma``, ``.deflate``), **checked against the first bytes**: a ``.gz``
  name on a plain file, a gzip (bzip2, zstd, xz) file without its name, archives (zip, tar, 7-Zip, RAR), formats
  Beam does not read (``.Z``, lz4) and UTF-16/32 text are errors, never lines of garbage; so is a compressed file
  whose content is one of these, or compressed again.
- **Every compressed stream must reach its end marker** and pass its checksum: a truncated or damaged file is an
  error. Concatenated streams (gzip members, bzip2/xz streams, zstd frames) are read one after the other; bytes
  after the last stream that start no new one are an error (gzip's and xz's zero padding excepted). An empty (0-byte)
  compressed file is an error too: every compressed format has a header, so it is a write that never happened.
- **The bytes read must be the size the file had when the run started** (``size``, from the launch's match): a file
  that grows or shrinks while it is read (a log still being written, a copy in progress) is an error, and reading
  stops as soon as it passes that size (a device or pipe that never ends is not read forever).
- A read failure (permissions, I/O) is an error naming the file.

What no reader can see: a damaged byte in a format without a checksum (the ``.lzma`` "alone" format, zstd frames
written without one; the zstd tool writes one by default) when the stream still decodes, and a plain file cut at a
line end. A plain file cut mid-line ends without a newline: `pipeline.formats` rejects that last line.

Decompressed output is produced in bounded pieces (``max_length``; zstd, which has none, is fed 4 KiB at a time), so
a small compressed file cannot inflate into one huge allocation.
"""

from __future__ import annotations

import bz2
import codecs
import lzma
import os
import stat
import zlib
from typing import Any, BinaryIO

import zstandard
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


class InputFileError(ValueError):
    """An input file the pipeline cannot read as it is: the message names the file and what to do (exit code 2)."""


_NAMES = {
    CompressionTypes.GZIP: "gzip",
    CompressionTypes.BZIP2: "bzip2",
    CompressionTypes.ZSTD: "zstd",
    CompressionTypes.LZMA: "xz/lzma",
    CompressionTypes.DEFLATE: "deflate (zlib)",
}
# First bytes of each compressed format (the .lzma "alone" format and raw zlib have no unambiguous magic: a text file
# may start with "x^"; their decompressor rejects a plain file instead).
_MAGIC = {
    CompressionTypes.GZIP: (b"\x1f\x8b",),
    CompressionTypes.BZIP2: tuple(b"BZh%d1AY&SY" % level for level in range(1, 10))
    + tuple(b"BZh%d\x17rE8P\x90" % level for level in range(1, 10)),  # a stream with data / an empty stream
    CompressionTypes.ZSTD: (b"\x28\xb5\x2f\xfd", *(bytes([0x50 + i]) + b"\x2a\x4d\x18" for i in range(16))),
    CompressionTypes.LZMA: (b"\xfd7zXZ\x00",),
}
_EXTRACT = "extract it and pass the extracted file(s)"
_OTHER_MAGIC = (  # content the pipeline cannot read as lines whatever the name: what it is, what to do
    ((b"PK\x03\x04", b"PK\x05\x06"), f"a zip archive: {_EXTRACT}"),
    ((b"7z\xbc\xaf\x27\x1c",), f"a 7-Zip archive: {_EXTRACT}"),
    ((b"Rar!\x1a\x07",), f"a RAR archive: {_EXTRACT}"),
    (
        (b"\x1f\x9d", b"\x04\x22\x4d\x18"),
        "compressed with compress (.Z) or lz4, which the pipeline cannot read: decompress it, or recompress it as .gz",
    ),
    ((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE), "UTF-32 text: convert it to UTF-8 (iconv -f UTF-32 -t UTF-8)"),
    ((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE), "UTF-16 text: convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"),
)
_SNIFF_BYTES = 512  # a tar header's "ustar" is at byte 257
_RAW_CHUNK = 1 << 20
_ZSTD_PIECE = 4096  # zstd's decompressobj has no max_length: at most ~32,000x of this comes out of one call
_MULTI_STREAM = {CompressionTypes.GZIP, CompressionTypes.BZIP2, CompressionTypes.ZSTD, CompressionTypes.LZMA}
_ZERO_PADDING = {CompressionTypes.GZIP, CompressionTypes.LZMA}  # as gzip(1) and xz(1) accept
_DECOMPRESS_ERRORS = (zlib.error, OSError, EOFError, ValueError, lzma.LZMAError, zstandard.ZstdError)


def compression_of(path: str) -> str:
    """The compression Beam reads ``path`` with (from its name); `CompressionTypes.UNCOMPRESSED` for plain files."""
    return CompressionTypes.detect_compression_type(path)


def content_problem(path: str, head: bytes, compression: str) -> str | None:
    """What is wrong with a file of this ``compression`` (by name) starting with ``head``, or None."""
    detected = next((kind for kind, magics in _MAGIC.items() if head.startswith(magics)), None)
    if compression == CompressionTypes.UNCOMPRESSED:
        if detected is not None:
            suffix = {CompressionTypes.GZIP: ".gz", CompressionTypes.BZIP2: ".bz2", CompressionTypes.ZSTD: ".zst"}
            ext = suffix.get(detected, ".xz")
            return (
                f"{path}: {_NAMES[detected]}-compressed, but its name does not say so (the pipeline decompresses by "
                f"the name's extension): rename it to end in {ext}"
            )
        what = _not_text(head)
        return f"{path}: {what}" if what else None
    if not head:
        return (
            f"{path}: empty (0 bytes), but its name says {_NAMES[compression]}, whose files always have a header: "
            "a write or download that never finished; fetch or write the file again"
        )
    if _has_magic(path, compression) and detected != compression:
        return (
            f"{path}: named as {_NAMES[compression]} but not {_NAMES[compression]} data (it starts with "
            f"{head[:8]!r}): if it is plain text, rename it without the compression extension"
        )
    return None


def _not_text(head: bytes) -> str | None:
    """What content starting with ``head`` is when it is no text file of lines (an archive, UTF-16/32), and what to
    do; None for anything else (text, or bytes the parser will reject line by line)."""
    for magics, what in _OTHER_MAGIC:
        if head.startswith(magics):
            return what
    return f"a tar archive: {_EXTRACT}" if head[257:262] == b"ustar" else None


def _inside_problem(content: bytes) -> str | None:
    """What is wrong with the first decompressed bytes of a compressed file: compressed again, an archive, UTF-16..."""
    inner = next((kind for kind, magics in _MAGIC.items() if content.startswith(magics)), None)
    if inner is not None:
        return f"{_NAMES[inner]}-compressed data (compressed twice?): decompress it once"
    return _not_text(content[:_SNIFF_BYTES])


def _has_magic(path: str, compression: str) -> bool:
    """Whether files of this compression start with a known magic (LZMA: only ``.xz``; ``.lzma`` has none)."""
    return compression in _MAGIC and (compression != CompressionTypes.LZMA or path.lower().endswith(".xz"))


def check_local_file(path: str) -> None:
    """At launch, for a local file: a regular, readable file whose first bytes fit its name; `InputFileError`."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise InputFileError(f"{path}: not a regular file (a device, pipe or socket): pass files only")
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise InputFileError(f"{path}: cannot be read ({e.strerror or e}): fix its permissions or remove it") from None
    problem = content_problem(path, head, compression_of(path))
    if problem:
        raise InputFileError(problem)


class _Stream:
    """One compressed stream (a gzip member, a bzip2/xz stream, a zstd frame) behind a bz2-like interface:
    ``decompress(data, limit)``, ``needs_input``, ``eof``, ``unused_data``."""

    def __init__(self, compression: str) -> None:
        self.compression = compression
        self._tail = b""  # zlib: input held back by max_length
        if compression == CompressionTypes.GZIP:
            self._d: Any = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif compression == CompressionTypes.DEFLATE:
            self._d = zlib.decompressobj()  # zlib header, as Beam's DEFLATE
        elif compression == CompressionTypes.BZIP2:
            self._d = bz2.BZ2Decompressor()
        elif compression == CompressionTypes.LZMA:
            self._d = lzma.LZMADecompressor()  # FORMAT_AUTO: .xz and .lzma
        else:
            self._d = zstandard.ZstdDecompressor(max_window_size=1 << 31).decompressobj()  # Beam's window limit

    @property
    def zlib(self) -> bool:
        return self.compression in (CompressionTypes.GZIP, CompressionTypes.DEFLATE)

    @property
    def needs_input(self) -> bool:
        if self.zlib:
            return not self._tail
        return self.compression == CompressionTypes.ZSTD or self._d.needs_input

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    def decompress(self, data: bytes, limit: int) -> bytes:
        if self.zlib:
            out = self._d.decompress(self._tail + data, limit)
            self._tail = self._d.unconsumed_tail
            return out
        if self.compression == CompressionTypes.ZSTD:
            return self._d.decompress(data) if data else b""
        return self._d.decompress(data, limit)


class InputStream:
    """``read(n)`` of one input file's content, with every check of the module docstring on the way.

    ``raw_bytes``: the file's bytes read so far (the progress of a compressed file)."""

    def __init__(self, raw: BinaryIO, path: str, size: int | None, compression: str) -> None:
        self.path = path
        self.size = size
        self.compression = compression
        self.raw_bytes = 0
        self._raw = raw
        self._raw_eof = False
        self._pending = b""  # raw bytes read but not yet given to a decompressor
        self._checked = False
        self._stream = _Stream(compression) if compression != CompressionTypes.UNCOMPRESSED else None
        self._output = 0  # bytes returned (decompressed)

    def _error(self, message: str) -> InputFileError:
        return InputFileError(f"{self.path}: {message}")

    def _read_raw(self, n: int) -> bytes:
        """Up to ``n`` bytes of the file; the first ones are checked against its name (`content_problem`)."""
        data = self._counted_read(n)
        if not self._checked:
            self._checked = True
            while data and len(data) < _SNIFF_BYTES:  # a short first read: enough bytes to tell the format
                more = self._counted_read(_SNIFF_BYTES - len(data))
                if not more:
                    break
                data += more
            problem = content_problem(self.path, data[:_SNIFF_BYTES], self.compression)
            if problem:
                raise InputFileError(problem)
        return data

    def _counted_read(self, n: int) -> bytes:
        if self._raw_eof:
            return b""
        try:
            data = self._raw.read(n)
        except OSError as e:
            raise self._error(f"cannot be read ({e.strerror or e}): fix its permissions or fetch it again") from None
        self.raw_bytes += len(data)
        if not data:
            self._raw_eof = True
        if self.size is not None and (self.raw_bytes > self.size or (self._raw_eof and self.raw_bytes != self.size)):
            raise self._error(self._changed())
        return data

    def _changed(self) -> str:
        return (
            f"{self.size} bytes when the run started, {'at least ' if not self._raw_eof else ''}{self.raw_bytes} "
            "now: the file changed while the pipeline read it (still being written or copied?); run again once it "
            "is complete"
        )

    def read(self, n: int = _RAW_CHUNK) -> bytes:
        """Up to ``n`` bytes of content (fewer is not the end; ``b""`` is, once every check passed)."""
        n = n if n and n > 0 else _RAW_CHUNK
        if self._stream is None:
            return self._read_raw(n)
        while True:
            stream = self._stream
            if stream.eof and not self._next_stream():
                return b""
            stream = self._stream
            data = b""
            if stream.needs_input:
                data = self._input()
            try:
                out = stream.decompress(data, n)
            except _DECOMPRESS_ERRORS as e:
                raise self._error(self._damaged(e)) from None
            if out:
                if not self._output and (problem := _inside_problem(out)):
                    raise self._error(f"its {_NAMES[self.compression]} data holds {problem}")
                self._output += len(out)
                return out
            if not data and stream.needs_input and self._raw_eof and not self._pending:
                name = _NAMES[self.compression]
                raise self._error(
                    f"the {name} data ends before its end marker, after {self.raw_bytes} bytes ({self._output} "
                    "bytes of text): the file is truncated (an interrupted download or copy?); fetch it again"
                )

    def _input(self) -> bytes:
        """The next piece of raw input for the decompressor (zstd: small pieces, see the module docstring)."""
        if not self._pending:
            self._pending = self._read_raw(_RAW_CHUNK)
        piece = _ZSTD_PIECE if self.compression == CompressionTypes.ZSTD else len(self._pending)
        data, self._pending = self._pending[:piece], self._pending[piece:]
        return data

    def _next_stream(self) -> bool:
        """After a stream's end: True when another stream follows (concatenated files), False at the end of the file;
        an error for bytes that start no stream."""
        rest = self._stream.unused_data + self._pending
        self._pending = b""
        while not rest:
            rest = self._read_raw(_RAW_CHUNK)
            if not rest:
                return False
        if self.compression in _ZERO_PADDING:
            while rest and not rest.strip(b"\x00"):  # zero padding, up to the end of the file and nothing after it
                rest = self._read_raw(_RAW_CHUNK)
            if not rest:
                return False
        multi = self.compression in _MULTI_STREAM and _has_magic(self.path, self.compression)
        if not multi or not rest.startswith(_MAGIC[self.compression]):
            name = _NAMES[self.compression]
            raise self._error(
                f"the bytes after the end of the {name} data (from byte {self.raw_bytes - len(rest)}) are not {name} "
                "data: the file is damaged, or something was appended to it; fetch or write it again"
            )
        self._stream = _Stream(self.compression)
        self._pending = rest
        return True

    def _damaged(self, error: BaseException) -> str:
        name = _NAMES[self.compression]
        if self._output == 0 and not _has_magic(self.path, self.compression):
            return (
                f"not valid {name} data from its start ({error}): if it is plain text, rename it without the "
                "compression extension; otherwise the file is damaged, fetch it again"
            )
        return (
            f"damaged {name} data after {self._output} bytes of text, within the first {self.raw_bytes} bytes of the "
            f"file ({error}): fetch or write the file again"
        )

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> InputStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_input(path: str, size: int | None = None) -> InputStream:
    """``path``'s content (decompressed by its name), checked as the module docstring says; ``size``: its size in
    bytes when the run started (None: not checked)."""
    try:
        raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    except Exception as e:  # noqa: BLE001  (OSError locally; Beam's own errors for other filesystems)
        raise InputFileError(f"{path}: cannot be opened ({e}): fix its permissions, or check it still exists") from None
    return InputStream(raw, path, size, compression_of(path))
