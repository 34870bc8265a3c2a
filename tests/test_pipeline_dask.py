"""The pipeline on a real multi-process engine: Beam's Dask runner on a `distributed.LocalCluster` of 2 worker
processes, against the direct runner on the same input: same records, vocabularies and metadata counts.

Runs in CI (`dask[distributed]` is in the `test` extra); skipped only when dask is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip(
    "distributed", reason="dask[distributed] is not installed (pip install -e '.[dask]'): no Dask cluster to run on"
)

from mdcns_tf import features  # noqa: E402
from pipeline import readback, run, runners, synthetic  # noqa: E402

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def write_logs(folder: Path) -> None:
    """Two interleaved synthetic log files (two read tasks), one with a header, junk rows and an empty line."""
    folder.mkdir()
    with open(folder / "a.tsv", "w") as f:
        synthetic.generate(f, users=200, items=80, events=2400, seed=5)
    with open(folder / "b.tsv", "w") as f:
        f.write("user\titem\ttimestamp\n")
        synthetic.generate(f, users=150, items=80, events=1500, seed=6)
        f.write("7\t3\tnot-a-time\n\n1\t2\n")


def outputs_of(output: Path) -> dict:
    """Everything that must not depend on the runner: decoded records (sorted: the order within and across files
    is the runner's), vocabularies, and metadata apart from the fingerprint (file hashes follow the sharding)."""
    meta = features.Metadata.load(str(output))  # also checks the records against the fingerprint
    return {
        "records": {split: sorted(readback.read_split(str(output), split)) for split in features.SPLITS},
        "items": readback.read_vocab(str(output), features.ITEMS_FILE),
        "users": readback.read_vocab(str(output), features.USERS_FILE),
        "counts": meta.counts,
        "record_counts": meta.records,
        "item_counts": meta.item_counts,
        "sizes": (meta.n_users, meta.n_items),
        "split": meta.split,
        "rejected": sorted(line for f in (output / "rejected").glob("*.txt") for line in f.read_text().splitlines()),
    }


@pytest.mark.parametrize(
    "flags",
    [
        ["--split=loo"],
        ["--split=user", "--seed=3", "--kcore=3", "--kcore_rounds=2", "--dedupe"],
        ["--split=time", "--cutoff_quantile=0.7", "--kcore=2", "--kcore_rounds=2"],
    ],
    ids=["loo", "user_kcore_dedupe", "time_quantile_kcore"],
)
def test_dask_runner_matches_the_direct_runner(
    dask_cluster_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str]
) -> None:
    write_logs(tmp_path / "logs")
    # Relative paths from a cwd the workers do not share: the pipeline must hand them absolute paths.
    monkeypatch.chdir(tmp_path)
    common = ["--input=logs", "--input_format=interactions", *flags]
    run.run([*common, "--output=direct"])
    run.run([*common, "--output=dask", f"--runner={DASK_RUNNER}", f"--dask_client_address={dask_cluster_address}"])

    direct, dask = outputs_of(tmp_path / "direct"), outputs_of(tmp_path / "dask")
    assert direct["counts"]["users_written"] > 100 and direct["counts"]["rows_rejected"] == 2
    for key in direct:
        assert dask[key] == direct[key], key
    # the two-phase sinks leave no temporary directory behind
    assert not list((tmp_path / "dask").glob("*/.temp-*")) and not list((tmp_path / "direct").glob("*/.temp-*"))


def test_vocabulary_from_on_the_dask_runner(
    dask_cluster_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--vocabulary_from``: the workers read the parent's vocabularies; same output as the direct runner."""
    write_logs(tmp_path / "logs")
    (tmp_path / "day1").mkdir()
    with open(tmp_path / "day1" / "a.tsv", "w") as f:
        synthetic.generate(f, users=100, items=60, events=1000, seed=9)
    monkeypatch.chdir(tmp_path)
    run.run(["--input=day1", "--input_format=interactions", "--split=loo", "--output=parent"])
    common = ["--input=logs", "--input_format=interactions", "--split=user", "--vocabulary_from=parent"]
    run.run([*common, "--output=direct"])
    run.run([*common, "--output=dask", f"--runner={DASK_RUNNER}", f"--dask_client_address={dask_cluster_address}"])

    direct, dask = outputs_of(tmp_path / "direct"), outputs_of(tmp_path / "dask")
    parent_items = readback.read_vocab("parent", features.ITEMS_FILE)
    assert direct["items"][: len(parent_items)] == parent_items and len(direct["items"]) > len(parent_items)
    for key in direct:
        assert dask[key] == direct[key], key


def test_one_input_file_per_dask_partition_unless_the_user_chose() -> None:
    assert runners.with_dask_defaults([f"--runner={DASK_RUNNER}"])[-1] == "--dask_partition_size=1"
    assert runners.with_dask_defaults(["--runner", DASK_RUNNER])[-1] == "--dask_partition_size=1"
    partitioned = [f"--runner={DASK_RUNNER}", "--dask_npartitions=8"]
    assert "--dask_partition_size=1" not in runners.with_dask_defaults(partitioned)
    assert runners.with_dask_defaults(["--runner=FnApiRunner"]) == ["--runner=FnApiRunner"]


def test_dask_flattens_and_groupings_stay_within_the_graphs_parallelism(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beam's translation adds up partitions (a Flatten concatenates, a GroupByKey keeps its input's count): capped
    at the graph's parallelism, with the same elements and groups (computed here by hand)."""
    import dask.bag as db
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.dask import overrides
    from apache_beam.runners.dask import transform_evaluator as evaluator

    # Beam's own translations (an earlier Dask run in this process has replaced them), undone after the test
    originals = {overrides._Flatten: evaluator.Flatten, overrides._GroupByKeyOnly: evaluator.GroupByKey}
    monkeypatch.setattr(evaluator, "TRANSLATIONS", {**evaluator.TRANSLATIONS, **originals})
    runners.cap_dask_partitions(PipelineOptions(["--runner=FnApiRunner"]), 4)
    assert evaluator.TRANSLATIONS[overrides._Flatten] is evaluator.Flatten  # another runner: untouched
    runners.cap_dask_partitions(PipelineOptions([f"--runner={DASK_RUNNER}"]), 4)

    parts = [db.from_sequence([(i % 5, i) for i in range(start, start + 10)], npartitions=3) for start in (0, 10, 20)]
    flat = evaluator.TRANSLATIONS[overrides._Flatten](None).apply(parts)  # 3 x 3 partitions in
    assert flat.npartitions == 4
    assert sorted(flat.compute(scheduler="sync")) == sorted((i % 5, i) for i in range(30))
    grouped = evaluator.TRANSLATIONS[overrides._GroupByKeyOnly](None).apply(flat)
    assert grouped.npartitions == 4
    # key k: the values k, k + 5, ..., k + 25
    assert sorted((k, sorted(v)) for k, v in grouped.compute(scheduler="sync")) == [
        (k, list(range(k, 30, 5))) for k in range(5)
    ]
    small = db.from_sequence([(1, "a"), (1, "b")], npartitions=2)
    assert evaluator.TRANSLATIONS[overrides._GroupByKeyOnly](None).apply(small).npartitions == 2  # never more
