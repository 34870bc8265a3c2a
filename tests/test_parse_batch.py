"""`formats.LineParser.parse_batch` gives exactly what `parse` gives line by line, and its fast path is taken.

The equivalence is checked on hand-written files (every rejection reason, every header, delimiter and layout case
of the `pipeline.formats` docstring) and on seeded random files mixing plain and broken lines, for the three formats,
with and without an explicit delimiter or columns, in one batch, in batches of random sizes and mixed with `parse`.
The fast path is checked to be taken (lines counted through `parse`) and to stay linear on hostile long lines.
"""

from __future__ import annotations

import random
import re
import time

import pytest

from pipeline import fields, formats

MAX_LINE_BYTES = 2_000


def split_lines(data: bytes, max_line_bytes: int = MAX_LINE_BYTES) -> list[tuple[int, bytes | None]]:
    """``(line_no, raw)`` as `pipeline.reading.iter_lines` yields them: ``\\n``, ``\\r\\n`` or ``\\r`` end a line, a
    line over the limit is None, a last line without ending an `formats.UnterminatedLine`."""
    pieces = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    last = pieces.pop()
    lines: list[bytes | None] = [None if len(raw) > max_line_bytes else raw for raw in pieces]
    if last:
        lines.append(None if len(last) > max_line_bytes else formats.UnterminatedLine(last))
    return list(enumerate(lines, 1))


def typed(rows: list) -> list:
    """Rows with the type of each timestamp: ``1 == 1.0`` would hide an int turned float."""
    return [(user, (type(value[0]).__name__, *value)) for user, value in rows]


def parse_each(parser: formats.LineParser, lines: list) -> tuple[list, list]:
    rows, rejections = [], []
    for line_no, raw in lines:
        out = parser.parse(line_no, raw)
        if isinstance(out, formats.Rejection):
            rejections.append(out)
        else:
            rows.extend(out)
    return rows, rejections


def parse_batches(parser: formats.LineParser, lines: list, sizes: list[int]) -> tuple[list, list]:
    """``parse_batch`` on runs of ``sizes`` lines; a negative size ``-k``: the next ``k`` lines through `parse`."""
    rows, rejections = [], []
    start = 0
    for size in sizes:
        if size < 0:
            more_rows, more_rejections = parse_each(parser, lines[start : start - size])
            rows.extend(more_rows)
            rejections.extend(more_rejections)
            start -= size
            continue
        batch = parser.parse_batch(lines[start : start + size])
        start += size
        assert len(batch.users) == len(batch.items) == len(batch.times) == len(batch.line_nos)
        rows.extend(
            (user, (timestamp, parser.file_ordinal, line_no, items))
            for user, items, timestamp, line_no in zip(
                batch.users, batch.items, batch.times, batch.line_nos, strict=True
            )
        )
        rejections.extend(batch.rejections)
    assert start >= len(lines)
    return rows, rejections


def random_sizes(rng: random.Random, n: int, mixed: bool = False) -> list[int]:
    """Batch sizes covering ``n`` lines; ``mixed``: some runs through `parse` instead (negative sizes)."""
    sizes: list[int] = []
    while sum(map(abs, sizes)) < n:
        size = rng.choice([0, 1, 2, 3, 7, 50, n])
        sizes.append(-size if mixed and rng.random() < 0.5 else size)
    return sizes


def check_same(fmt: str, data: bytes, rng: random.Random, **kwargs) -> dict[str, int]:
    """Parses ``data`` per line and in batches (one, random sizes, single lines, batches mixed with `parse`) on
    fresh parsers: all the same."""
    lines = split_lines(data)
    reference = formats.LineParser(fmt, path="f.tsv", file_ordinal=3, **kwargs)
    rows, rejections = parse_each(reference, lines)
    for sizes in ([len(lines)], random_sizes(rng, len(lines)), [1] * len(lines), random_sizes(rng, len(lines), True)):
        parser = formats.LineParser(fmt, path="f.tsv", file_ordinal=3, **kwargs)
        batch_rows, batch_rejections = parse_batches(parser, lines, sizes)
        context = f"{fmt} {kwargs} {data[:300]!r} batches {sizes[:10]}"
        assert typed(batch_rows) == typed(rows), context
        assert [r.to_line() for r in batch_rejections] == [r.to_line() for r in rejections], context
        assert batch_rejections == rejections, context
        assert parser.counts == reference.counts, context
        assert (parser.header, parser.layout, parser.delimiter) == (
            reference.header,
            reference.layout,
            reference.delimiter,
        ), context
    return reference.counts


