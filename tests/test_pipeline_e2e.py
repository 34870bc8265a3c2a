"""End to end: `python -m pipeline.run` on tiny files, on a fuzzed file, with 2 worker processes, on real data."""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import pytest

from mdcns_tf import features
from pipeline import readback, run, splits, synthetic

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def run_pipeline(input_path: Path, output: Path, fmt: str, split: str, *extra: str) -> features.Metadata:
    run.run(
        [
            f"--input={input_path}",
            f"--input_format={fmt}",
            f"--split={split}",
            f"--output={output}",
            *extra,
        ]
    )
    return features.Metadata.load(str(output))


def check_accounting(meta: features.Metadata, output: Path) -> None:
    c = meta.counts
    assert c["rows_read"] == c["rows_written"] + c["rows_rejected"] + c["rows_filtered"]
    assert c["rows_filtered"] == c["rows_filtered_dedupe"] + c["rows_filtered_kcore"] + c["rows_filtered_min_seq_len"]
    rejected_lines = [line for f in (output / "rejected").glob("*.txt") for line in f.read_text().splitlines()]
    assert len(rejected_lines) == c["rows_rejected"]
    assert sum(v for k, v in c.items() if k.startswith("rejected_")) == c["rows_rejected"]
    # rows_written is recomputed from the records themselves, not trusted from the pipeline's bookkeeping
    sequences = readback.full_sequences(str(output))
    assert sum(len(s) for s in sequences.values()) == c["rows_written"]
    assert len(sequences) == meta.n_users == c["users_written"]
    for split in features.SPLITS:
        assert len(readback.read_split(str(output), split)) == meta.records[split]
    # item_counts = occurrences in the train records' item_ids
    counts = Counter(i for _, ids, _ in readback.read_split(str(output), "train") for i in ids)
    assert meta.item_counts == [0] + [counts.get(i, 0) for i in range(1, meta.n_items + 1)]


def write_tiny_log(path: Path, users: int = 20, seed: int = 0) -> dict[str, list[str]]:
    """A small shuffled interactions file (header, timestamp ties, junk rows); returns the expected sequences.

    Expected = each user's rows sorted by (timestamp, position in the file): ties keep input order.
    """
    rng = random.Random(seed)
    rows = []
    for u in range(1, users + 1):
        n = 2 + u % 5
        times = [rng.randrange(1000) for _ in range(n)]
        times[-1] = times[0]  # at least one tie per user
        rows += [(f"user{u}", f"i{rng.randrange(12)}", t) for t in times]
    rng.shuffle(rows)
    expected: dict[str, list[str]] = {}
    for user, item, _ in sorted(rows, key=lambda r: r[2]):  # stable: file order among ties
        expected.setdefault(user, []).append(item)
    lines = ["user,item,timestamp"] + [f"{u},{i},{t}" for u, i, t in rows]
    lines.insert(5, "user3,i1,not-a-time")
    lines.insert(9, "")
    lines.insert(12, "only,two")
    path.write_text("\n".join(lines) + "\n")
    return expected


def test_loo_end_to_end_leaks_nothing(tmp_path: Path) -> None:
    expected = write_tiny_log(tmp_path / "log.csv")
    meta = run_pipeline(tmp_path / "log.csv", tmp_path / "out", "interactions", "loo")
    check_accounting(meta, tmp_path / "out")
    c = meta.counts
    assert (c["rows_rejected"], c["empty_lines"], c["header_lines"]) == (2, 1, 1)
    kept = {u: s for u, s in expected.items() if len(s) >= 3}
    assert c["rows_filtered_min_seq_len"] == sum(len(s) for u, s in expected.items() if u not in kept)
    assert readback.full_sequences(str(tmp_path / "out")) == kept
    train = {u: (ids, t) for u, ids, t in readback.read_split(str(tmp_path / "out"), "train")}
    valid = {u: (ids, t) for u, ids, t in readback.read_split(str(tmp_path / "out"), "valid")}
    test = {u: (ids, t) for u, ids, t in readback.read_split(str(tmp_path / "out"), "test")}
    assert set(train) == set(valid) == set(test) == set(range(1, meta.n_users + 1))
    for u in train:
        full = test[u][0] + [test[u][1]]
        assert valid[u] == (full[:-2], full[-2]) and test[u] == (full[:-1], full[-1])
        assert train[u] == (full[:-2], 0)  # the two held-out positions never reach training
    assert meta.split["protocol"] == "loo" and meta.source["format"] == "interactions"
    users = readback.read_vocab(str(tmp_path / "out"), features.USERS_FILE)
    assert users == sorted(users)  # "user10" < "user2": non-integer keys sort lexicographically
    # no temporary folder left: the sinks' and the spill files' (`pipeline.spill`) are gone
    assert not [p for p in (tmp_path / "out").rglob(".temp-*")]


