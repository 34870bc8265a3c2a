"""Pure (Beam-free) parsing of the three input formats; every line becomes rows or a rejection.

Formats (docs/design.md, section "Protocols"):

- ``interactions``: ``user, item, timestamp[, rating]`` per line. The delimiter is detected per file from its first
  decodable non-empty line: tab, else ``::``, else comma, else runs of whitespace (``--delimiter`` overrides).
  The column layout is ``--columns`` if given, else the header's names if the first line is a header, else
  positional: 3 columns = ``user,item,timestamp``; 4 columns = ``user,item,timestamp,rating`` unless the 4th value
  is larger in magnitude than the 3rd on the first data line, which is the MovieLens order
  ``user,item,rating,timestamp`` (``u.data``, ``ratings.dat``).
- ``sequences``: ``user item1 item2 ...`` one user a line, chronological (S3-Rec files).
- ``pairs``: ``user item`` one interaction a line, chronological within a user (SASRec files).

Accounting (the invariant in ``metadata.json`` is built on it):

- A *row* is one interaction. For ``interactions``/``pairs`` a data line is one row; for ``sequences`` a valid line
  is one row per item and a rejected line is exactly one row.
- Empty (whitespace-only) lines are not rows: they are skipped and counted as ``empty_lines``.
- A header line is not a row: it is counted as ``header_lines`` and logged. Only the first non-empty line of an
  ``interactions`` file can be one, and only if it does not parse as a data row and either names the columns
  (``userId,movieId,rating,timestamp``...) or has no numeric field (so ``1,2,abc`` is a rejected row, and a quoted
  ``"1","2","100"`` is data).
- Every other line is either parsed into rows or rejected as exactly one row with one reason from `REASONS`.
- Lines are what `pipeline.reading.iter_lines` splits (``\\n``, ``\\r\\n`` or ``\\r`` end a line). A line that may not
  be one whole line is rejected, never parsed: the last line when no ending follows it (``unterminated_line``: a
  file cut mid-line still parses), a line holding a NUL byte (``nul_byte``: zero-filled blocks, binary or UTF-16
  data) or another line-break character (``line_break_character``: ``\\v``, ``\\f``, ``\\x1c``-``\\x1e``,
  ``\\x85``, ``\\u2028``, ``\\u2029``, where whitespace splitting would run two users' lines into one).

Tokens and keys:

- With a one-character delimiter (tab, comma, or a literal such as ``;``), fields may be quoted CSV-style
  (``"a,b"``, ``""`` for a quote); a line whose quotes do not close is rejected as ``bad_quoting``.
- ``sequences``/``pairs``: any run of whitespace separates tokens (``u1<TAB>i1 i2`` is three tokens), also after a
  detected ``,`` or ``::``; an explicit ``--delimiter`` is the only separator.
- A key that is an integer written with a zero fraction (``49.0``, ``49.``, ``49.000``) is the integer (``49``):
  float-typed id columns (pandas, spreadsheets) do not create a second item. Leading zeros and signs are kept
  (``049`` stays its own key: ASINs and zip codes are not numbers).
- Keys longer than `MAX_KEY_CHARS` are rejected (``key_too_long``); timestamps and ratings must be finite doubles
  (a 5,000-digit integer or ``1e400`` is ``timestamp_out_of_range`` / ``rating_out_of_range``), so no row reaches
  Python's 4,300-digit ``int()`` limit.

Speed: `LineParser.parse_batch` gives exactly what `LineParser.parse` gives line by line, but matches the lines that
need no more than splitting (`plain_line_pattern`: the common case) a block at a time, at a fraction of the cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from pipeline import plainlines
from pipeline.columns import (
    detect_delimiter,
    detect_key_delimiter,
    header_layout,
    parse_columns,
    positional_layout,
    split_fields,
)
from pipeline.fields import (
    IGNORE,
    ITEM,
    MAX_KEY_CHARS,
    RATING,
    TIMESTAMP,
    USER,
    is_integer_key,
    is_number,
    normalize_key,
    parse_number,
)

__all__ = [  # re-exported
    "detect_delimiter",
    "detect_key_delimiter",
    "header_layout",
    "parse_columns",
    "positional_layout",
    "split_fields",
    "IGNORE",
    "ITEM",
    "MAX_KEY_CHARS",
    "RATING",
    "TIMESTAMP",
    "USER",
    "is_integer_key",
    "is_number",
    "normalize_key",
    "parse_number",
]

FORMATS = ("interactions", "sequences", "pairs")

# Rejection reasons (stable strings: they appear in rejected/*.txt and in metadata counts as rejected_<reason>).
NON_UTF8 = "non_utf8"
LINE_TOO_LONG = "line_too_long"
WRONG_COLUMN_COUNT = "wrong_column_count"
EMPTY_KEY = "empty_key"
BAD_KEY_CHARACTER = "bad_key_character"
NON_NUMERIC_TIMESTAMP = "non_numeric_timestamp"
NON_NUMERIC_RATING = "non_numeric_rating"
NO_ITEMS = "no_items"
KEY_TOO_LONG = "key_too_long"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
RATING_OUT_OF_RANGE = "rating_out_of_range"
BAD_QUOTING = "bad_quoting"
UNTERMINATED_LINE = "unterminated_line"
NUL_BYTE = "nul_byte"
LINE_BREAK_CHARACTER = "line_break_character"
REASONS = (
    NON_UTF8,
    LINE_TOO_LONG,
    WRONG_COLUMN_COUNT,
    EMPTY_KEY,
    BAD_KEY_CHARACTER,
    KEY_TOO_LONG,
    NON_NUMERIC_TIMESTAMP,
    TIMESTAMP_OUT_OF_RANGE,
    NON_NUMERIC_RATING,
    RATING_OUT_OF_RANGE,
    NO_ITEMS,
    BAD_QUOTING,
    UNTERMINATED_LINE,
    NUL_BYTE,
    LINE_BREAK_CHARACTER,
)
# Line breaks other than \n, \r\n and \r (which end lines, `pipeline.reading.iter_lines`) that `str.splitlines` and
# other tools break lines at: a line holding one may be two lines run together (whitespace splitting would mix two
# users' items), so it is rejected (LINE_BREAK_CHARACTER) rather than guessed at.
_LINE_BREAK_BYTES = b"\x0b\x0c\x1c\x1d\x1e"
_LINE_BREAKS_UTF8 = (b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9")  # \x85, \u2028, \u2029
# Longer lines are rejected as LINE_TOO_LONG without being read into memory (`pipeline.reading.iter_lines`).
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024


class UnterminatedLine(bytes):
    """The last line of a file when no line ending follows it (`pipeline.reading.iter_lines`): rejected as
    ``unterminated_line`` when it has content, since a file cut mid-line (a timestamp cut in half still parses)
    cannot be told from one whose writer left out the last newline."""


@dataclasses.dataclass(frozen=True)
class Rejection:
    """One rejected input line: 1-based ``line_no`` in ``path``, a reason from `REASONS`, the raw bytes."""

    path: str
    line_no: int
    reason: str
    raw: bytes

    def to_line(self, max_raw_bytes: int = 512) -> str:
        """``path \\t line_no \\t reason \\t raw`` with raw truncated and escaped to printable ASCII."""
        raw = self.raw[:max_raw_bytes].decode("utf-8", "backslashreplace")
        escaped = raw.encode("unicode_escape").decode("ascii")
        if len(self.raw) > max_raw_bytes:
            escaped += f"...(+{len(self.raw) - max_raw_bytes} bytes)"
        return f"{self.path}\t{self.line_no}\t{self.reason}\t{escaped}"


# A parsed line: (user_key, (timestamp, file_ordinal, line_no, item_keys)). One line -> one value, whose
# `item_keys` has one item for interactions/pairs and all items of the line for sequences; sorting a user's values
# by the first three fields is the chronological order with ties kept in input order.
SortKey = tuple[float, int, int]
Parsed = tuple[str, tuple[float, int, int, tuple[str, ...]]]


@dataclasses.dataclass
class ParsedBatch:
    """What `LineParser.parse_batch` made of a run of lines, column-wise: parsed line ``i`` (in line order) is
    ``(users[i], (times[i], file_ordinal, line_nos[i], items[i]))`` as a `Parsed` value; rejections in line order."""

    users: list[str] = dataclasses.field(default_factory=list)  # one per parsed line
    items: list[tuple[str, ...]] = dataclasses.field(default_factory=list)  # the line's item keys (sequences: many)
    times: list[float | int] = dataclasses.field(default_factory=list)  # the timestamp (0 without a timestamp column)
    line_nos: list[int] = dataclasses.field(default_factory=list)
    rejections: list[Rejection] = dataclasses.field(default_factory=list)


def has_line_break(raw: bytes) -> bool:
    """Whether UTF-8 ``raw`` holds a line break other than \\n and \\r: \\v, \\f, \\x1c-\\x1e, \\x85, \\u2028 or \\u2029
    (bytes, not a regex: ~0.1 us a line instead of ~1 us)."""
    if len(raw.translate(None, _LINE_BREAK_BYTES)) != len(raw):
        return True
    return not raw.isascii() and any(sequence in raw for sequence in _LINE_BREAKS_UTF8)


def _bad_key(key: str) -> str | None:
    if not key:
        return EMPTY_KEY
    if len(key) > MAX_KEY_CHARS:
        return KEY_TOO_LONG
    # Keys are written one per line to items.txt/users.txt and must survive any line splitter (str.splitlines also
    # breaks on \x1c-\x1e, \x85, \u2028, ...): only printable keys are accepted.
    if not key.isprintable():
        return BAD_KEY_CHARACTER
    return None


@dataclasses.dataclass
class LineParser:
    """Parses the lines of one file, in order, detecting the delimiter/header/layout from the file's first lines.

    Stateful per file by design: feed it every line of one file in order (`parse`, or runs of lines: `parse_batch`;
    the two mix freely), then read `counts`. ``parse`` returns a list of `Parsed` values (empty for skipped lines) or
    one `Rejection`; ``parse_batch`` the same for many lines, column-wise (`ParsedBatch`).
    """

    input_format: str
    path: str = ""
    file_ordinal: int = 0
    delimiter: str | None = None  # None = auto-detect per file
    delimiter_fixed: bool = False  # True when the user passed --delimiter (None then means whitespace)
    columns: tuple[str, ...] | None = None
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    header: str | None = None  # the skipped header line, if any (logged per file)
    _seen_data: bool = False
    _layout: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.input_format not in FORMATS:
            raise ValueError(f"unknown input format {self.input_format!r}; expected one of {FORMATS}")
        self._layout = self.columns
        for key in ("lines_read", "empty_lines", "header_lines", "rows_read", "rows_parsed", "rows_rejected"):
            self.counts.setdefault(key, 0)

    @property
    def layout(self) -> tuple[str, ...] | None:
        """The ``interactions`` column layout in use (None until known, and for the other formats)."""
        return self._layout

    def _count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def _reject(self, line_no: int, reason: str, raw: bytes) -> Rejection:
        self._count("rows_read")
        self._count("rows_rejected")
        self._count("rejected_" + reason)
        return Rejection(self.path, line_no, reason, raw)

    def parse(self, line_no: int, raw: bytes | None) -> list[Parsed] | Rejection:
        """One line without its ending (None: longer than the limit; an `UnterminatedLine`: the file's last line had
        no ending; both from `pipeline.reading.iter_lines`, which owns line endings); ``line_no`` is 1-based."""
        self._count("lines_read")
        if raw is None:
            return self._reject(line_no, LINE_TOO_LONG, b"")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._reject(line_no, NON_UTF8, raw)
        if line_no == 1 and line.startswith("\ufeff"):  # a UTF-8 byte order mark (only at the file's start)
            line = line[1:]
        if not line.strip():
            self._count("empty_lines")
            return []
        if isinstance(raw, UnterminatedLine):
            return self._reject(line_no, UNTERMINATED_LINE, raw)
        if "\x00" in line:  # text never holds NUL: a zero-filled block of a crashed write, binary or UTF-16 data
            return self._reject(line_no, NUL_BYTE, raw)
        if has_line_break(raw):
            return self._reject(line_no, LINE_BREAK_CHARACTER, raw)
        first = not self._seen_data
        self._seen_data = True
        if self.input_format == "interactions":
            if first and not self.delimiter_fixed:
                self.delimiter = detect_delimiter(line)
            return self._interaction(line_no, raw, line, first)
        if first and not self.delimiter_fixed:
            self.delimiter = detect_key_delimiter(line)
        return self._keys(line_no, raw, line)

    def _interaction(self, line_no: int, raw: bytes, line: str, first: bool) -> list[Parsed] | Rejection:
        fields = split_fields(line, self.delimiter)
        if fields is None:
            return self._reject(line_no, BAD_QUOTING, raw)
        if first and self._is_header(fields):
            self.header = line
            self._count("header_lines")
            return []
        if self._layout is None:
            self._layout = positional_layout(fields)
        row = interaction_row(fields, self._layout)
        if isinstance(row, str):
            return self._reject(line_no, row, raw)
        user, item, timestamp = row
        self._count("rows_read")
        self._count("rows_parsed")
        return [(user, (timestamp, self.file_ordinal, line_no, (item,)))]

    def _is_header(self, fields: list[str]) -> bool:
        """A first line is a header only if it does not parse as data and names the columns or has no number.

        A quoted data row (``"1","2","100"``) therefore stays data, and a malformed first row (``1,2,abc``) is
        rejected, not silently dropped as a header. A header that names the columns sets the layout.
        """
        if not isinstance(interaction_row(fields, self._layout or positional_layout(fields)), str):
            return False
        named = header_layout(fields)
        if named is None and any(is_number(field) for field in fields):
            return False
        self._layout = self._layout or named
        return True

    def _keys(self, line_no: int, raw: bytes, line: str) -> list[Parsed] | Rejection:
        fields = split_fields(line, self.delimiter)
        if fields is None:
            return self._reject(line_no, BAD_QUOTING, raw)
        if not self.delimiter_fixed and self.delimiter is not None:
            # Whitespace separates tokens whatever the file's first line used: "u1<TAB>i1 i2" is three tokens,
            # never a user with the item "i1 i2".
            if not all(fields):
                return self._reject(line_no, EMPTY_KEY, raw)
            fields = [token for field in fields for token in field.split()]
        if self.input_format == "pairs" and len(fields) != 2:
            return self._reject(line_no, WRONG_COLUMN_COUNT, raw)
        if self.input_format == "sequences" and len(fields) < 2:
            return self._reject(line_no, NO_ITEMS, raw)
        for key in fields:
            reason = _bad_key(key)
            if reason:
                return self._reject(line_no, reason, raw)
        keys = [normalize_key(key) for key in fields]
        items = tuple(keys[1:])
        self._count("rows_read", len(items))
        self._count("rows_parsed", len(items))
        return [(keys[0], (0, self.file_ordinal, line_no, items))]

    def parse_batch(self, lines: Sequence[tuple[int, bytes | None]]) -> ParsedBatch:
        """Parses lines of this file in order, ``(line_no, raw)`` as `parse` takes them -> the rows and rejections that
        calling `parse` on each line in order would give, with the same `counts` afterwards.

        Lines go through `parse` until the delimiter and layout are settled (the file's first data lines); after
        that, blocks of lines are matched at once against `plainlines.plain_line_pattern`, and only the lines that
        are not plain go through `parse`: the result is `parse`'s by construction, at a fraction of the cost on
        plain lines (0.5-0.7 us a line instead of 2.3, for tab-separated ``user, item, timestamp``; batches of a few
        thousand lines are fastest, the result lists of larger ones cost more in the garbage collector).
        """
        batch = ParsedBatch()
        lines = lines if isinstance(lines, list | tuple) else list(lines)
        start = 0
        while start < len(lines) and not self._settled():
            self._parse_into(batch, *lines[start])
            start += 1
        if start == len(lines):
            return batch
        fast = plainlines.plain_line_pattern(self.input_format, self.delimiter, self.delimiter_fixed, self._layout)
        for begin in range(start, len(lines), plainlines.BLOCK_LINES):
            block = lines[begin : begin + plainlines.BLOCK_LINES]
            if fast is None:
                for line_no, raw in block:
                    self._parse_into(batch, line_no, raw)
            else:
                plainlines.parse_block(
                    batch, block, *fast, self.input_format, self.delimiter, self._count, self._parse_into
                )
        return batch

    def _settled(self) -> bool:
        """Whether no later line can change the delimiter, header or layout (`parse` sets them on the first data
        lines): from then on, a line's result depends on the line alone."""
        return self._seen_data and (self.input_format != "interactions" or self._layout is not None)

    def _parse_into(self, batch: ParsedBatch, line_no: int, raw: bytes | None) -> None:
        """One line through `parse`, its result appended to ``batch``."""
        out = self.parse(line_no, raw)
        if isinstance(out, Rejection):
            batch.rejections.append(out)
            return
        for user, (timestamp, _, parsed_line_no, items) in out:
            batch.users.append(user)
            batch.items.append(items)
            batch.times.append(timestamp)
            batch.line_nos.append(parsed_line_no)


def interaction_row(fields: Sequence[str], layout: tuple[str, ...] | None) -> tuple[str, str, float | int] | str:
    """``(user, item, timestamp)`` of an ``interactions`` line under ``layout`` (keys normalised), or the reason
    it is rejected (a string from `REASONS`)."""
    if layout is None or len(fields) != len(layout):
        return WRONG_COLUMN_COUNT
    user = item = ""
    timestamp: float | int | None = None
    for name, value in zip(layout, fields, strict=True):
        if name == USER:
            user = value
        elif name == ITEM:
            item = value
        elif name == TIMESTAMP:
            timestamp = parse_number(value)
            if timestamp is None:
                return TIMESTAMP_OUT_OF_RANGE if is_number(value) else NON_NUMERIC_TIMESTAMP
        elif name == RATING and parse_number(value) is None:
            return RATING_OUT_OF_RANGE if is_number(value) else NON_NUMERIC_RATING
    reason = _bad_key(user) or _bad_key(item)
    if reason:
        return reason
    assert timestamp is not None  # every layout has exactly one timestamp column (parse_columns, header_layout)
    return normalize_key(user), normalize_key(item), timestamp