# --- hand-written files ----------------------------------------------------------------------------------------

LINE_BREAKS = [b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e", "\x85".encode(), "\u2028".encode(), "\u2029".encode()]

INTERACTION_FILES = [
    # headers: named (sets the layout), with a BOM, without names (layout from the next line), quoted data
    b"userId,movieId,rating,timestamp\r\n7,3,4.5,100\r\n7,4,x,101\r\n7,5,4,102\n",
    b"\xef\xbb\xbfuser\titem\tts\n1\t2\t3\n4\t5\t6\n",
    b"\xef\xbb\xbf1\t2\t3\n4\t5\t6\n",
    b"a,b,c\n1,2,3\n4,5,6\n",
    b"a,b,c,d\n1,2,3,4\n1,2,4,3\n",
    b"reviewerID,asin,overall,unixReviewTime,summary\nA1,B2,5.0,1400000000,great\nA1,B3,4,1400000001,ok stuff\n",
    b'"1","2","100"\n1,2,3\n"4",5,6\n',
    b'user,item,timestamp\n"a,b",c,1\n"open,c,1\n',
    b"1,2,abc\n1,2,3\n4,5,6\n",
    b"\n  \n\t\n1,2,3\n4,5,6\n",
    b"1,2,3,4,5\n1,2,3\n4,5,6\n1,2,3,4,5\n",  # no layout from a 5-column first line: the next lines set it
    # positional layouts: MovieLens order when the 4th value is larger than the 3rd on the first data line
    b"1\t10\t5\t881250949\n2\t20\t3\t881250950\n2\t20\t3.5\t881250951\n",
    b"1::10::5::978300760\n2::20::3::978300761\n2:x::20::3::978300761\n2::20:::3::978300761\n",
    b"1,10,978300760,5\n2,20,978300761,4.5\n2,20,978300761,.5\n2,20,978300761,5.\n2,20,978300761,1e400\n",
    b"1 10 978300760\n2\t20  978300761\n  3 30 978300762  \n4,5 6 7\n4:5 6 7\n",
    # padding, normalised keys, numbers
    b"1,2,3\n 1 , 2 , 3 \n1\t,2,3\n1,2 ,3\t\n49.0,49.,1\n049,+7,1\n1,2,+5\n1,2,-0\n1,2,007\n",
    b"1,2,3\n1,2,123456789012345678\n1,2,1234567890123456789\n1,2," + b"9" * 400 + b"\n1,2," + b"9" * 5000 + b"\n",
    b"1,2,3\n1,2,1.5\n1,2,1e9\n1,2,nan\n1,2,inf\n1,2,0x10\n1,2,1_000\n1,2,\xd9\xa3\n1,2,\n1,2, \n",
    # every rejection reason
    b"1,2,3\n1,2\n1,2,3,4,5\n,2,3\n1,,3\n \t,2,3\n1,2,x\n1,2,1e400\n",
    b"1,2,3,4\n1,2,3,x\n1,2,3,1e400\n1,2,3,\n",
    b"1,2,3\n" + b"k" * 1024 + b",2,3\n" + b"k" * 1025 + b",2,3\n1," + b"k" * 1025 + b",3\n",
    b"1,2,3\n1\xff,2,3\n1,2,3\xc3\n\xef\xbb\xbf1,2,3\n1\x00,2,3\n\x00\x00\x00\n1\x01,2,3\n1\x7f,2,3\n1\x1f,2,3\n",
    b"1,2,3\n" + b"\n".join(b"1" + br + b",2,3" for br in LINE_BREAKS) + b"\n",
    b"1,2,3\n\xc2\xa0,2,3\n\xc3\xa9,2,3\n1\xe2\x80\x8b,2,3\n",  # NBSP, an accent, a zero-width space
    b"1,2,3\n" + b"x" * (MAX_LINE_BYTES + 1) + b"\n4,5,6\n",
    b"1,2,3\n4,5,6",  # the unterminated last line
    b"1,2,3\n4,5,6\r\n7,8,9\r10,11,12\n",
    b'1,2,3\n"1",2,3\n1,"2",3\n1,2,"3"\n"1,2,3\n1,2,3"\n1",2,3\n1,2,"3"x\n',
    b"1\t2\t3\n1\t2\t3\t\n\t1\t2\t3\n1\t2\t3\t4\t5\n1\t2 2\t3\n1 1\t2\t3\n1\t\t3\n",
    # an ignored column (named by the header) holding what `parse` rejects or quotes
    b"user_id,asin,overall,unixReviewTime,summary\nA1,B2,5,1400000000,fine\n"
    + b"".join(b"A1,B2,5,1400000000,x" + bad + b"y\n" for bad in [b"\x00", b"\x7f", b"\x01", b"\xff", b'"', b'"a"b'])
    + b"".join(b"A1,B2,5,1400000000,x" + br + b"y\n" for br in LINE_BREAKS)
    + b'A1,B2,5,1400000000,\nA1,B2,5,1400000000, \t\nA1,B2,5,1400000000,"a,b"\nA1,B2,5,1400000000,"a"b\n',
    # bytes of a non-ASCII delimiter alone (not UTF-8), for the explicit delimiter \u00a6
    b"1\xc2\xa62\xc2\xa63\n1\xa62\xa63\n1\xc2\xa62\xa63\n",
    # a quote as the explicit delimiter
    b'1"2"3\n1""2"3\n"1"2"3"\n1"2"3"\n 1 "2"3\n',
]

KEY_FILES = [
    b"u a b c\nu2 x\nu3\n\n  \nu4\ta b\tc\n u5  x  y \n",
    b"u,a,b\nu2, x ,y\nu3,,b\nu4, ,b\n,a\nu5,a,\nu6 a,b c\n",
    b"u::a::b\nu2::x\nu3:::y\nu4 :: y\nu5::::y\nu6: y\n",
    b"\xef\xbb\xbfu a b\nu2 49.0 49. 049\nu3 a.b c\n",
    b"u a\nu\xff a\nu\x00 a\nu\x01 a\nu\x1f a\n" + b"\n".join(b"u" + br + b"a b" for br in LINE_BREAKS) + b"\n",
    b"u a\nu " + b"k" * 1024 + b"\nu " + b"k" * 1025 + b"\n" + b"k" * 1025 + b" a\n",
    b'u a\n"u" a\nu,"a"\n"u,a" b\n',
    b"u a b\n" + b"y" * (MAX_LINE_BYTES + 1) + b"\nv c d",
    b"u a b\r\nv c\rw d e\n",
    b"u\ta\tb\nu2\tx y\nu3\t\tz\nu4 \t x\n",
    b"u\xc2\xa6a\xc2\xa6b\nu\xa6a\xa6b\n",
    b'u"a"b\nu""a\n"u"a"\n',
]

FILES = [("interactions", data) for data in INTERACTION_FILES] + [
    (fmt, data) for fmt in ("sequences", "pairs") for data in KEY_FILES
]
# explicit delimiters (--delimiter; None = whitespace) and columns (--columns), sane and odd
OPTIONS: list[dict] = [
    {},
    {"delimiter": "\t", "delimiter_fixed": True},
    {"delimiter": ",", "delimiter_fixed": True},
    {"delimiter": "::", "delimiter_fixed": True},
    {"delimiter": ";", "delimiter_fixed": True},
    {"delimiter": " ", "delimiter_fixed": True},
    {"delimiter": None, "delimiter_fixed": True},
    {"delimiter": "|", "delimiter_fixed": True},
    {"delimiter": ", ", "delimiter_fixed": True},
    {"delimiter": "1", "delimiter_fixed": True},  # a digit: interactions get no fast path
    {"delimiter": '"', "delimiter_fixed": True},  # the quote: no fast path
    {"delimiter": "\u00a6", "delimiter_fixed": True},  # not ASCII: no fast path
    {"delimiter": ".", "delimiter_fixed": True},
    {"columns": ("user", "item", "timestamp")},
    {"columns": ("item", "user", "_", "timestamp")},
    {"columns": ("timestamp", "rating", "user", "item")},
    {"columns": ("user", "_", "item", "rating", "timestamp", "_")},
    {"columns": ("user", "item", "rating", "timestamp"), "delimiter": ",", "delimiter_fixed": True},
]


def options_for(fmt: str) -> list[dict]:
    return [kwargs for kwargs in OPTIONS if fmt == "interactions" or "columns" not in kwargs]


@pytest.mark.parametrize(("fmt", "data"), FILES)
def test_hand_written_files_parse_the_same_in_batches(fmt: str, data: bytes) -> None:
    rng = random.Random(data)
    for kwargs in options_for(fmt):
        check_same(fmt, data, rng, **kwargs)


# --- random files ----------------------------------------------------------------------------------------------

PLAIN_KEYS = ["1", "2", "10", "u7", "B00X-7", "a_b", "+7", "-1", "049", "7" * 18, "a\\b~"]
ODD_KEYS = [
    *["k:1", "x,y", "a|b", "q;r", "a\u00a6b"],  # plain unless the separator is in them
    *["49.0", "49.", "49.000", "a.b", "a b", "", " ", "k" * 1024, "k" * 1025, "\u00e9", "\u2028", "\x00", "\x0b"],
    *["\x1f", "\x7f", "\x01", '"q"', '"a,b"', '"open', "::", ":", ",", "\t", "\ufeff", "\u00a0", "\u00a6", "1\u00a62"],
]
PLAIN_NUMBERS = ["0", "5", "100", "978300760", "-0", "+5", "007", "1" * 18, "-" + "9" * 18]
ODD_NUMBERS = ["1.5", ".5", "5.", "1e3", "1e400", "nan", "inf", "0x10", "1_000", "\u0663", "1" * 19, "9" * 400, ""]
PLAIN_RATINGS = ["1", "4.5", "5.", ".5", "-1", "+0.25", "1" * 15 + "." + "1" * 15]
SEPARATORS = ["\t", ",", "::", " ", "  ", " \t", ";", "|", ", ", " , ", "\t ", " :: ", ",,", "\u00a6", "1", "."]


def pick(rng: random.Random, plain: list[str], odd: list[str]) -> str:
    draw = rng.random()
    if draw < 0.02:  # any field anywhere: a key as a number, a number as a key
        return rng.choice(PLAIN_KEYS + ODD_KEYS + PLAIN_NUMBERS + ODD_NUMBERS + PLAIN_RATINGS)
    return rng.choice(odd) if draw < 0.1 else rng.choice(plain)


def random_field(rng: random.Random, column: str) -> str:
    if column in ("user", "item"):
        return pick(rng, PLAIN_KEYS, ODD_KEYS)
    if column == "timestamp":
        return pick(rng, PLAIN_NUMBERS, ODD_NUMBERS)
    if column == "rating":
        return pick(rng, PLAIN_RATINGS, ODD_NUMBERS)
    return pick(rng, ["x", "some text", "", "1.5", "a;b|c"], ODD_KEYS)  # an ignored column


def random_file(rng: random.Random, fmt: str, separator: str, columns: tuple[str, ...] | None) -> bytes:
    """Mostly plain rows with the file's separator (and columns), some odd fields, separators and whole lines."""
    if columns is None:
        columns = rng.choice([("user", "item", "timestamp")] * 3 + [("user", "item", "timestamp", "rating")] * 2)
        columns += ("_",) if rng.random() < 0.1 else ()  # five columns: no positional layout
    lines: list[bytes] = []
    if rng.random() < 0.2:
        header = rng.choice(["user,item,timestamp", "userId\tmovieId\trating\ttimestamp", "a b c", "\ufeffu i t"])
        lines.append(header.encode())
    for _ in range(rng.randrange(0, 60)):
        kind = rng.random()
        if kind < 0.05:
            lines.append(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12))))
            continue
        if kind < 0.08:
            lines.append(rng.choice([b"", b" ", b"\t", b"x" * (MAX_LINE_BYTES + 5)]))
            continue
        if fmt == "interactions":
            row = [random_field(rng, column) for column in columns]
            if rng.random() < 0.05:
                row = row[: rng.randrange(len(row) + 2)] or [""]
        else:
            count = rng.randrange(1, 6) if fmt == "sequences" or rng.random() < 0.1 else 2
            row = [pick(rng, PLAIN_KEYS, ODD_KEYS) for _ in range(count)]
        line_separator = separator if rng.random() < 0.9 else rng.choice(SEPARATORS)
        line = line_separator.join(row)
        if rng.random() < 0.05:
            line = rng.choice([" ", "\t", "  "]) + line + rng.choice(["", " ", "\t"])
        lines.append(line.encode())
    ending = rng.choice([b"\n", b"\r\n", b"\r"])
    return ending.join(lines) + (ending if rng.random() < 0.8 else b"")


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_random_files_parse_the_same_in_batches(fmt: str) -> None:
    rng = random.Random(f"parse_batch {fmt}")
    totals: dict[str, int] = {}
    for _ in range(150):
        separator = rng.choice(SEPARATORS[:4] * 3 + SEPARATORS)
        kwargs = rng.choice(options_for(fmt)[:1] * 4 + options_for(fmt))
        if kwargs.get("delimiter_fixed") and rng.random() < 0.7 and kwargs["delimiter"] is not None:
            separator = kwargs["delimiter"]  # mostly the data the explicit delimiter is meant for
        if "columns" in kwargs and rng.random() < 0.5:
            kwargs = {**kwargs, "delimiter": separator, "delimiter_fixed": True}
        counts = check_same(fmt, random_file(rng, fmt, separator, kwargs.get("columns")), rng, **kwargs)
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
    # the mix exercised both paths: many parsed rows and many kinds of rejection
    assert totals["rows_parsed"] > 1000
    assert sum(1 for key in totals if key.startswith("rejected_")) >= (8 if fmt == "interactions" else 6)


