"""Reading the input: the files ``--input`` names, each streamed line by line and parsed in one worker.

    match_inputs   --input -> [(file_ordinal, path, size_bytes)], at launch
    ReadFiles      (file_ordinal, path, size_bytes)
                     -> (ROWS, (block, `blocks.Batch` packed)) per block and chunk of `CHUNK_LINES` lines
                        (REJECTED, ["path\\tline\\treason\\traw", ...]) per chunk      `formats.Rejection`
                        (COUNTS, dict[str, int]) once per file                        `pipeline.accounting`

A file is read by one worker, streaming (`iter_lines`), so line order (ties between events) is known and no file
is held in memory; files are spread over workers. Lines are parsed a chunk at a time (`formats.LineParser.
parse_batch`) and the chunk's rows leave in one batch per user block (`pipeline.blocks`), never one element per
event. The three kinds of output are ``(tag, value)`` pairs of one output, not tagged outputs (`pipeline.portable`).
"""

from __future__ import annotations

import glob as globfiles
import logging
import os
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline import blocks, formats, inputfiles, outputs

LOG = logging.getLogger("pipeline")

ROWS = "rows"
REJECTED = "rejected"
COUNTS = "counts"

_READ_CHUNK = 1 << 20
# Lines parsed and sent on together: a chunk's rows in at most ``num_blocks`` batches. Larger chunks make fewer
# batches but cost more in the garbage collector (the parsed columns of 131,072 lines: 0.79 us a line, of 4,096:
# 0.53 us); 16,384 lines make ~600 chunks of 10M events.
CHUNK_LINES = 1 << 14
MAX_INPUT_FILES = 100_000


def match_inputs(pattern: str) -> list[tuple[int, str, int]]:
    """``(file_ordinal, path, size)`` of the matched files in path order (the ordinal orders ties across files);
    local paths are absolute, because workers read them (a Dask worker's cwd is not the launcher's).

    A local directory stands for its non-hidden files (not its subdirectories); directories a glob matches are
    skipped: a directory is not a file of rows. Local files are checked here, before anything runs
    (`inputfiles.check_local_file`: readable, regular, first bytes fitting the name); every file is checked again,
    to its end, where it is read. At most `MAX_INPUT_FILES` files: the list travels inside the Beam graph.
    Raises FileNotFoundError, `inputfiles.InputFileError` or ValueError, each naming ``pattern`` or the file.
    """
    directory_input = outputs.is_local(pattern) and os.path.isdir(pattern)
    glob = os.path.join(pattern, "*") if directory_input else pattern
    try:
        metadata = FileSystems.match([glob])[0].metadata_list
    except Exception as e:  # noqa: BLE001  (Beam raises BeamIOError, or ValueError for an unknown scheme)
        raise FileNotFoundError(f"--input {pattern!r}: {e}") from None
    if outputs.is_local(pattern):  # Beam's listing skips what it cannot stat: a link to nothing would vanish
        broken = sorted(p for p in globfiles.glob(glob) if os.path.islink(p) and not os.path.exists(p))
        if broken:
            raise FileNotFoundError(
                f"--input {pattern!r}: {broken[0]} is a symbolic link to nothing ({os.readlink(broken[0])!r})"
                f"{f' (and {len(broken) - 1} more)' if len(broken) > 1 else ''}: fix the link or remove it"
            )
    paths = sorted(
        (outputs.absolute(m.path), m.size_in_bytes)
        for m in metadata
        if not (outputs.is_local(m.path) and os.path.isdir(m.path))
        and not (directory_input and os.path.basename(m.path).startswith("."))
    )
    if not paths and directory_input:
        raise FileNotFoundError(
            f"--input {pattern!r} is a directory without a file to read (hidden files and subdirectories are not "
            "read): put the log files there, or name them (a file or a glob)"
        )
    if not paths:
        raise FileNotFoundError(f"--input {pattern!r} matches no file: check the path (a file, a glob or a directory)")
    if len(paths) > MAX_INPUT_FILES:
        raise ValueError(
            f"--input {pattern!r} matches {len(paths)} files, more than {MAX_INPUT_FILES}: the file list is part of "
            "the pipeline's graph; merge the files into fewer, larger ones"
        )
    for path, _ in paths:
        if outputs.is_local(path):
            inputfiles.check_local_file(path)
    return [(i, path, size) for i, (path, size) in enumerate(paths)]


