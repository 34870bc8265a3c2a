"""Pure (Beam-free) parsing of the three input formats; every line becomes rows or a rejection.

Formats (DESIGN section 4):

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
- A header line is not a row: it is counted as ``header_lines``. Only the first non-empty line of an
  ``interactions`` file can be one, and only if it names the columns (``userId,movieId,rating,timestamp``...) or
  none of its fields is a number.
- Every other line is either parsed into rows or rejected as exactly one row with one reason from `REASONS`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

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
REASONS = (
    NON_UTF8,
    LINE_TOO_LONG,
    WRONG_COLUMN_COUNT,
    EMPTY_KEY,
    BAD_KEY_CHARACTER,
    NON_NUMERIC_TIMESTAMP,
    NON_NUMERIC_RATING,
    NO_ITEMS,
)

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
_READ_CHUNK = 1 << 20

# ASCII-only numbers: `float()`/`int()` also accept "1_000", " 12 ", "inf" and non-ASCII digits, none of which is a
# timestamp a user meant.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")

DELIMITERS = {"tab": "\t", "::": "::", "comma": ",", "whitespace": None}

USER, ITEM, TIMESTAMP, RATING, IGNORE = "user", "item", "timestamp", "rating", "_"
_HEADER_NAMES = {
    USER: {"user", "userid", "user_id", "uid", "users", "customer_id", "customerid", "visitorid", "visitor_id"},
    ITEM: {"item", "itemid", "item_id", "iid", "items", "movieid", "movie_id", "productid", "product_id", "asin"},
    TIMESTAMP: {"timestamp", "ts", "time", "unix_ts", "unixtime", "unix_time", "unixreviewtime", "datetime"},
    RATING: {"rating", "ratings", "score", "stars", "overall"},
}


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


def is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None


def parse_number(text: str) -> float | int | None:
    """An exact int for integer text (unix seconds stay exact), else a finite float, else None."""
    if _INTEGER.fullmatch(text):
        return int(text)
    if _NUMBER.fullmatch(text):
        value = float(text)
        return value if math.isfinite(value) else None
    return None


def detect_delimiter(line: str) -> str | None:
    """Tab, then ``::``, then comma, else None (= split on runs of whitespace)."""
    if "\t" in line:
        return "\t"
    if "::" in line:
        return "::"
    if "," in line:
        return ","
    return None


def split_fields(line: str, delimiter: str | None) -> list[str]:
    if delimiter is None:
        return line.split()
    return [field.strip() for field in line.split(delimiter)]


def parse_columns(spec: str) -> tuple[str, ...]:
    """``"user,item,rating,timestamp"`` -> layout tuple; ``_`` marks a column to ignore."""
    names = tuple(name.strip().lower() for name in spec.split(","))
    for name in names:
        if name not in (USER, ITEM, TIMESTAMP, RATING, IGNORE):
            raise ValueError(f"--columns: unknown column {name!r}; use user, item, timestamp, rating or _")
    for required in (USER, ITEM, TIMESTAMP):
        if names.count(required) != 1:
            raise ValueError(f"--columns {spec!r}: needs exactly one {required!r} column")
    if names.count(RATING) > 1:
        raise ValueError(f"--columns {spec!r}: at most one 'rating' column")
    return names


def header_layout(fields: Sequence[str]) -> tuple[str, ...] | None:
    """The layout named by a header line, or None if it does not name a user, an item and a timestamp column."""
    layout = []
    for field in fields:
        key = field.strip().strip("\"'").lower()
        layout.append(next((name for name, aliases in _HEADER_NAMES.items() if key in aliases), IGNORE))
    if all(layout.count(name) == 1 for name in (USER, ITEM, TIMESTAMP)) and layout.count(RATING) <= 1:
        return tuple(layout)
    return None


def positional_layout(fields: Sequence[str]) -> tuple[str, ...] | None:
    """Layout guessed from the first data line with 3 or 4 columns (see the module docstring); None otherwise."""
    if len(fields) == 3:
        return (USER, ITEM, TIMESTAMP)
    if len(fields) == 4:
        third, fourth = parse_number(fields[2]), parse_number(fields[3])
        if third is not None and fourth is not None and abs(fourth) > abs(third):
            return (USER, ITEM, RATING, TIMESTAMP)
        return (USER, ITEM, TIMESTAMP, RATING)
    return None


def _bad_key(key: str) -> str | None:
    if not key:
        return EMPTY_KEY
    # Keys are written one per line to items.txt/users.txt and must survive any line splitter (str.splitlines also
    # breaks on \x1c-\x1e, \x85, \u2028, ...): only printable keys are accepted.
    if not key.isprintable():
        return BAD_KEY_CHARACTER
    return None


@dataclasses.dataclass
class LineParser:
    """Parses the lines of one file, in order, detecting the delimiter/header/layout from the file's first lines.

    Stateful per file by design: feed it every line of one file in order (`parse`), then read `counts`.
    ``parse`` returns a list of `Parsed` values (empty for skipped lines) or one `Rejection`.
    """

    input_format: str
    path: str = ""
    file_ordinal: int = 0
    delimiter: str | None = None  # None = auto-detect per file
    delimiter_fixed: bool = False  # True when the user passed --delimiter (None then means whitespace)
    columns: tuple[str, ...] | None = None
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
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
        """One physical line (without its newline; None = longer than the reader's limit); ``line_no`` is 1-based."""
        self._count("lines_read")
        if raw is None:
            return self._reject(line_no, LINE_TOO_LONG, b"")
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._reject(line_no, NON_UTF8, raw)
        if line.startswith("\ufeff") and not self._seen_data:  # UTF-8 byte order mark on the first line
            line = line[1:]
        if not line.strip():
            self._count("empty_lines")
            return []
        first = not self._seen_data
        self._seen_data = True
        if first and not self.delimiter_fixed:
            self.delimiter = detect_delimiter(line)
        fields = split_fields(line, self.delimiter)
        if self.input_format == "interactions":
            return self._interaction(line_no, raw, fields, first)
        return self._keys(line_no, raw, fields)

    def _interaction(self, line_no: int, raw: bytes, fields: list[str], first: bool) -> list[Parsed] | Rejection:
        if first:
            # The first non-empty line is a header if it names the columns or has no numeric field at all (so a
            # malformed first data row such as "1,2,abc" is rejected, not mistaken for a header).
            named = header_layout(fields)
            if named is not None or not any(is_number(field) for field in fields):
                self._layout = self._layout or named
                self._count("header_lines")
                return []
        if self._layout is None:
            self._layout = positional_layout(fields)
            if self._layout is None:
                return self._reject(line_no, WRONG_COLUMN_COUNT, raw)
        layout = self._layout
        if len(fields) != len(layout):
            return self._reject(line_no, WRONG_COLUMN_COUNT, raw)
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
                    return self._reject(line_no, NON_NUMERIC_TIMESTAMP, raw)
            elif name == RATING and parse_number(value) is None:
                return self._reject(line_no, NON_NUMERIC_RATING, raw)
        reason = _bad_key(user) or _bad_key(item)
        if reason:
            return self._reject(line_no, reason, raw)
        self._count("rows_read")
        self._count("rows_parsed")
        return [(user, (timestamp, self.file_ordinal, line_no, (item,)))]

    def _keys(self, line_no: int, raw: bytes, fields: list[str]) -> list[Parsed] | Rejection:
        if self.input_format == "pairs" and len(fields) != 2:
            return self._reject(line_no, WRONG_COLUMN_COUNT, raw)
        if self.input_format == "sequences" and len(fields) < 2:
            return self._reject(line_no, NO_ITEMS, raw)
        for key in fields:
            reason = _bad_key(key)
            if reason:
                return self._reject(line_no, reason, raw)
        items = tuple(fields[1:])
        self._count("rows_read", len(items))
        self._count("rows_parsed", len(items))
        return [(fields[0], (0, self.file_ordinal, line_no, items))]


def iter_lines(stream: BinaryIO, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[bytes | None, int]]:
    """Streams ``(line_without_newline, bytes_consumed_so_far)`` from a binary stream in 1 MiB chunks.

    A line longer than ``max_line_bytes`` is yielded as None and never held in memory beyond one chunk past the
    limit, so a multi-GB file without newlines cannot exhaust a worker.
    """
    carry = b""
    skipping = False
    consumed = 0
    while True:
        chunk = stream.read(_READ_CHUNK)
        if not chunk:
            break
        consumed += len(chunk)
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
        yield carry, consumed


def vocabulary_order(keys: Any) -> list[str]:
    """Distinct keys in vocabulary order: ascending numeric if every key is an integer, else lexicographic.

    Ties between different spellings of one integer ("7", "07") are broken by the string, so the order is total.
    """
    keys = set(keys)
    if keys and all(_INTEGER.fullmatch(key) for key in keys):
        return sorted(keys, key=lambda key: (int(key), key))
    return sorted(keys)
