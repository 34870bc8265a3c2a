"""The Beam runner defaults every pipeline command shares (`pipeline.run`, `pipeline.recommend`): which runner
when none is given, Dask's partitioning, and the direct runner's worker bound.

Without ``--runner`` the commands run on the Python ``FnApiRunner`` (the direct runner's engine): Beam 2.77's
``DirectRunner`` first tries to download and start the Prism runner, which needs the network, before falling back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

DEFAULT_RUNNER = "FnApiRunner"
DASK_RUNNER_SUFFIX = "DaskRunner"


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


def with_dask_defaults(beam_args: Sequence[str]) -> list[str]:
    """On the Dask runner, one input element (a file, a record file) per partition unless ``--dask_npartitions``/
    ``--dask_partition_size`` is given: the runner ignores ``Reshuffle`` and puts up to 128 ``Create`` elements in
    one partition, so every file would be read by one worker and every later step would inherit that partition."""
    beam_args = list(beam_args)
    partitioned = any(a.split("=", 1)[0] in ("--dask_npartitions", "--dask_partition_size") for a in beam_args)
    if chosen_runner(beam_args).endswith(DASK_RUNNER_SUFFIX) and not partitioned:
        beam_args.append("--dask_partition_size=1")
    return beam_args


def beam_options(beam_args: Sequence[str]) -> PipelineOptions:
    """`PipelineOptions` of ``beam_args`` with the defaults above. Raises ValueError for a direct-runner worker count
    out of range: each worker is a Python process (or thread) with Beam loaded, ~200 MB, so more than a few per
    core only costs memory."""
    options = PipelineOptions(with_dask_defaults(with_default_runner(beam_args)))
    workers, most = options.view_as(DirectOptions).direct_num_workers, 4 * (os.cpu_count() or 1)
    if not 0 <= workers <= most:
        raise ValueError(f"--direct_num_workers {workers}: use 0 (one per core) up to {most} (4 per core)")
    return options
