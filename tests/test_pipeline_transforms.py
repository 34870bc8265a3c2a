"""The graph's stages (`pipeline.reading`, `.sequences`, `.vocabulary`, `.records`) on the Python direct runner
(`FnApiRunner`), checked with `assert_that`: elements are user blocks (`pipeline.blocks`), never single events."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline import accounting, blocks, portable, reading, records, sequences, splits, vocabulary

RUNNER = "FnApiRunner"  # the Python direct runner; DirectRunner would first try to download Prism


def test_read_interactions_with_rejections(tmp_path) -> None:
    data = b"user\titem\trating\ttimestamp\n1\t10\t5\t300\n1\t11\t5\tnope\n\n2\t10\t1\n\xff\t1\t1\t1\n2\t12\t3\t100\n"
    path = tmp_path / "u.data"
    path.write_bytes(data)
    with TestPipeline(runner=RUNNER) as p:
        out = (
            p
            | beam.Create([(0, str(path), len(data))])
            | beam.ParDo(reading.ReadAndParse("interactions", None, False, None, num_blocks=1))
        )
        rows = portable.select(out, reading.ROWS, "Rows")
        # one block: the file's rows in one batch, columns (file, users, items, timestamps, line numbers), packed
        assert_that(
            rows | beam.Map(lambda kv: (kv[0], blocks.unpack(kv[1]))),
            equal_to([(0, (0, ["1", "2"], [("10",), ("12",)], [300, 100], [2, 7]))]),
            label="rows",
        )
        assert_that(
            portable.select(out, reading.REJECTED, "Rejected")
            | beam.FlatMap(lambda lines: lines)
            | beam.Map(lambda line: line.split("\t", 3)[1:3]),
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
            | beam.ParDo(reading.ReadAndParse(fmt, None, False, None, num_blocks=3, chunk_lines=2))
            | beam.FlatMap(lambda tagged: [tagged[1]] if tagged[0] == reading.ROWS else [])
            | sequences.BuildSequences(has_timestamps=fmt == "interactions", dedupe=False)
        )
        assert_that(
            built
            | beam.FlatMap(
                lambda block: [(blocks.block_of(user, 3) == block[0], user, items) for user, items in block[1]]
            ),
            equal_to([(True, user, items) for user, items in expected]),
        )


def test_sort_is_stable_across_files_and_dedupe_counts() -> None:
    batches = [  # (block, (file, users, items, timestamps, line numbers)); batches of one block arrive in any order
        (0, (1, ["u"], [("b",)], [5], [1])),
        (0, (0, ["u", "u"], [("a",), ("a",)], [5, 5], [9, 9])),  # same timestamp, earlier file: first
        (0, (1, ["u", "u", "u"], [("z",), ("a",), ("a",)], [1, 5, 7], [3, 2, 4])),
        # line 2 of file 1: same item and timestamp as an earlier event, a duplicate; line 4: a real repeat
    ]
    with TestPipeline(runner=RUNNER) as p:
        created = p | beam.Create([(block, blocks.pack(batch)) for block, batch in batches])
        kept = created | "keep" >> sequences.BuildSequences(has_timestamps=True, dedupe=False)
        deduped = created | "dedupe" >> sequences.BuildSequences(has_timestamps=True, dedupe=True)
        assert_that(kept, equal_to([(0, [("u", ["z", "a", "a", "b", "a", "a"])])]), label="kept")
        assert_that(deduped, equal_to([(0, [("u", ["z", "a", "b", "a"])])]), label="deduped")
        stats = accounting.block_stats(deduped, "rows", users_key="users") | accounting.SumStats()
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


def test_user_blocks_keep_each_blocks_users_and_refuse_a_repeated_block() -> None:
    combine = vocabulary.UserBlocks()
    parts = [combine.add_input(combine.create_accumulator(), part) for part in ((2, ["u7", "u1"]), (0, ["u3"]), ())]
    merged = combine.extract_output(combine.merge_accumulators(parts))
    assert merged == {2: ["u7", "u1"], 0: ["u3"]}
    assert vocabulary.indexed_users(merged) == (["u1", "u3", "u7"], merged)
    with pytest.raises(ValueError, match="user block 2 reached the user vocabulary twice"):
        combine.merge_accumulators([merged, {2: ["u9"]}])


def make_records(protocol: str, user_sequences: list, seed: int = 42, num_blocks: int = 3) -> dict[str, list]:
    items = vocabulary.vocabulary_order(i for _, s in user_sequences for i in s)
    users = vocabulary.vocabulary_order(u for u, _ in user_sequences)
    user_blocks: dict[int, list] = {b: [] for b in range(num_blocks)}
    for user, seq in user_sequences:
        user_blocks[blocks.block_of(user, num_blocks)].append((user, seq))
    expected: dict[str, list] = {split: [] for split in ("train", "valid", "test")}
    assignment = splits.user_split_assignment(users, seed, 0.2, 0.1)
    for user, seq in user_sequences:
        ids = [items.index(i) + 1 for i in seq]
        u = users.index(user) + 1
        by_split = splits.loo_records(u, ids) if protocol == "loo" else splits.user_records(u, ids, assignment[user])
        for split, record in by_split.items():
            expected[split].append(record)
    with TestPipeline(runner=RUNNER) as p:
        created = p | beam.Create(list(user_blocks.items()))
        out = {
            "sequences": created,
            "item_uses": created | beam.FlatMap(records.item_uses, num_blocks),
            "item_vocab": p | "iv" >> beam.Create([items]),
            "user_vocab": p | "uv" >> beam.Create([users]),
        } | records.MakeRecords(records.UserSplits(protocol, seed, 0.2, 0.1, num_blocks=num_blocks))
        batches = portable.select(out, records.RECORDS, "records")
        for split in ("train", "valid", "test"):
            written = batches | f"select_{split}" >> beam.FlatMap(lambda b, s=split: b[1] if b[0] == s else [])
            serialized = [records.serialize_record(record) for record in expected[split]]
            assert_that(written, equal_to(serialized), label=f"check_{split}")
        train_ids = [i for _, ids, _ in expected["train"] for i in ids]
        counts = portable.select(out, records.ITEM_COUNTS, "counts") | beam.FlatMap(lambda kv: kv[1].items())
        assert_that(
            counts | beam.CombinePerKey(sum),
            equal_to([(i, train_ids.count(i)) for i in set(train_ids)]),
            label="train_counts",
        )
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


def test_a_block_is_written_only_when_it_arrived_whole_and_once() -> None:
    block = [("u", ["a", "b", "c", "d"]), ("v", ["b", "a", "c"])]
    pack = blocks.pack
    joined = {
        "block": [pack(block)],
        "ids": [pack({"a": 10, "b": 11}), pack({"c": 12, "d": 13})],
        "users": [records.pack_users(["u", "v"], [7, 8], None)],
    }
    out = list(records.records_of_block((0, joined), "loo", num_blocks=2))
    written = {value[0]: value[1] for tag, value in out if tag == records.RECORDS}
    assert written["test"] == [
        records.serialize_record((7, [10, 11, 12], 13)),
        records.serialize_record((8, [11, 10], 12)),
    ]
    assert [value for tag, value in out if tag == records.STATS] == [
        [("records_train", 2), ("records_valid", 2), ("records_test", 2)]
    ]
    # A runner that loses or repeats a shuffled element must not yield a block as if it were whole.
    with pytest.raises(ValueError, match=r"user block 0: 2 copies of its sequences .*lost or repeated"):
        list(records.records_of_block((0, {**joined, "block": [pack(block), pack(block)]}), "loo", 2))
    with pytest.raises(ValueError, match=r"user block 0: 0 copies of its sequences"):
        list(records.records_of_block((0, {**joined, "block": []}), "loo", 2))
    with pytest.raises(ValueError, match=r"1 sequences but 2 vocabulary users"):
        list(records.records_of_block((0, {**joined, "block": [pack(block[:1])]}), "loo", 2))
    with pytest.raises(ValueError, match=r"2 sequences but 3 vocabulary users"):
        list(
            records.records_of_block(
                (0, {**joined, "users": [*joined["users"], records.pack_users(["u"], [7], None)]}), "loo", 2
            )
        )
    with pytest.raises(ValueError, match=r"2 sequences but 2 vocabulary users"):
        list(records.records_of_block((0, {**joined, "block": [pack([block[0], block[0]])]}), "loo", 2))
    with pytest.raises(ValueError, match=r"'u': item 'c' reached its block without an id"):
        list(records.records_of_block((0, {**joined, "ids": [pack({"a": 10, "b": 11})]}), "loo", 2))


def test_item_ids_fail_loudly_when_an_item_has_no_vocabulary_id() -> None:
    joined = {"ids": [{"a": 1}], "uses": [(0, blocks.pack(["a"])), (2, blocks.pack(["a"]))]}
    ids = [(block, blocks.unpack(packed)) for block, packed in records.item_ids_of_uses((5, joined))]
    assert ids == [(0, {"a": 1}), (2, {"a": 1})]
    with pytest.raises(ValueError, match=r"items \['b'\] \(1 in all\) have events but no vocabulary id"):
        list(records.item_ids_of_uses((5, {"ids": [{"a": 1}], "uses": [(0, blocks.pack(["a", "b"]))]})))


def test_blocks_follow_the_input_size_and_payloads_round_trip() -> None:
    assert blocks.block_count(0) == blocks.MIN_BLOCKS
    assert blocks.block_count(30 * blocks.BLOCK_BYTES + 1) == 31
    assert blocks.block_count(1 << 60) == blocks.MAX_BLOCKS
    # A multiple of the local runner's workers, which it deals the blocks to in turn: each gets as many.
    assert blocks.block_count(30 * blocks.BLOCK_BYTES + 1, workers=2) == 32
    assert blocks.block_count(0, workers=3) == 9
    assert blocks.block_count(1 << 60, workers=3) == blocks.MAX_BLOCKS - 1
    # a key's block is the same in every process (not Python's salted hash) and in range
    assert [blocks.block_of(key, 7) for key in ("u1", "u2", "ü")] == [5, 1, 4]  # crc32 of the UTF-8 bytes, mod 7
    batch = (3, ["u", "v"], [("a",), ("b", "c")], [1, 2.5], [10, 11])
    assert blocks.unpack(blocks.pack(batch)) == batch
    assert len(blocks.pack(["1234567"] * 1000)) < 1000  # compressed


@pytest.mark.parametrize("protocol", ["loo", "user"])
def test_user_splits_give_each_block_its_users_with_their_vocabulary_index(protocol) -> None:
    vocabulary = [f"user{i}" for i in range(1, 41)]
    present = vocabulary[::3]  # --vocabulary_from: the parent keeps users this log does not have
    # this log's users by block, as the vocabulary stage gives them (a block's users in any order)
    present_blocks = {0: present[:4][::-1], 3: present[4:]}
    for element, users in ((vocabulary, vocabulary), ((vocabulary, present_blocks), present)):
        parts = dict(records.UserSplits(protocol, 0, 0.25, 0.25, num_blocks=5).process(element))
        # Expected by hand: index = position in the vocabulary + 1; the vocabulary alone: block = blocks.block_of.
        expected = {}
        for key in users:
            block = (
                blocks.block_of(key, 5)
                if element is vocabulary
                else next(b for b, keys in present_blocks.items() if key in keys)
            )
            expected.setdefault(block, {})[key] = vocabulary.index(key) + 1
        got = {b: {k: i for k, (i, _) in records.unpack_users(p).items()} for b, p in parts.items()}
        assert got == expected
        split_of = [s for p in parts.values() for _, s in records.unpack_users(p).values()]
        if protocol == "loo":
            assert set(split_of) == {None}
        else:
            assert set(split_of) <= {"train", "valid", "test"} and split_of.count("train") >= len(users) // 3
