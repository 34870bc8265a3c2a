"""The graph's stages (`pipeline.reading`, `.sequences`, `.vocabulary`, `.records`) on the Python direct runner
(`FnApiRunner`), checked with `assert_that`."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline import accounting, portable, reading, records, sequences, splits, vocabulary

RUNNER = "FnApiRunner"  # the Python direct runner; DirectRunner would first try to download Prism


def test_read_interactions_with_rejections(tmp_path) -> None:
    data = b"user\titem\trating\ttimestamp\n1\t10\t5\t300\n1\t11\t5\tnope\n\n2\t10\t1\n\xff\t1\t1\t1\n2\t12\t3\t100\n"
    path = tmp_path / "u.data"
    path.write_bytes(data)
    with TestPipeline(runner=RUNNER) as p:
        out = (
            p
            | beam.Create([(0, str(path), len(data))])
            | beam.ParDo(reading.ReadAndParse("interactions", None, False, None))
        )
        rows = portable.select(out, reading.ROWS, "Rows")
        assert_that(rows, equal_to([("1", (300, 0, 2, ("10",))), ("2", (100, 0, 7, ("12",)))]), label="rows")
        assert_that(
            portable.select(out, reading.REJECTED, "Rejected") | beam.Map(lambda line: line.split("\t", 3)[1:3]),
            equal_to([["3", "non_numeric_timestamp"], ["5", "wrong_column_count"], ["6", "non_utf8"]]),
            label="rejected",
        )
        assert_that(
            portable.select(out, reading.COUNTS, "Counts") | beam.Map(lambda c: {k: v for k, v in c.items() if v}),
            equal_to(
                [
                    {
                        "lines_read": 7,
                        "empty_lines": 1,
                        "header_lines": 1,
                        "rows_read": 5,
                        "rows_parsed": 2,
                        "rows_rejected": 3,
                        "rejected_non_numeric_timestamp": 1,
                        "rejected_wrong_column_count": 1,
                        "rejected_non_utf8": 1,
                    }
                ]
            ),
            label="counts",
        )


@pytest.mark.parametrize(
    ("fmt", "data", "expected"),
    [
        ("sequences", b"1 3 2 1\n2 5\n", [("1", ["3", "2", "1"]), ("2", ["5"])]),
        ("pairs", b"a x\na y\nb x\na x\n", [("a", ["x", "y", "x"]), ("b", ["x"])]),
        # ties (t=5) keep input order; the file is not grouped by user
        ("interactions", b"u,c,5\nv,a,1\nu,b,5\nu,a,9\nu,z,1\n", [("u", ["z", "c", "b", "a"]), ("v", ["a"])]),
    ],
)
def test_parse_and_sort_each_format(tmp_path, fmt: str, data: bytes, expected: list) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    with TestPipeline(runner=RUNNER) as p:
        built = (
            p
            | beam.Create([(0, str(path), len(data))])
            | beam.ParDo(reading.ReadAndParse(fmt, None, False, None))
            | beam.FlatMap(lambda tagged: [tagged[1]] if tagged[0] == reading.ROWS else [])
            | sequences.BuildSequences(has_timestamps=fmt == "interactions", dedupe=False)
        )
        assert_that(built, equal_to(expected))


def test_sort_is_stable_across_files_and_dedupe_counts() -> None:
    values = [
        ("u", (5, 1, 1, ("b",))),
        ("u", (5, 0, 9, ("a",))),  # same timestamp, earlier file: first
        ("u", (5, 0, 9, ("a",))),
        ("u", (1, 1, 3, ("z",))),
        ("u", (5, 1, 2, ("a",))),  # same item and timestamp as an earlier event: a duplicate
        ("u", (7, 1, 4, ("a",))),  # same item, later: a real repeat
    ]
    with TestPipeline(runner=RUNNER) as p:
        created = p | beam.Create(values)
        kept = created | "keep" >> sequences.BuildSequences(has_timestamps=True, dedupe=False)
        deduped = created | "dedupe" >> sequences.BuildSequences(has_timestamps=True, dedupe=True)
        assert_that(kept, equal_to([("u", ["z", "a", "a", "b", "a", "a"])]), label="kept")
        assert_that(deduped, equal_to([("u", ["z", "a", "b", "a"])]), label="deduped")
        stats = accounting.sequence_stats(deduped, "rows", users_key="users") | accounting.SumStats()
        assert_that(stats, equal_to([{"rows": 4, "users": 1}]), label="stats")
    # without timestamps only consecutive repeats are duplicates
    assert sequences.build_sequence(("u", [(0, 0, 1, ("a", "a", "b", "a"))]), False, True) == ("u", ["a", "b", "a"])


def test_kcore_iterates_to_the_fixed_point() -> None:
    # k=2. Round 1 drops item "x" (1 interaction); user "w" is then left with 1 item and goes, which leaves item "y"
    # with 1 interaction: only round 2 drops it, and user "v" with it.
    user_sequences = [
        ("u", ["a", "b", "a", "b"]),
        ("t", ["a", "b"]),
        ("w", ["x", "y"]),
        ("v", ["y", "c", "c"]),
    ]
    with TestPipeline(runner=RUNNER) as p:
        created = p | beam.Create(user_sequences)
        one = created | "one" >> sequences.KCore(2, rounds=1)
        many = created | "many" >> sequences.KCore(2, rounds=4)
        assert_that(one, equal_to([("u", ["a", "b", "a", "b"]), ("t", ["a", "b"]), ("v", ["y", "c", "c"])]), "one")
        assert_that(many, equal_to([("u", ["a", "b", "a", "b"]), ("t", ["a", "b"]), ("v", ["c", "c"])]), "many")
        assert_that(
            sequences.kcore_violations(one, 2, "CheckOne") | "SumOne" >> accounting.SumStats(),
            equal_to([{"kcore_items_below_k": 1}]),
            label="left_one",
        )
        assert_that(
            sequences.kcore_violations(many, 2, "CheckMany") | "SumMany" >> accounting.SumStats(),
            equal_to([{}]),
            label="left_many",
        )


def test_vocabulary_ordering() -> None:
    with TestPipeline(runner=RUNNER) as p:
        numeric = (
            p
            | "n" >> beam.Create([["10", "9"], ["2", "10"], []])
            | "vn" >> beam.CombineGlobally(vocabulary.Vocabulary())
        )
        strings = p | "s" >> beam.Create([["b"], ["a", "10"]]) | "vs" >> beam.CombineGlobally(vocabulary.Vocabulary())
        assert_that(numeric, equal_to([["2", "9", "10"]]), label="numeric")
        assert_that(strings, equal_to([["10", "a", "b"]]), label="strings")


def make_records(protocol: str, user_sequences: list, seed: int = 42) -> dict[str, list]:
    items = vocabulary.vocabulary_order(i for _, s in user_sequences for i in s)
    users = vocabulary.vocabulary_order(u for u, _ in user_sequences)
    collected: dict[str, list] = {}
    with TestPipeline(runner=RUNNER) as p:
        created = p | beam.Create(user_sequences)
        out = {
            "sequences": created,
            "item_vocab": p | "iv" >> beam.Create([items]),
            "user_vocab": p | "uv" >> beam.Create([users]),
        } | records.MakeRecords(records.UserSplits(protocol, seed, 0.2, 0.1))
        for split in ("train", "valid", "test"):
            collected[split] = portable.select(out, split, f"select_{split}")
        expected = {split: [] for split in ("train", "valid", "test")}
        assignment = splits.user_split_assignment(users, seed, 0.2, 0.1)
        for user, seq in user_sequences:
            ids = [items.index(i) + 1 for i in seq]
            u = users.index(user) + 1
            by_split = (
                splits.loo_records(u, ids) if protocol == "loo" else splits.user_records(u, ids, assignment[user])
            )
            for split, record in by_split.items():
                expected[split].append(record)
        for split in ("train", "valid", "test"):
            assert_that(collected[split], equal_to(expected[split]), label=f"check_{split}")
    return expected


def test_loo_records() -> None:
    expected = make_records("loo", [("2", ["b", "a", "c"]), ("10", ["a", "b", "c", "d"])])
    assert expected["test"] == [(1, [2, 1], 3), (2, [1, 2, 3], 4)]  # user "2" < "10" numerically
    assert expected["valid"] == [(1, [2], 1), (2, [1, 2], 3)]
    assert expected["train"] == [(1, [2], 0), (2, [1, 2], 0)]


def test_user_split_records() -> None:
    sequences = [(f"u{i}", ["a", "b", "c"][: 2 + i % 2]) for i in range(20)]
    expected = make_records("user", sequences)
    assert [len(expected[s]) for s in ("train", "valid", "test")] == [14, 4, 2]
    assert all(target == 0 for _, _, target in expected["train"])
    assert all(target != 0 for s in ("valid", "test") for _, _, target in expected[s])


def test_records_are_written_only_when_every_position_of_the_sequence_arrived() -> None:
    # User "u" has 4 events; the joins deliver (position, item id) pairs in any order.
    joined = {"user": [(7, None)], "length": [4], "ids": [(2, 12), (0, 10), (3, 13), (1, 11)]}
    assert dict(records.records_of_user(("u", joined), "loo")) == {
        "train": (7, [10, 11], 0),
        "valid": (7, [10, 11], 12),
        "test": (7, [10, 11, 12], 13),
    }
    # A runner that loses or repeats a shuffled element must not yield a shorter (or longer) sequence as if whole.
    lost = {**joined, "ids": [(0, 10), (1, 11), (3, 13)]}
    with pytest.raises(ValueError, match=r"'u': 3 of its 4 events .*missing positions \[2\].*lost or repeated"):
        list(records.records_of_user(("u", lost), "loo"))
    repeated = {**joined, "ids": [*joined["ids"], (3, 13)]}
    with pytest.raises(ValueError, match=r"repeated: 1"):
        list(records.records_of_user(("u", repeated), "loo"))
