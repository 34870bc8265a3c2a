"""The Beam runner defaults every pipeline command shares (`pipeline.run`, `pipeline.recommend`): which runner
when none is given, how many local processes, Dask's partitioning, and the direct runner's worker bound.

Without ``--runner`` the commands run on the Python ``FnApiRunner`` (the direct runner's engine): Beam 2.77's
``DirectRunner`` first tries to download and start the Prism runner, which needs the network, before falling back.
From `LOCAL_PARALLEL_BYTES` of input, and unless ``--direct_num_workers`` or ``--direct_running_mode`` is given,
it runs one worker process per core (``multi_processing``): starting them costs a few seconds, which a small log
does not repay. The graph moves blocks, not events (`pipeline.blocks`), which is what makes that mode safe at
10M events (`docs/beam_multiprocess_loss`) and every loss detectable (`pipeline.records.records_of_block`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

DEFAULT_RUNNER = "FnApiRunner"
DASK_RUNNER_SUFFIX = "DaskRunner"
LOCAL_PARALLEL_BYTES = 64 << 20  # ~3M events of a `user item timestamp` log
_LOCAL_FLAGS = ("--direct_num_workers", "--direct_running_mode")


def chosen_runner(beam_args: Sequence[str]) -> str:
    """The ``--runner`` of ``beam_args`` (either spelling), "" when none is given."""
    runner = ""
    for i, arg in enumerate(beam_args):
        if arg.startswith("--runner="):
            runner = arg.split("=", 1)[1]
        elif arg == "--runner" and i + 1 < len(beam_args):
            runner = beam_args[i + 1]
    return runner


def with_default_runner(beam_args: Sequence[str]) -> list[str]:
    """Adds ``--runner=FnApiRunner`` unless the user chose a runner."""
    beam_args = list(beam_args)
    if not chosen_runner(beam_args):
        beam_args.append(f"--runner={DEFAULT_RUNNER}")
    return beam_args


def with_local_parallelism(beam_args: Sequence[str], input_bytes: int) -> list[str]:
    """Adds one worker process per core (``--direct_num_workers=0 --direct_running_mode=multi_processing``) for an
    input of at least `LOCAL_PARALLEL_BYTES` when neither a runner nor a local worker flag is given."""
    beam_args = list(beam_args)
    chosen = any(arg.split("=", 1)[0] in _LOCAL_FLAGS for arg in beam_args)
    if input_bytes >= LOCAL_PARALLEL_BYTES and not chosen_runner(beam_args) and not chosen:
        beam_args += ["--direct_num_workers=0", "--direct_running_mode=multi_processing"]
    return beam_args


def with_dask_defaults(beam_args: Sequence[str]) -> list[str]:
    """On the Dask runner, one input element (a file, a record file) per partition unless ``--dask_npartitions``/
    ``--dask_partition_size`` is given: the runner ignores ``Reshuffle`` and puts up to 128 ``Create`` elements in
    one partition, so every file would be read by one worker and every later step would inherit that partition."""
    beam_args = list(beam_args)
    partitioned = any(a.split("=", 1)[0] in ("--dask_npartitions", "--dask_partition_size") for a in beam_args)
    if chosen_runner(beam_args).endswith(DASK_RUNNER_SUFFIX) and not partitioned:
        beam_args.append("--dask_partition_size=1")
    return beam_args


def guard_local_data_plane(options: PipelineOptions) -> None:
    """Turns off the time-based flushing of the local runner's data streams when it runs worker processes.

    Beam 2.77's ``FnApiRunner`` sends a stage's input to each worker process through a
    ``TimeBasedBufferingClosableOutputStream``: a thread flushes it every second (``get``, send, ``_clear``) while
    ``write`` takes no lock, so bytes written between that ``get`` and ``_clear`` are dropped without an error. It
    lost 1.5M of 10M events in a CoGroupByKey (`docs/beam_multiprocess_loss`). With the limit at 0 the runner uses
    the size-based stream, written and flushed by one thread only; a batch pipeline never needs the timer, which
    exists for streaming latency. Only the runner's own process is concerned: this sets its module constant.
    """
    direct = options.view_as(DirectOptions)
    runner = options.view_as(StandardOptions).runner or ""
    if runner.endswith(DEFAULT_RUNNER) and direct.direct_running_mode != "in_memory":
        from apache_beam.runners.portability.fn_api_runner import worker_handlers

        worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0


def cap_dask_partitions(options: PipelineOptions, most: int) -> None:
    """On Beam's Dask runner, at most ``most`` partitions out of every Flatten and GroupByKey.

    Beam 2.77's Dask translation concatenates the partitions of a Flatten's inputs (``db.concat``) and gives a
    GroupByKey's output as many partitions as its input (``Bag.groupby``), so partition counts add up along the graph:
    a CoGroupByKey is a Flatten, and the per-step counters are flattened from every step. At 10M events (40 files, 29
    user blocks) the last steps had 1,657 partitions, mostly empty, and the task shuffles between them (81,395 split
    tasks) cost more than the work. A GroupByKey now shuffles into at most ``most`` partitions and a Flatten merges
    neighbouring partitions down to ``most`` (no shuffle). ``most``: the graph's parallelism, the larger of its input
    files and its user blocks. Only the launcher's graph translation changes (this module's process)."""
    if not (options.view_as(StandardOptions).runner or "").endswith(DASK_RUNNER_SUFFIX):
        return
    from apache_beam.runners.dask import overrides, transform_evaluator

    class Flatten(transform_evaluator.Flatten):
        def apply(self, input_bag: Any, side_inputs: Any = None) -> Any:
            bag = super().apply(input_bag, side_inputs)
            return bag.repartition(npartitions=most) if bag.npartitions > most else bag

    class GroupByKey(transform_evaluator.GroupByKey):
        def apply(self, input_bag: Any, side_inputs: Any = None) -> Any:
            def value(item: tuple[Any, list[Any]]) -> tuple[Any, list[Any]]:
                key, values = item
                return key, [transform_evaluator.defenestrate(v[1]) for v in values]

            partitions = min(input_bag.npartitions, most)
            return input_bag.groupby(lambda item: item[0], npartitions=partitions).map(value)

    transform_evaluator.TRANSLATIONS[overrides._Flatten] = Flatten
    transform_evaluator.TRANSLATIONS[overrides._GroupByKeyOnly] = GroupByKey


def spills_shuffles(options: PipelineOptions) -> bool:
    """Whether the graph keeps the payloads of its two large shuffles in spill files (`pipeline.spill`): on the local
    runners (``FnApiRunner``, ``DirectRunner``, Dask), whose shuffles move every byte through one process; not on a
    service runner (Dataflow, Flink, Spark), whose shuffle is built for it and for which the spill files would be
    objects in the output bucket."""
    runner = options.view_as(StandardOptions).runner or ""
    return runner.endswith((DEFAULT_RUNNER, "DirectRunner", DASK_RUNNER_SUFFIX))


def local_workers(options: PipelineOptions) -> int:
    """How many workers the local runner deals a shuffle's keys to in turn (Beam 2.77's ``FnApiRunner``:
    ``--direct_num_workers``, 0 for one per core, and ``_GroupingBuffer.partition``); 1 on other runners, whose
    partitioning is their own."""
    if not (options.view_as(StandardOptions).runner or "").endswith(DEFAULT_RUNNER):
        return 1
    return options.view_as(DirectOptions).direct_num_workers or os.cpu_count() or 1


def beam_options(beam_args: Sequence[str], input_bytes: int = 0) -> PipelineOptions:
    """`PipelineOptions` of ``beam_args`` with the defaults above (``input_bytes``: the size of the input, for the
    local parallelism). Raises ValueError for a direct-runner worker count out of range: each worker is a Python
    process (or thread) with Beam loaded, ~200 MB, so more than a few per core only costs memory."""
    options = PipelineOptions(with_dask_defaults(with_default_runner(with_local_parallelism(beam_args, input_bytes))))
    workers, most = options.view_as(DirectOptions).direct_num_workers, 4 * (os.cpu_count() or 1)
    if not 0 <= workers <= most:
        raise ValueError(f"--direct_num_workers {workers}: use 0 (one per core) up to {most} (4 per core)")
    return options
