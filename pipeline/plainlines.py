"""The fast path of `pipeline.formats.LineParser.parse_batch`: which lines are *plain*, as one regular expression
per settled parser, and a block of lines parsed with it.

A plain line is one on which `pipeline.formats.LineParser.parse` would do nothing but split it into its fields
(`plain_line_pattern` says exactly which); every other line still goes through ``parse``, so a batch's result is
``parse``'s by construction (`tests/test_parse_batch.py`).
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.fields import (
    IGNORE,
    ITEM,
    MAX_KEY_CHARS,
    PLAIN_INTEGER,
    PLAIN_KEY_CHARS,
    PLAIN_NUMBER,
    PLAIN_NUMBER_CHARS,
    RATING,
    TIMESTAMP,
    USER,
)

# `plain_line_pattern`: the characters a plain line may hold (printable ASCII and tab: valid UTF-8, no NUL, no line
# break, no BOM), and the blanks among them (the only whitespace `str.split`/`str.strip` can meet in such a line).
_LINE_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F)) | {"\t"}
_BLANKS = frozenset(" \t")
# Lines per block of `pipeline.formats.LineParser.parse_batch` (one join, decode and findall each): enough to
# amortise the calls per block, few enough for the block and its tuples to stay in cache (1M lines in batches of
# 65,536: 0.74 us a line with blocks of 1,024 lines, 0.97 with 8,192, 1.24 with 32,768).
BLOCK_LINES = 1024


def _char_class(chars: frozenset[str] | set[str]) -> str:
    return "[" + "".join(re.escape(c) for c in sorted(chars)) + "]"


@functools.lru_cache(maxsize=64)
def plain_line_pattern(
    input_format: str, delimiter: str | None, delimiter_fixed: bool, layout: tuple[str, ...] | None
) -> tuple[re.Pattern[str], tuple[int, ...]] | None:
    """The pattern of `LineParser.parse_batch`'s fast path for a parser settled on this delimiter and layout, or
    None when there is none (a delimiter that is not printable ASCII or tab, holds ``"``, or for ``interactions``
    may occur inside a number).

    ``pattern.findall`` over a block of ``\\n``-terminated lines (decoded as Latin-1) gives one tuple per line. Its
    last element is ``"\\n"`` when the line is not plain: such a line must go through `LineParser.parse`. For a plain
    line the elements at the returned indices are the user, the item (or, for ``sequences``, the text holding the
    items: `split_items`) and, for ``interactions``, the timestamp text (a `fields.PLAIN_INTEGER`).

    A plain line is one on which `LineParser.parse` (once the delimiter and layout are settled) does nothing but
    split it into its fields: printable ASCII and tabs only (so valid UTF-8, no NUL, BOM or line-break character, not
    empty); no ``"`` (no CSV quoting); exactly the layout's fields, separated as `split_fields` splits them and
    padded only with blanks it strips; keys of `fields.PLAIN_KEY_CHARS` without the delimiter's characters (printable,
    1 to `MAX_KEY_CHARS` long, no ``.`` to normalise); a `fields.PLAIN_INTEGER` timestamp and a
    `fields.PLAIN_NUMBER` rating. Since neither keys, numbers nor padding can hold a character of the delimiter, the
    delimiters the pattern sees are the ones `str.split` splits at. The pattern is narrower than `parse` where
    that is simpler (keys with spaces or dots, decimal timestamps): those lines merely take the slow path.
    Every sub-pattern next to another one shares no character with it, so a failing line costs linear time.
    """
    if delimiter is not None and (not delimiter or not set(delimiter) <= _LINE_CHARS or '"' in delimiter):
        return None
    banned = frozenset(delimiter or "")
    key = _char_class(PLAIN_KEY_CHARS - banned) + f"{{1,{MAX_KEY_CHARS}}}"
    blanks = _char_class(_BLANKS) + "*"
    pad = _char_class(_BLANKS - banned) + "*" if _BLANKS - banned else ""
    if input_format == "interactions":
        if layout is None or banned & PLAIN_NUMBER_CHARS:
            return None
        if delimiter is None:  # any text but a blank (a separator) or CSV quoting
            ignored = _char_class(_LINE_CHARS - _BLANKS - {'"'}) + "+"
        else:  # any text but the delimiter or CSV quoting, blanks included (so no padding around it)
            ignored = _char_class(_LINE_CHARS - banned - {'"'}) + "*"
        fields, groups = [], []
        for name in layout:
            if name == IGNORE:
                fields.append(ignored)
                continue
            if name == RATING:
                field = f"(?:{PLAIN_NUMBER})"
            else:
                groups.append(name)
                field = f"({PLAIN_INTEGER if name == TIMESTAMP else key})"
            fields.append(field if delimiter is None else pad + field + pad)
        if delimiter is None:
            body = blanks + "[ \\t]+".join(fields) + blanks
        else:
            body = re.escape(delimiter).join(fields)
        order = tuple(groups.index(name) for name in (USER, ITEM, TIMESTAMP))
    else:
        # A plain line: the user key, then (separator, item key) once for pairs, once or more for sequences, then
        # its end; `trail` is what may follow a key before the next separator.
        if delimiter is None:  # split(): any blank run separates, none is left around the tokens
            lead, separator, trail, end = blanks, "[ \\t]+", "", blanks
        elif not delimiter_fixed:  # split at the delimiter, then at blanks, with no empty field between delimiters
            lead, separator, trail, end = blanks, f"(?:{blanks}{re.escape(delimiter)}{blanks}|[ \\t]+)", "", blanks
        else:  # split at the delimiter only, each field stripped
            lead, separator, trail, end = pad, re.escape(delimiter) + pad, pad, ""
        if input_format == "pairs":
            body = f"{lead}({key}){trail}{separator}({key}){trail}{end}"
        else:  # the text of the items, from the first separator on: `split_items`
            body = f"{lead}({key}){trail}((?:{separator}{key}{trail})+){end}"
        order = (0, 1)
    return re.compile(f"(?:{body}\\n|[^\\n]*(\\n))"), order


def split_items(texts: Sequence[str], delimiter: str | None) -> list[tuple[str, ...]]:
    """The item keys of plain ``sequences`` lines from the text of their items (`plain_line_pattern`): the keys hold
    no blank and no character of the delimiter, so blanks and delimiters alike just separate them."""
    if delimiter is not None:
        texts = list(map(operator.methodcaller("replace", delimiter, " "), texts))
    return list(map(tuple, map(str.split, texts)))


def parse_block(
    batch: Any,
    block: Sequence[tuple[int, bytes | None]],
    pattern: re.Pattern[str],
    order: tuple[int, ...],
    input_format: str,
    delimiter: str | None,
    count: Callable[[str, int], None],
    parse_into: Callable[[Any, int, bytes | None], None],
) -> None:
    """One block of lines of a settled parser (`pipeline.formats.LineParser.parse_batch`) into ``batch`` (a
    `pipeline.formats.ParsedBatch`): plain lines column-wise from one findall of `plain_line_pattern`'s
    ``pattern`` and ``order``, counted with ``count(name, n)``; the others, in line order, by ``parse_into(batch,
    line_no, raw)`` (the parser's own `parse`)."""
    line_nos, raws = zip(*block, strict=True)
    if set(map(type, raws)) != {bytes}:  # None (too long) and the unterminated last line: `parse` only
        raws = tuple(raw if type(raw) is bytes else b"" for raw in raws)
    # Latin-1 decodes any bytes one to one; a plain line is ASCII, so its text is also its UTF-8 decoding.
    found = pattern.findall((b"\n".join(raws) + b"\n").decode("latin-1"))
    if len(found) != len(block):  # a raw line holding b"\n" (not from `iter_lines`): no alignment to trust
        for line_no, raw in block:
            parse_into(batch, line_no, raw)
        return
    columns = tuple(zip(*found, strict=True))
    slow = columns[-1]  # "\n" for a line that is not plain
    users, items = columns[order[0]], columns[order[1]]
    times = columns[order[2]] if input_format == "interactions" else None
    begin = 0
    while begin < len(block):
        try:
            end = slow.index("\n", begin)
        except ValueError:
            end = len(block)
        if end > begin:
            batch.users.extend(users[begin:end])
            batch.line_nos.extend(line_nos[begin:end])
            if times is not None:
                batch.items.extend(zip(items[begin:end]))
                batch.times.extend(map(int, times[begin:end]))
                rows = end - begin
            else:
                if input_format == "pairs":
                    keys = list(zip(items[begin:end]))
                else:
                    keys = split_items(items[begin:end], delimiter)
                batch.items.extend(keys)
                batch.times.extend([0] * (end - begin))
                rows = sum(map(len, keys))
            count("lines_read", end - begin)
            count("rows_read", rows)
            count("rows_parsed", rows)
        if end < len(block):
            parse_into(batch, *block[end])
        begin = end + 1