# --- the fast path is taken ------------------------------------------------------------------------------------


def count_parse_calls(parser: formats.LineParser) -> list[int]:
    """Wraps ``parser.parse`` (an instance attribute shadows the method) to count the lines that take it."""
    calls: list[int] = []
    parse = parser.parse

    def counting(line_no: int, raw: bytes | None) -> list | formats.Rejection:
        calls.append(line_no)
        return parse(line_no, raw)

    parser.parse = counting  # type: ignore[method-assign]
    return calls


SEMI = {"delimiter": ";", "delimiter_fixed": True}


@pytest.mark.parametrize(
    ("fmt", "header", "row", "kwargs"),
    [
        ("interactions", "user\titem\ttimestamp", "u{0}\ti{1}\t{2}", {}),
        ("interactions", "", "{0}\t{1}\t5\t88125{2}", {}),  # u.data: user, item, rating, timestamp
        ("interactions", "", "{0}::{1}::4.5::97830{2}", {}),
        ("interactions", "userId,movieId,rating,timestamp", " {0} , {1} ,3.5, {2} ", {}),
        ("interactions", "who,what,when", "{0},{1},{2}", {}),  # a header naming no column: line 2 sets the layout
        ("interactions", "", " {0} {1}  {2}", {}),  # whitespace: blank runs separate
        ("interactions", "", "{0};x y;{1};4;{2}", {"columns": ("user", "_", "item", "rating", "timestamp"), **SEMI}),
        ("interactions", "", "{0}|{1}|{2}", {"delimiter": "|", "delimiter_fixed": True}),
        ("sequences", "", "u{0} i{1} i{2} i3", {}),
        ("sequences", "", "u{0},i{1}, i{2} i3", {}),
        ("sequences", "", "u{0} ; i{1};i{2}", SEMI),
        ("pairs", "", "u{0}\ti{1}", {}),
        ("pairs", "", "u{0}::i{1}", {}),
        ("pairs", "", "u{0}\ti{1}", {"delimiter": "\t", "delimiter_fixed": True}),
    ],
)
def test_plain_lines_take_the_fast_path(fmt: str, header: str, row: str, kwargs: dict) -> None:
    rows = [row.format(n % 97, n % 1013, 1_000_000 + n) for n in range(5000)]
    broken = {100: "1,2", 2500: "x\x00y", 4999: "\u00e9 \u00e9 1"}
    for index, line in broken.items():
        rows[index] = line
    data = "\n".join(([header] if header else []) + rows + [""]).encode()
    lines = split_lines(data)
    reference = formats.LineParser(fmt, **kwargs)
    expected_rows, expected_rejections = parse_each(reference, lines)
    parser = formats.LineParser(fmt, **kwargs)
    calls = count_parse_calls(parser)
    got_rows, got_rejections = parse_batches(parser, lines, [1000] * 6)
    assert typed(got_rows) == typed(expected_rows) and got_rejections == expected_rejections
    assert parser.counts == reference.counts and parser.counts["rows_parsed"] > 0
    settling = 2 if header else 1  # the lines that settle the delimiter and layout go through `parse`
    assert len(calls) <= settling + len(broken), calls[:20]  # and then only the broken lines


