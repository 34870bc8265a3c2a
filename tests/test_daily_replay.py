"""`benchmarks.daily_replay`'s pure logic: the quantile cut of a log and the 99%-threshold / ratio of two curves."""

from __future__ import annotations

import pytest

from benchmarks import daily_replay


def test_time_cut_and_day_log(tmp_path) -> None:
    log = tmp_path / "log.tsv"
    # u.data order: user item rating timestamp, rows out of time order, one blank line
    log.write_text("".join(f"{u}\t{u + 10}\t5\t{t}\n" for u, t in [(1, 40), (2, 10), (3, 30), (4, 20)]) + "\n")
    stamps = daily_replay.read_timestamps(str(log), 3)
    assert stamps == [40, 10, 30, 20]
    assert daily_replay.time_cut(stamps, 0.5) == 30 and daily_replay.time_cut(stamps, 0.99) == 40
    assert daily_replay.time_cut(stamps, 0.0) == 10
    info = daily_replay.write_day(str(log), 3, 30, str(tmp_path / "d" / "day1.tsv"))
    assert info == {"events": 2, "min_t": 10, "max_t": 20, "end": 30}
    assert (tmp_path / "d" / "day1.tsv").read_text() == "2\t12\t5\t10\n4\t14\t5\t20\n"  # rows unchanged
    # the pipeline's cut low + Q (high - low) lands half a unit before the boundary: t < boundary trains
    q = daily_replay.cutoff_quantile(100, 300, 250)
    assert 100 + q * (300 - 100) == pytest.approx(249.5)


def points(*pairs: tuple[float, float]) -> list[dict[str, float]]:
    return [{"epoch": i + 1, "seconds": s, "value": v} for i, (s, v) in enumerate(pairs)]


def test_catch_up_threshold_and_ratio() -> None:
    scratch = points((10, 0.10), (20, 0.20), (30, 0.25), (40, 0.25), (50, 0.24))
    warm = points((5, 0.20), (8, 0.2474), (12, 0.2476), (16, 0.30))
    c = daily_replay.catch_up(scratch, warm)
    assert c["threshold"] == pytest.approx(0.99 * 0.25)
    assert c["scratch_best"]["seconds"] == 30  # the first epoch at the best value
    assert c["warm_reached"]["seconds"] == 12 and c["ratio"] == pytest.approx(12 / 30)
    never = daily_replay.catch_up(scratch, points((5, 0.1), (9, 0.2)))
    assert never["warm_reached"] is None and never["ratio"] is None


def test_curve_counts_seconds_from_launch() -> None:
    metrics = {"history": [{"epoch": 1, "wall_time": 105.04, "val_ndcg_20": 0.1}, {"epoch": 2, "wall_time": 110.0}]}
    assert daily_replay.curve(metrics, 100.0) == [{"epoch": 1, "seconds": 5.0, "value": 0.1}]


def test_the_increment_is_the_users_of_the_events_between_the_two_training_cuts(tmp_path):
    log = tmp_path / "u.data"
    log.write_text("1\t10\t5\t10\n2\t11\t5\t20\n3\t12\t5\t30\n2\t13\t5\t35\n4\t12\t5\t40\n5\t1\t5\t15\n")
    grew, others = daily_replay.increment_users(str(log), 0, 3, 20, 40)
    assert grew == {"2", "3"} and others == {"1", "5"}  # t in [20, 40); 4 comes later
    assert daily_replay.replay_sample(others, 0.5) == daily_replay.replay_sample({"5", "1"}, 0.5)  # seeded
    assert len(daily_replay.replay_sample(others, 0.5)) == 1 and daily_replay.replay_sample(others, 0.0) == []
    dest = tmp_path / "d" / "increment.txt"
    daily_replay.write_keys(str(dest), ["3", "2"])
    assert dest.read_text() == "2\n3\n"
    variant = daily_replay.WARM_VARIANTS["increment"]
    assert [s.format(increment_users=str(dest)) for s in variant] == [f"data.train_users={dest}"]


def test_unseen_targets_are_day_2_validation_targets_without_a_day_1_training_event(tmp_path) -> None:
    import json

    import tensorflow as tf

    from mdcns_tf import features

    day1, day2 = tmp_path / "day1", tmp_path / "day2"
    day1.mkdir()
    (day2 / "valid").mkdir(parents=True)
    # Day 1 trained on items 1 and 3; day 2 appended item 4 (ids stay put).
    (day1 / features.METADATA_FILE).write_text(json.dumps({"item_counts": [0, 3, 0, 1]}))
    path = str(day2 / "valid" / f"part-0{features.TFRECORD_SUFFIX}")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for user, target in enumerate([1, 2, 3, 4, 1]):
            writer.write(features.make_example(user, [1, 3], target))
    # By hand: targets 2 (no training event on day 1) and 4 (not in day 1's vocabulary) are unseen.
    expected = {"valid_targets": 5, "never_trained_on": 2, "share": 0.4}
    assert daily_replay.unseen_targets(str(day1), str(day2)) == expected