def iter_lines(
    stream: BinaryIO, max_line_bytes: int = formats.DEFAULT_MAX_LINE_BYTES
) -> Iterator[tuple[bytes | None, int]]:
    """Streams ``(line_without_its_ending, bytes_consumed_so_far)`` from a binary stream in 1 MiB chunks.

    A line ends at ``\\n``, ``\\r\\n`` or a lone ``\\r`` (old Mac files), in any mixture, as Python's universal
    newlines read text: a ``\\r``-only file has as many lines as it shows, never one line of every user. A last line
    without an ending comes as a `formats.UnterminatedLine` (the parser rejects it: a file cut mid-line cannot be
    told from one whose writer left out the last newline). A line longer than ``max_line_bytes`` is yielded as None
    and never held in memory beyond one chunk past the limit, so a multi-GB file without newlines cannot exhaust a
    worker.
    """
    carry = b""
    skipping = False
    consumed = 0
    after_cr = False  # the previous chunk ended with \r: a \n starting this one completes that \r\n
    while True:
        chunk = stream.read(_READ_CHUNK)
        if not chunk:
            break
        consumed += len(chunk)
        if after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = (carry + chunk).split(b"\n")
        carry = lines.pop()
        for line in lines:
            if skipping:
                skipping = False
                yield None, consumed
            elif len(line) > max_line_bytes:
                yield None, consumed
            else:
                yield line, consumed
        if len(carry) > max_line_bytes:
            skipping, carry = True, b""
    if skipping:
        yield None, consumed
    elif carry:
        yield formats.UnterminatedLine(carry), consumed