def test_a_file_with_no_plain_line_still_parses_per_line() -> None:
    lines = split_lines("".join(f'"{n}",2,3\n' for n in range(50)).encode())
    parser = formats.LineParser("interactions")
    calls = count_parse_calls(parser)
    batch = parser.parse_batch(lines)
    assert len(calls) == 50 and len(batch.users) == 50 and batch.users[:2] == ["0", "1"]


@pytest.mark.parametrize(
    ("fmt", "kwargs", "prefix"),
    [
        ("interactions", {}, "1,2,3\n1,2"),
        ("interactions", {}, "1 2 3\n1 2"),
        ("interactions", {"columns": ("user", "_", "item", "timestamp")}, "1,x,2,3\n1,"),
        ("sequences", {}, "u,a\nu,a"),
        ("sequences", {"delimiter": ";", "delimiter_fixed": True}, "u;a\nu;a"),
        ("pairs", {}, "u::a\nu"),
    ],
)
def test_a_long_hostile_line_costs_linear_time(fmt: str, kwargs: dict, prefix: str) -> None:
    """Runs of blanks or key characters that end in a bad byte: a backtracking pattern would take minutes."""
    for filler in (" ", "\t", " \t", "k", "1", "k ", "1,"):
        raw = (prefix + filler * (200_000 // len(filler)) + "\x01\n").encode()
        parser = formats.LineParser(fmt, **kwargs)
        start = time.process_time()
        parser.parse_batch(split_lines(raw, max_line_bytes=1 << 20))
        assert time.process_time() - start < 1.0, (fmt, kwargs, filler)


# --- the plain field fragments ---------------------------------------------------------------------------------


def test_plain_fields_are_what_the_field_functions_pass_through() -> None:
    rng = random.Random(7)
    integer, number = re.compile(fields.PLAIN_INTEGER), re.compile(fields.PLAIN_NUMBER)
    for _ in range(3000):
        text = "".join(rng.choice("0123456789+-.e ") for _ in range(rng.randrange(1, 22)))
        if integer.fullmatch(text):
            assert type(fields.parse_number(text)) is int and fields.parse_number(text) == int(text)
        if number.fullmatch(text):
            assert fields.parse_number(text) is not None
        assert set(text) <= fields.PLAIN_NUMBER_CHARS or not (integer.fullmatch(text) or number.fullmatch(text))
    for text in ("9" * 18, "-" + "9" * 18, "1" * 15 + "." + "9" * 15, "." + "9" * 15):
        assert integer.fullmatch(text) or number.fullmatch(text)
        assert fields.parse_number(text) is not None
    for c in fields.PLAIN_KEY_CHARS:
        key = f"a{c}{c}1"
        assert fields.normalize_key(key) == key and key.isprintable() and key.strip() == key and key.isascii()


def test_a_raw_line_holding_a_newline_is_still_parsed_as_one_line() -> None:
    """Not from `iter_lines`, but a block's alignment of lines to matches must not shift because of it."""
    lines = [(1, b"1,2,3"), (2, b"4,5,6\n7,8,9"), (3, b"1,\n2,3"), (4, b"10,20,30"), (5, b"\n")]
    for fmt in formats.FORMATS:
        reference, parser = formats.LineParser(fmt), formats.LineParser(fmt)
        rows, rejections = parse_each(reference, lines)
        assert parse_batches(parser, lines, [5]) == (rows, rejections) and parser.counts == reference.counts


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_an_empty_file_and_empty_batches(fmt: str) -> None:
    check_same(fmt, b"", random.Random(5))
    parser = formats.LineParser(fmt)
    assert parser.parse_batch([]) == formats.ParsedBatch() and parser.counts["lines_read"] == 0
