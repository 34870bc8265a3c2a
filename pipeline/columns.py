"""The columns of a line: its delimiter (detected per file), its fields (CSV quoting for one-character
delimiters), and the ``interactions`` layout (``--columns``, a header naming the columns, or the position of the
values). Pure; `pipeline.formats.LineParser` applies these to a file's first lines (and re-exports them).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence

from pipeline.fields import IGNORE, ITEM, RATING, TIMESTAMP, USER, parse_number

_HEADER_NAMES = {
    USER: {"user", "userid", "user_id", "uid", "users", "customer_id", "customerid", "visitorid", "visitor_id"},
    ITEM: {"item", "itemid", "item_id", "iid", "items", "movieid", "movie_id", "productid", "product_id", "asin"},
    TIMESTAMP: {"timestamp", "ts", "time", "unix_ts", "unixtime", "unix_time", "unixreviewtime", "datetime"},
    RATING: {"rating", "ratings", "score", "stars", "overall"},
}


def detect_delimiter(line: str) -> str | None:
    """Tab, then ``::``, then comma, else None (= split on runs of whitespace)."""
    if "\t" in line:
        return "\t"
    if "::" in line:
        return "::"
    if "," in line:
        return ","
    return None


def detect_key_delimiter(line: str) -> str | None:
    """For ``sequences``/``pairs``: ``::``, then comma, else None; whitespace always separates tokens as well."""
    if "::" in line:
        return "::"
    if "," in line:
        return ","
    return None


def split_fields(line: str, delimiter: str | None) -> list[str] | None:
    """The stripped fields of a line; None when its CSV quoting is broken (only one-character delimiters quote)."""
    if delimiter is None:
        return line.split()
    if len(delimiter) == 1 and '"' in line:  # the csv module only for quoted lines: it is ~3x slower than split
        try:
            fields = next(csv.reader([line], delimiter=delimiter, strict=True, skipinitialspace=True))
        except csv.Error:
            return None
        return [field.strip() for field in fields]
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