class ReadAndParse(beam.DoFn):
    """Streams one file line by line (order kept via line numbers) through a `formats.LineParser`.

    Input: ``(file_ordinal, path, size_bytes)``. Outputs ``(tag, value)`` pairs (one output: `pipeline.portable`;
    `portable.select` splits them): ``ROWS`` ``(block, packed blocks.Batch)`` per user block of each chunk of
    `CHUNK_LINES` lines, ``REJECTED`` lists of text lines and, once per file, a ``COUNTS`` dict. ``num_blocks``
    is the number of user blocks (`pipeline.blocks.block_count`). Logs progress with an ETA every ``log_every_s``
    seconds.
    """

    def __init__(
        self,
        input_format: str,
        delimiter: str | None,
        delimiter_fixed: bool,
        columns: tuple[str, ...] | None,
        max_line_bytes: int = formats.DEFAULT_MAX_LINE_BYTES,
        log_every_s: float = 30.0,
        num_blocks: int = blocks.MIN_BLOCKS,
        chunk_lines: int = CHUNK_LINES,
    ) -> None:
        self.input_format = input_format
        self.delimiter = delimiter
        self.delimiter_fixed = delimiter_fixed
        self.columns = columns
        self.max_line_bytes = max_line_bytes
        self.log_every_s = log_every_s
        self.num_blocks = num_blocks
        self.chunk_lines = chunk_lines
        self.lines_counter = Metrics.counter("pipeline", "lines_read")
        self.rows_counter = Metrics.counter("pipeline", "rows_read")
        self.rejected_counter = Metrics.counter("pipeline", "rows_rejected")

    def process(self, element: tuple[int, str, int]) -> Iterator[Any]:
        file_ordinal, path, size = element
        parser = formats.LineParser(
            self.input_format,
            path=path,
            file_ordinal=file_ordinal,
            delimiter=self.delimiter,
            delimiter_fixed=self.delimiter_fixed,
            columns=self.columns,
        )
        start = last_log = time.monotonic()
        reported = {"lines_read": 0, "rows_read": 0, "rows_rejected": 0}
        chunk: list[tuple[int, bytes | None]] = []
        line_no = 0
        # The file's content, decompressed by its name and checked to the end (`pipeline.inputfiles`): a damaged,
        # truncated, mislabelled or changing file raises `InputFileError` instead of reading short.
        with inputfiles.open_input(path, size) as stream:
            for line_no, (raw, _) in enumerate(iter_lines(stream, self.max_line_bytes), start=1):
                chunk.append((line_no, raw))
                if len(chunk) < self.chunk_lines:
                    continue
                yield from self._parsed(parser, chunk)
                chunk = []
                self._report(parser.counts, reported)
                now = time.monotonic()
                if now - last_log >= self.log_every_s:
                    last_log = now
                    consumed = stream.raw_bytes  # of the file, compressed or not: comparable to its size
                    rate = consumed / max(now - start, 1e-9)
                    eta = (size - consumed) / rate if size and consumed < size else 0.0
                    LOG.info(
                        "%s: %d lines, %.1f%% of %d bytes, %.1f MB/s, ETA %.0fs",
                        path,
                        line_no,
                        100.0 * consumed / max(size, 1),
                        size,
                        rate / 1e6,
                        eta,
                    )
            yield from self._parsed(parser, chunk)
        self._report(parser.counts, reported)
        if not parser.counts["lines_read"]:
            LOG.warning("%s: empty (no line, no row)", path)
        if parser.counts.get("rejected_" + formats.UNTERMINATED_LINE):
            LOG.warning(
                "%s: the last line has no line ending, so it is rejected (%s): the file may be cut short; if the "
                "line is whole, end the file with a newline",
                path,
                formats.UNTERMINATED_LINE,
            )
        LOG.info(
            "%s: done in %.1fs: %s (delimiter %r, columns %s, header %s)",
            path,
            time.monotonic() - start,
            {k: v for k, v in sorted(parser.counts.items()) if v},
            parser.delimiter,
            parser.layout,
            "none" if parser.header is None else repr(parser.header[:200]),
        )
        yield COUNTS, dict(parser.counts)

    def _parsed(self, parser: formats.LineParser, chunk: list[tuple[int, bytes | None]]) -> Iterator[Any]:
        """A chunk of lines -> its rows as one ``(ROWS, (block, batch))`` per user block, its rejected lines."""
        parsed = parser.parse_batch(chunk)
        if parsed.rejections:
            yield REJECTED, [rejection.to_line() for rejection in parsed.rejections]
        batches: dict[int, blocks.Batch] = {}
        block_of_user: dict[str, int] = {}  # a user's rows come several to a chunk: hash each user once
        n, ordinal = self.num_blocks, parser.file_ordinal
        for user, items, timestamp, line in zip(parsed.users, parsed.items, parsed.times, parsed.line_nos, strict=True):
            block = block_of_user.get(user)
            if block is None:
                block = block_of_user[user] = blocks.block_of(user, n)
            batch = batches.get(block)
            if batch is None:
                batch = batches[block] = (ordinal, [], [], [], [])
            batch[1].append(user)
            batch[2].append(items)
            batch[3].append(timestamp)
            batch[4].append(line)
        for block, batch in batches.items():
            yield ROWS, (block, blocks.pack(batch))

    def _report(self, counts: dict[str, int], reported: dict[str, int]) -> None:
        # Counters are bumped in batches: a metric update per line would dominate the parse cost.
        for key, counter in (
            ("lines_read", self.lines_counter),
            ("rows_read", self.rows_counter),
            ("rows_rejected", self.rejected_counter),
        ):
            delta = counts.get(key, 0) - reported[key]
            if delta:
                counter.inc(delta)
                reported[key] += delta


class ReadFiles(beam.PTransform):
    """``(file_ordinal, path, size_bytes)`` -> the ``(tag, value)`` pairs of ``read_and_parse``, files spread over
    workers."""

    def __init__(self, read_and_parse: ReadAndParse) -> None:
        super().__init__()
        self.read_and_parse = read_and_parse

    def expand(self, files: beam.PCollection) -> beam.PCollection:
        return (
            files
            # Spread files over workers; a file itself is read by one worker, streaming, to keep line order.
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadAndParse" >> beam.ParDo(self.read_and_parse)
        )