def test_user_split_end_to_end(tmp_path: Path) -> None:
    write_tiny_log(tmp_path / "log.csv", users=100, seed=1)
    meta = run_pipeline(tmp_path / "log.csv", tmp_path / "out", "interactions", "user", "--seed=7")
    check_accounting(meta, tmp_path / "out")
    assert meta.n_users == 100  # min_seq_len 2 keeps everyone
    split_users = {s: [u for u, _, _ in readback.read_split(str(tmp_path / "out"), s)] for s in features.SPLITS}
    assert [len(split_users[s]) for s in features.SPLITS] == [70, 20, 10]
    assert set().union(*map(set, split_users.values())) == set(range(1, 101))
    assert sum(len(set(v)) for v in split_users.values()) == 100  # disjoint, one record per user
    assert meta.split == {
        "protocol": "user",
        "seed": 7,
        "fractions": {"train": pytest.approx(0.7), "valid": 0.2, "test": 0.1},
        "min_seq_len": 2,
    }
    # the assignment is the seeded one (deterministic: a pure function of the user keys and the seed)
    users = readback.read_vocab(str(tmp_path / "out"), features.USERS_FILE)
    expected = splits.user_split_assignment(users, 7, 0.2, 0.1)
    for split in features.SPLITS:
        assert {users[u - 1] for u in split_users[split]} == {k for k, v in expected.items() if v == split}
    assert expected != splits.user_split_assignment(users, 8, 0.2, 0.1)
    # held-out users: input = sequence minus the last item, target = the last item
    full = readback.full_sequences(str(tmp_path / "out"))
    items = readback.read_vocab(str(tmp_path / "out"), features.ITEMS_FILE)
    for split in ("valid", "test"):
        for u, ids, target in readback.read_split(str(tmp_path / "out"), split):
            assert [items[i - 1] for i in ids] + [items[target - 1]] == full[users[u - 1]]


def test_kcore_dedupe_min_len_and_overwrite(tmp_path: Path) -> None:
    # pairs: u1 has a consecutive duplicate; item z appears once (k=2 removes it, then u3 falls below 2... )
    (tmp_path / "pairs.txt").write_text("u1 a\nu1 a\nu1 b\nu1 c\nu2 a\nu2 b\nu2 c\nu3 z\nu3 a\nu3 b\nu3 c\n")
    meta = run_pipeline(
        tmp_path / "pairs.txt", tmp_path / "out", "pairs", "loo", "--kcore=2", "--kcore_rounds=3", "--dedupe"
    )
    check_accounting(meta, tmp_path / "out")
    c = meta.counts
    assert (c["rows_filtered_dedupe"], c["rows_filtered_kcore"], c["rows_filtered_min_seq_len"]) == (1, 1, 0)
    assert c["kcore_items_below_k"] == 0 and c["kcore_users_below_k"] == 0
    assert readback.full_sequences(str(tmp_path / "out")) == {u: ["a", "b", "c"] for u in ("u1", "u2", "u3")}
    with pytest.raises(FileExistsError):
        run_pipeline(tmp_path / "pairs.txt", tmp_path / "out", "pairs", "loo")
    meta = run_pipeline(tmp_path / "pairs.txt", tmp_path / "out", "pairs", "loo", "--overwrite", "--min_seq_len=5")
    assert meta.n_users == 0 and meta.counts["rows_filtered_min_seq_len"] == 11
    check_accounting(meta, tmp_path / "out")


