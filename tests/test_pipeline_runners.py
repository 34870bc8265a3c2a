"""Scale-out without a service: runner options parse, and the package stages for remote workers (`--setup_file`)."""

from __future__ import annotations

import importlib.util
import shutil
import tarfile
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import (
    DirectOptions,
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PortableOptions,
    SetupOptions,
    SparkRunnerOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.stager import Stager

from pipeline import run, runners

REPO = Path(__file__).resolve().parents[1]
OURS = ["--input=gs://bucket/logs/*.csv", "--input_format=interactions", "--split=user", "--output=gs://bucket/out"]


def test_default_runner_is_the_python_direct_runner() -> None:
    config, options = run.parse_args(OURS)
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert config.split == "user" and config.seed == 42 and config.effective_min_seq_len == 2
    _, options = run.parse_args([*OURS, "--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    direct = options.view_as(DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (2, "multi_processing")
    _, options = run.parse_args([*OURS, "--runner", "DirectRunner"])
    assert options.view_as(StandardOptions).runner == "DirectRunner"  # an explicit choice is kept


def test_a_large_log_runs_one_worker_process_per_core_by_default() -> None:
    large = [(0, "gs://bucket/logs/a.csv", runners.LOCAL_PARALLEL_BYTES)]
    direct = run.parse_args(OURS, large)[1].view_as(DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (0, "multi_processing")  # 0: one per core
    small = [(0, "gs://bucket/logs/a.csv", runners.LOCAL_PARALLEL_BYTES - 1)]
    assert run.parse_args(OURS, small)[1].view_as(DirectOptions).direct_running_mode == "in_memory"
    # an explicit choice wins, even the default value
    direct = run.parse_args([*OURS, "--direct_num_workers=1"], large)[1].view_as(DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (1, "in_memory")
    runner = run.parse_args([*OURS, "--runner=DataflowRunner"], large)[1]
    assert runner.view_as(DirectOptions).direct_running_mode == "in_memory"


def test_blocks_are_dealt_evenly_to_the_local_workers(monkeypatch) -> None:
    monkeypatch.setattr(runners.os, "cpu_count", lambda: 2)
    large = [(0, "gs://bucket/logs/a.csv", runners.LOCAL_PARALLEL_BYTES)]
    assert runners.local_workers(run.parse_args(OURS, large)[1]) == 2  # the default: one worker per core
    assert runners.local_workers(run.parse_args([*OURS, "--direct_num_workers=3"], large)[1]) == 3
    assert runners.local_workers(run.parse_args(OURS)[1]) == 1  # a small log: in memory, one worker
    dask = run.parse_args([*OURS, "--runner=apache_beam.runners.dask.dask_runner.DaskRunner"], large)[1]
    assert runners.local_workers(dask) == 1  # Dask partitions its own way


@pytest.mark.parametrize(
    ("flags", "spills"),
    [
        ([], True),  # the default FnApiRunner
        (["--runner=DirectRunner"], True),
        (["--runner=apache_beam.runners.dask.dask_runner.DaskRunner"], True),
        (["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/t"], False),
        (["--runner=FlinkRunner"], False),
    ],
)
def test_the_local_runners_spill_the_large_shuffles_and_service_runners_do_not(flags: list, spills: bool) -> None:
    assert runners.spills_shuffles(run.parse_args([*OURS, *flags])[1]) is spills


def test_worker_processes_run_without_the_time_based_flush_that_drops_data(monkeypatch) -> None:
    # docs/beam_multiprocess_loss: the runner's timed flush races with its writes and loses bytes
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1000)
    runners.guard_local_data_plane(run.parse_args([*OURS, "--direct_num_workers=1"])[1])
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 1000  # in memory: no data stream, nothing to change
    runners.guard_local_data_plane(run.parse_args([*OURS, "--direct_running_mode=multi_processing"])[1])
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 0


def test_dataflow_options() -> None:
    config, options = run.parse_args(
        [
            *OURS,
            "--runner=DataflowRunner",
            "--project=my-project",
            "--region=europe-west1",
            "--temp_location=gs://bucket/tmp",
            "--staging_location=gs://bucket/staging",
            "--job_name=mdcns-preprocess",
            "--setup_file=./setup.py",
            "--max_num_workers=50",
            "--machine_type=n2-standard-4",
        ]
    )
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    gcp = options.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region, gcp.temp_location, gcp.job_name) == (
        "my-project",
        "europe-west1",
        "gs://bucket/tmp",
        "mdcns-preprocess",
    )
    assert options.view_as(SetupOptions).setup_file == "./setup.py"
    workers = options.view_as(WorkerOptions)
    assert (workers.max_num_workers, workers.machine_type) == (50, "n2-standard-4")
    assert config.input == "gs://bucket/logs/*.csv" and config.output == "gs://bucket/out"
    # our flags do not leak into Beam's and vice versa
    assert "input_format" not in options.get_all_options() and not hasattr(config, "project")


def test_flink_and_spark_options() -> None:
    _, options = run.parse_args(
        [
            *OURS,
            "--runner=FlinkRunner",
            "--flink_master=flink-jm:8081",
            "--environment_type=LOOPBACK",
            "--parallelism=8",
        ]
    )
    assert options.view_as(StandardOptions).runner == "FlinkRunner"
    flink = options.view_as(FlinkRunnerOptions)
    assert (flink.flink_master, flink.parallelism) == ("flink-jm:8081", 8)
    assert options.view_as(PortableOptions).environment_type == "LOOPBACK"

    _, options = run.parse_args(
        [*OURS, "--runner=SparkRunner", "--spark_master_url=spark://spark-master:7077", "--environment_type=DOCKER"]
    )
    assert options.view_as(StandardOptions).runner == "SparkRunner"
    assert options.view_as(SparkRunnerOptions).spark_master_url == "spark://spark-master:7077"
    assert options.view_as(PortableOptions).environment_type == "DOCKER"


@pytest.mark.parametrize(
    "bad",
    [
        ["--split=loo", "--min_seq_len=2"],
        ["--valid_fraction=0.6", "--test_fraction=0.5"],
        ["--kcore=-1"],
        ["--columns=user,item"],
    ],
)
def test_invalid_flags_fail_before_any_pipeline_work(bad: list[str]) -> None:
    with pytest.raises(ValueError):
        run.parse_args([*OURS, *bad])


def test_setup_file_stages_our_packages(tmp_path: Path) -> None:
    """What Dataflow/Flink/Spark workers receive: Beam builds an sdist from --setup_file and stages it.

    Beam 2.77 runs ``python -m build`` when installed, else ``python setup.py sdist``; ``build`` is not installed
    here, so this exercises the root ``setup.py`` shim. The project's ``pyproject.toml`` is used when present; a
    minimal stand-in declaring the two packages is used otherwise (the shim itself carries no metadata).
    """
    project = tmp_path / "project"
    project.mkdir()
    for package in ("pipeline", "mdcns_tf"):
        shutil.copytree(REPO / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.py", project / "setup.py")
    if (REPO / "pyproject.toml").exists():
        shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
        for extra in ("README.md", "LICENSE"):
            if (REPO / extra).exists():
                shutil.copy(REPO / extra, project / extra)
    else:
        (project / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
            '[project]\nname = "mdcns-tf"\nversion = "0.1.0"\n'
            '[tool.setuptools.packages.find]\ninclude = ["mdcns_tf*", "pipeline*"]\n'
        )
    _, options = run.parse_args(
        [*OURS, "--runner=DataflowRunner", f"--setup_file={project / 'setup.py'}", "--sdk_location=container"]
    )
    staging = tmp_path / "staging"
    staging.mkdir()
    resources = Stager.create_job_resources(options, str(staging), log_submission_env_dependencies=False)
    names = [beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(r.role_payload).staged_name for r in resources]
    assert "workflow.tar.gz" in names  # the name Beam's worker boot installs the package from
    sdists = list(staging.glob("*.tar.gz"))
    assert len(sdists) == 1, (names, list(staging.iterdir()))
    with tarfile.open(sdists[0]) as tar:
        members = {Path(*Path(name).parts[1:]).as_posix() for name in tar.getnames()}
    for module in ("pipeline/run.py", "pipeline/preprocess.py", "pipeline/formats.py", "mdcns_tf/features.py"):
        assert module in members, sorted(members)
    if importlib.util.find_spec("build") is None:
        # without `build` a pyproject-only project cannot stage: the shim is what makes the fallback work
        assert (REPO / "setup.py").exists()
