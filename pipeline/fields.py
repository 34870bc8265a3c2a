"""The text of one field: numbers (timestamps, ratings) and keys (users, items), with no Beam and no state.

- Numbers are ASCII decimal/float text that is a finite double (`parse_number`); ``1e400`` or a 5,000-digit integer
  is out of range, decided before any ``int()`` (which raises beyond 4,300 digits inside a worker).
- A key that is an integer written with a zero fraction is that integer (`normalize_key`: ``49.0`` -> ``49``);
  integer keys are ordered numerically in the vocabularies (`is_integer_key`).
- "Plain" fields (`PLAIN_INTEGER`, `PLAIN_NUMBER`, `PLAIN_KEY_CHARS`) are regex fragments for text these functions
  accept as written (a key unchanged, an integer as ``int(text)``): the fast path of
  `pipeline.formats.LineParser.parse_batch` matches them instead of calling the functions.

`pipeline.formats` parses lines with these (and re-exports them).
"""

from __future__ import annotations

import math
import re
import sys

# ASCII-only numbers: `float()`/`int()` also accept "1_000", " 12 ", "inf" and non-ASCII digits, none of which is a
# timestamp a user meant.
# re.ASCII: `\d` would also match other scripts' digits ("\u0663"), which int() and float() accept as well.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_ZERO_FRACTION = re.compile(r"([+-]?\d+)\.0*", re.ASCII)
# The largest finite double has 309 integer digits: an integer text longer than this is out of range before any
# int() conversion (which raises beyond 4,300 digits) is attempted.
_MAX_FINITE_DIGITS = len(str(int(sys.float_info.max)))
# The columns of an ``interactions`` layout (`pipeline.formats`); ``_`` marks a column to ignore.
USER, ITEM, TIMESTAMP, RATING, IGNORE = "user", "item", "timestamp", "rating", "_"
# Keys are vocabulary lines (items.txt, the serving lookup table): an id, not a document.
MAX_KEY_CHARS = 1024

# "Plain" fields: regex fragments (for str patterns, one character = one ASCII byte) matching only text that the
# functions here pass through unchanged and accept, so that a line made of plain fields can skip them
# (`pipeline.formats.LineParser.parse_batch`). Narrower than what they accept, never wider:
# - a plain integer is ASCII digits with an optional sign, at most 18 digits: `parse_number` returns ``int(text)``
#   for it (far fewer than `_MAX_FINITE_DIGITS` characters, so always in range);
# - a plain number (a rating) is an integer or a decimal of at most 15+15 digits, without exponent: always a finite
#   double, so `parse_number` is not None;
# - a plain key character is printable ASCII other than space, ``"`` (CSV quoting) and ``.`` (`normalize_key` then
#   returns the key as it is); a key of 1 to `MAX_KEY_CHARS` of them is a valid, normalised key.
PLAIN_INTEGER = r"[+-]?[0-9]{1,18}"
PLAIN_NUMBER = r"[+-]?(?:[0-9]{1,15}(?:\.[0-9]{0,15})?|\.[0-9]{1,15})"
PLAIN_NUMBER_CHARS = frozenset("0123456789+-.")  # every character a plain integer or number can hold
PLAIN_KEY_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', "."}


def is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None


def is_integer_key(key: str) -> bool:
    """An ASCII decimal integer (optional sign): such keys are ordered numerically in the vocabulary."""
    return _INTEGER.fullmatch(key) is not None


def parse_number(text: str) -> float | int | None:
    """An exact int for integer text (unix seconds stay exact), else a finite float, else None.

    None for non-numbers and for numbers beyond the double range (``1e400``, a 5,000-digit integer): `is_number`
    tells the two apart.
    """
    if _INTEGER.fullmatch(text):
        if len(text) < _MAX_FINITE_DIGITS:  # the common case, fast: fewer than 309 digits is always finite
            return int(text)
        digits = text.lstrip("+-").lstrip("0") or "0"  # int() counts leading zeros against its digit limit too
        if len(digits) > _MAX_FINITE_DIGITS:
            return None
        value = -int(digits) if text.startswith("-") else int(digits)
        return value if abs(value) <= sys.float_info.max else None
    if _NUMBER.fullmatch(text):
        value = float(text)
        return value if math.isfinite(value) else None
    return None


def normalize_key(key: str) -> str:
    """``49.0`` -> ``49`` (an integer with a zero fraction is that integer); every other key as it is."""
    if "." not in key:  # most keys: skip the regex
        return key
    match = _ZERO_FRACTION.fullmatch(key)
    return match.group(1) if match else key