def test_fuzzed_file_never_crashes_and_accounts_for_every_row(tmp_path: Path) -> None:
    rng = random.Random(99)
    lines = []
    for _ in range(3000):
        kind = rng.random()
        if kind < 0.6:
            lines.append(
                f"{rng.randrange(40)}\t{rng.randrange(60)}\t{rng.randrange(5)}\t{rng.randrange(10**9)}".encode()
            )
        elif kind < 0.7:
            lines.append(bytes(rng.randrange(256) for _ in range(rng.randrange(30))))
        elif kind < 0.75:
            lines.append(b"")
        elif kind < 0.8:
            lines.append(b"1\t2\t3\t" + rng.choice([b"x", b"", b"nan", b"1.5e"]))
        elif kind < 0.85:
            lines.append(b"\t".join(b"7" for _ in range(rng.choice([1, 2, 5, 9]))))
        elif kind < 0.9:
            lines.append(b"9" * rng.randrange(5000, 20000))  # over --max_line_bytes below
        else:
            lines.append(lines[-1] if lines else b"")  # duplicates
    data = b"\n".join(lines)
    (tmp_path / "fuzz.tsv").write_bytes(data)
    meta = run_pipeline(
        tmp_path / "fuzz.tsv", tmp_path / "out", "interactions", "user", "--max_line_bytes=4096", "--kcore=2"
    )
    check_accounting(meta, tmp_path / "out")
    c = meta.counts
    assert c["lines_read"] == len(data.splitlines())  # random bytes may hold line endings (\n, \r) of their own
    assert c["lines_read"] == c["rows_read"] + c["empty_lines"] + c["header_lines"]
    assert c["rows_rejected"] > 0 and c["rows_written"] > 0
    print("fuzz end-to-end counts:", c)


def test_two_worker_processes_match_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--direct_num_workers=2 --direct_running_mode=multi_processing`: same output as the in-process run."""
    # worker subprocesses import `pipeline` and `mdcns_tf` from the repo
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with open(tmp_path / "syn.tsv", "w") as f:
        synthetic.generate(f, users=300, items=100, events=4000, seed=3)
    one = run_pipeline(tmp_path / "syn.tsv", tmp_path / "one", "interactions", "loo")
    two = run_pipeline(
        tmp_path / "syn.tsv",
        tmp_path / "two",
        "interactions",
        "loo",
        "--direct_num_workers=2",
        "--direct_running_mode=multi_processing",
    )
    check_accounting(two, tmp_path / "two")
    assert not [p for p in (tmp_path / "two").rglob(".temp-*")]
    assert (two.counts, two.records, two.item_counts) == (one.counts, one.records, one.item_counts)
    for split in features.SPLITS:
        assert readback.read_split(str(tmp_path / "two"), split) == readback.read_split(str(tmp_path / "one"), split)


def raw_sequences(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        user, *items = line.split()
        out.setdefault(user, []).extend(items)
    return out


@pytest.mark.parametrize("name", ["LastFM", "Beauty"])
def test_real_s3rec_files_round_trip(tmp_path: Path, name: str) -> None:
    path = DATA / "amazon_lastfm_s3rec" / f"{name}.txt"
    if not path.exists():
        pytest.skip(f"real data not found at {path} (../shared/data is only present on the dev machines)")
    meta = run_pipeline(path, tmp_path / "out", "sequences", "loo")
    check_accounting(meta, tmp_path / "out")
    raw = raw_sequences(path)
    assert meta.counts["rows_read"] == meta.counts["rows_written"] == sum(len(s) for s in raw.values())
    assert readback.full_sequences(str(tmp_path / "out")) == raw
    # S3-Rec ids are 1..n and contiguous, so the vocabulary keeps them
    assert readback.read_vocab(str(tmp_path / "out"), features.ITEMS_FILE) == [
        str(i) for i in range(1, meta.n_items + 1)
    ]
    assert readback.read_vocab(str(tmp_path / "out"), features.USERS_FILE) == [
        str(i) for i in range(1, meta.n_users + 1)
    ]
    published = {"LastFM": (1090, 3646, 52551), "Beauty": (22363, 12101, 198502)}[name]
    assert (meta.n_users, meta.n_items, meta.counts["rows_written"]) == published
