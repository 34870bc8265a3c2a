"""``--split time``: a global temporal cut. Hand-computed splits of a tiny log, no event at or after the cut in any
training record, the target is each user's first event at or after it, the filters' interplay, determinism, the
trainer's reader on the output, and the usage errors."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from mdcns_tf import data, features
from pipeline import readback, run

REPO = Path(__file__).resolve().parents[1]

# user, item, timestamp. Time range 0..10, so --cutoff_quantile 0.8 is the cut 8.0.
LOG = """\
u1\ta\t1
u1\tb\t2
u1\tc\t3
u1\td\t9
u1\te\t10
u2\ta\t0
u2\tc\t4
u3\tb\t1
u3\te\t8
u4\tc\t9
u4\ta\t10
u5\ta\t5
u5\tf\t9
u6\tb\t3
u6\ta\t7
u6\tc\t8.5
"""


def pipeline(tmp_path: Path, log: str, *flags: str, name: str = "out") -> Path:
    (tmp_path / "log.tsv").write_text(log)
    out = tmp_path / name
    run.run(
        [f"--input={tmp_path / 'log.tsv'}", "--input_format=interactions", "--split=time", f"--output={out}", *flags]
    )
    return out


def by_user(out: Path) -> dict[str, dict[str, tuple[list[str], str | None]]]:
    """``{split: {user key: (item keys, target key or None)}}`` of an output."""
    items = readback.read_vocab(str(out), features.ITEMS_FILE)
    users = readback.read_vocab(str(out), features.USERS_FILE)
    return {
        split: {
            users[u - 1]: ([items[i - 1] for i in ids], items[target - 1] if target else None)
            for u, ids, target in readback.read_split(str(out), split)
        }
        for split in features.SPLITS
    }


def seeded_halves(users: list[str], seed: int) -> tuple[set[str], set[str]]:
    """The documented assignment, computed here from its definition: sha256 order, first ceil(n/2) validate."""
    order = sorted(users, key=lambda u: (hashlib.sha256(f"{seed}\x00{u}".encode()).digest(), u))
    n_valid = (len(order) + 1) // 2
    return set(order[:n_valid]), set(order[n_valid:])


def test_the_hand_computed_split_of_a_tiny_log(tmp_path: Path) -> None:
    out = pipeline(tmp_path, LOG, "--cutoff_quantile=0.8", "--seed=7")
    got = by_user(out)
    # Before the cut (t < 8): each user's training sequence. u4 has no event before it (no history): dropped by
    # --min_seq_len 2; u2 has none after it: train only. u3's e at t = 8 is at the cut, so its target.
    assert got["train"] == {
        "u1": (["a", "b", "c"], None),
        "u2": (["a", "c"], None),
        "u3": (["b"], None),
        "u5": (["a"], None),
        "u6": (["b", "a"], None),
    }
    held_out = {
        "u1": (["a", "b", "c"], "d"),  # its e at t = 10 comes after the target: dropped
        "u3": (["b"], "e"),
        "u5": (["a"], "f"),  # f never occurs before the cut: it has an id all the same
        "u6": (["b", "a"], "c"),
    }
    valid, test = seeded_halves(list(held_out), 7)
    assert got["valid"] == {u: held_out[u] for u in valid} and len(valid) == 2
    assert got["test"] == {u: held_out[u] for u in test} and len(test) == 2

    meta = features.Metadata.load(str(out))
    assert readback.read_vocab(str(out), features.ITEMS_FILE) == ["a", "b", "c", "d", "e", "f"]
    assert readback.read_vocab(str(out), features.USERS_FILE) == ["u1", "u2", "u3", "u5", "u6"]
    assert meta.item_counts == [0, 4, 3, 2, 0, 0, 0]  # the train records only: d, e, f are never trained on
    assert meta.records == {"train": 5, "valid": 2, "test": 2}
    unseen = {s: sum(got[s][u][1] in "def" for u in got[s]) for s in ("valid", "test")}
    assert meta.split == {
        "protocol": "time",
        "seed": 7,
        "fractions": None,
        "min_seq_len": 2,
        "cutoff": 8.0,
        "cutoff_quantile": 0.8,
        "time_range": [0, 10],
        "targets_unseen_in_train": unseen,
    }
    assert sum(unseen.values()) == 3
    c = meta.counts
    assert (c["rows_read"], c["rows_written"], c["rows_filtered"]) == (16, 13, 3)
    assert (c["rows_filtered_time_cut"], c["rows_filtered_min_seq_len"], c["rows_filtered_dedupe"]) == (2, 1, 0)
    assert (c["users_read"], c["users_written"]) == (6, 5)
    assert readback.full_sequences(str(out))["u1"] == ["a", "b", "c", "d"]


def test_a_given_cutoff_cuts_the_same_as_the_quantile_it_equals(tmp_path: Path) -> None:
    quantile = by_user(pipeline(tmp_path, LOG, "--cutoff_quantile=0.8", name="q"))
    given = pipeline(tmp_path, LOG, "--cutoff=8", name="c")
    assert by_user(given) == quantile
    split = features.Metadata.load(str(given)).split
    assert (split["cutoff"], split["cutoff_quantile"], split["time_range"]) == (8.0, None, [0, 10])


def test_the_filters_run_on_the_events_up_to_the_targets(tmp_path: Path) -> None:
    # --kcore 2 counts x2's target a (t = 9) but not x1's z (once: dropped, so x1 only trains) nor anything after a
    # target: x3's w at t = 9 and 10 come after its target b (t = 8.5) and never reach the k-core.
    log = "x1\ta\t1\nx1\tb\t2\nx1\tz\t9\nx2\ta\t1\nx2\tb\t3\nx2\ta\t9\nx3\tb\t2\nx3\ta\t4\nx3\tb\t8.5\n"
    log += "x3\tw\t9\nx3\tw\t10\n"
    out = pipeline(tmp_path, log, "--cutoff=8", "--kcore=2")
    got = by_user(out)
    assert got["train"] == {"x1": (["a", "b"], None), "x2": (["a", "b"], None), "x3": (["b", "a"], None)}
    assert {**got["valid"], **got["test"]} == {"x2": (["a", "b"], "a"), "x3": (["b", "a"], "b")}
    assert readback.read_vocab(str(out), features.ITEMS_FILE) == ["a", "b"]
    c = features.Metadata.load(str(out)).counts
    assert (c["rows_filtered_time_cut"], c["rows_filtered_kcore"], c["rows_written"]) == (2, 1, 8)


def random_log(tmp_path: Path) -> Path:
    """300 users whose events are spread over the whole time range 0..1000 (ties included), lines shuffled."""
    rng = random.Random(11)
    lines = [
        f"u{u}\ti{rng.randrange(60)}\t{rng.randrange(1001)}\n" for u in range(300) for _ in range(rng.randrange(1, 15))
    ]
    rng.shuffle(lines)
    path = tmp_path / "random.tsv"
    path.write_text("".join(lines))
    return path


def raw_events(path: Path) -> dict[str, list[tuple[float, str]]]:
    """``{user: [(t, item), ...]}`` in file order (the pipeline's tie order within one file)."""
    events: dict[str, list[tuple[float, str]]] = {}
    for line in path.read_text().splitlines():
        user, item, t = line.split("\t")
        events.setdefault(user, []).append((float(t), item))
    return {user: sorted(e, key=lambda x: x[0]) for user, e in events.items()}  # stable: ties keep file order


def test_no_training_record_holds_an_event_at_or_after_the_cut(tmp_path: Path) -> None:
    log = random_log(tmp_path)
    out = tmp_path / "out"
    run.run(
        [f"--input={log}", "--input_format=interactions", "--split=time", "--cutoff_quantile=0.7", f"--output={out}"]
    )
    cutoff = features.Metadata.load(str(out)).split["cutoff"]
    events = raw_events(log)
    low = min(t for e in events.values() for t, _ in e)
    high = max(t for e in events.values() for t, _ in e)
    assert cutoff == low + 0.7 * (high - low)
    got = by_user(out)
    for user, (items, _) in got["train"].items():
        assert items == [item for t, item in events[user] if t < cutoff], user
    held_out = {**got["valid"], **got["test"]}
    expected = {
        user: ([item for t, item in e if t < cutoff], next(item for t, item in e if t >= cutoff))
        for user, e in events.items()
        if e[0][0] < cutoff <= e[-1][0]
    }
    assert held_out == expected and len(expected) > 20
    assert abs(len(got["valid"]) - len(got["test"])) <= 1
    # a user trains when it has an event before the cut and >= 2 events up to its target (--min_seq_len 2)
    before = {user: sum(t < cutoff for t, _ in e) for user, e in events.items()}
    visible = {user: n + (n < len(events[user])) for user, n in before.items()}
    assert set(got["train"]) == {user for user, n in before.items() if n >= 1 and visible[user] >= 2}


def comparable(out: Path) -> dict:
    meta = features.Metadata.load(str(out))
    return {
        "records": {split: readback.read_split(str(out), split) for split in features.SPLITS},
        "items": readback.read_vocab(str(out), features.ITEMS_FILE),
        "users": readback.read_vocab(str(out), features.USERS_FILE),
        "meta": (meta.split, meta.counts, meta.records, meta.item_counts),
    }


def test_deterministic_across_runs_and_worker_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    log = random_log(tmp_path)
    common = [f"--input={log}", "--input_format=interactions", "--split=time", "--cutoff_quantile=0.6", "--seed=3"]
    run.run([*common, f"--output={tmp_path / 'a'}"])
    run.run([*common, f"--output={tmp_path / 'b'}"])
    run.run([*common, f"--output={tmp_path / 'c'}", "--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    first = comparable(tmp_path / "a")
    assert comparable(tmp_path / "b") == first
    assert comparable(tmp_path / "c") == first


def test_the_trainers_reader_takes_the_output(tmp_path: Path) -> None:
    out = pipeline(tmp_path, LOG, "--cutoff=8")
    meta = features.Metadata.load(str(out))  # the fingerprint check the trainer runs first
    batch = next(iter(data.eval_dataset(str(out), "valid", max_len=4, batch_size=8)))
    assert batch["target"].shape == (meta.records["valid"],)
    assert data.count_train_examples(str(out), "all") == 3  # u1, u2, u6 have >= 2 training events


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--input_format=sequences", "--cutoff=8"], ["--split time cuts on timestamps", "--input_format sequences"]),
        (["--input_format=pairs", "--cutoff=8"], ["--input_format pairs has none"]),
        (["--input_format=interactions"], ["exactly one of --cutoff T", "--cutoff_quantile Q"]),
        (["--input_format=interactions", "--cutoff=8", "--cutoff_quantile=0.5"], ["exactly one of"]),
        (["--input_format=interactions", "--cutoff_quantile=1"], ["--cutoff_quantile 1.0", "0 < Q < 1"]),
        (["--input_format=interactions", "--cutoff_quantile=0"], ["0 < Q < 1"]),
        (["--input_format=interactions", "--cutoff=inf"], ["--cutoff inf", "finite"]),
        (["--input_format=interactions", "--cutoff=8", "--split_file=x.tsv"], ["--split_file", "--split user"]),
    ],
)
def test_usage_errors_are_one_line(tmp_path: Path, capsys, flags: list[str], fragments: list[str]) -> None:
    (tmp_path / "log.tsv").write_text(LOG)
    rc = run.main([f"--input={tmp_path / 'log.tsv'}", "--split=time", f"--output={tmp_path / 'out'}", *flags])
    lines = [line for line in capsys.readouterr().err.splitlines() if not line[:4].isdigit()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "out").exists()


def test_a_cutoff_flag_without_the_time_split_is_an_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "log.tsv").write_text(LOG)
    flags = [f"--input={tmp_path / 'log.tsv'}", "--input_format=interactions", f"--output={tmp_path / 'o'}"]
    assert run.main([*flags, "--split=loo", "--cutoff_quantile=0.5"]) == 2
    assert "--cutoff_quantile places the cut of --split time" in capsys.readouterr().err


def test_metadata_records_the_cut_in_source_options_too(tmp_path: Path) -> None:
    out = pipeline(tmp_path, LOG, "--cutoff=8")
    with open(out / features.METADATA_FILE) as f:
        options = json.load(f)["source"]["options"]
    assert (options["split"], options["cutoff"], options["cutoff_quantile"]) == ("time", 8.0, None)
