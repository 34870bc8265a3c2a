"""Where a local Beam run of the pipeline spends its wall time: the seconds of every fused stage, in order.

    python -m benchmarks.pipeline_stages --out FILE.json -- PIPELINE.RUN FLAGS...
    # e.g. -- --input=LOG --output=OUT --input_format=interactions --split=loo [--direct_num_workers=1]

Runs `pipeline.run` in this process with a timer around each bundle Beam 2.77's ``FnApiRunner`` executes (its
private ``_execute_bundle``: a measurement aid pinned to that version, never used by the product). A stage is
serial when one bundle does its work, whatever the number of worker processes; comparing a run of the default
(one worker process per core) with ``--direct_num_workers=1`` stage by stage shows which stages spread and what
stays serial. The JSON holds per stage the start (seconds since ``run_stages`` began), the seconds, the CPU seconds
of the launcher (the runner and its data plane: in a multi-process run it shares the cores with the workers) and of
the worker processes, and the transforms fused into it (Beam's stage name), and the seconds before and after the
stages.
"""

from __future__ import annotations

import argparse
import re
import runpy
import sys
import time
from typing import Any

import psutil

from benchmarks import common

STAGE_NAME_CHARS = 400  # a fused stage's name lists every transform in it; the first few say which it is


def short_name(stage_name: str) -> str:
    """The stage's transforms, ``+``-joined without Beam's wrappers: ``(((a)+(ref_AppliedPTransform_b_7))`` -> ``a +
    b``."""
    parts = [re.sub(r"^ref_AppliedPTransform_|_\d+$", "", p.strip("()")) for p in stage_name.split("+")]
    return " + ".join(p for p in parts if p)[:STAGE_NAME_CHARS]


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds so far of this process (the launcher: the runner, its data plane) and of its live child processes
    (the worker processes of a multi-process run)."""
    children = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:  # exited between the listing and the read
            continue
        children += times.user + times.system
    return time.process_time(), children


def timed_run(pipeline_args: list[str]) -> tuple[int, dict[str, Any]]:
    """``python -m pipeline.run PIPELINE_ARGS`` in this process, each executed bundle timed: ``(exit code,
    timeline)``."""
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    started = time.perf_counter()
    stages: list[dict[str, Any]] = []
    bounds: dict[str, float] = {}
    execute_bundle, run_stages = fn_runner.FnApiRunner._execute_bundle, fn_runner.FnApiRunner.run_stages

    def timed_bundle(self: Any, context: Any, bundle_context: Any, bundle_input: Any) -> Any:
        began, cpu = time.perf_counter(), _cpu_seconds()
        try:
            return execute_bundle(self, context, bundle_context, bundle_input)
        finally:
            after = _cpu_seconds()
            stages.append(
                {
                    "start_s": round(began - bounds["run_stages_start"], 2),
                    "seconds": round(time.perf_counter() - began, 2),
                    "launcher_cpu_s": round(after[0] - cpu[0], 2),
                    "workers_cpu_s": round(after[1] - cpu[1], 2),
                    "stage": short_name(bundle_context.stage.name),
                }
            )

    def timed_stages(self: Any, *args: Any, **kwargs: Any) -> Any:
        bounds["run_stages_start"] = time.perf_counter()
        try:
            return run_stages(self, *args, **kwargs)
        finally:
            bounds["run_stages_end"] = time.perf_counter()

    fn_runner.FnApiRunner._execute_bundle, fn_runner.FnApiRunner.run_stages = timed_bundle, timed_stages
    argv = sys.argv
    try:
        # Run as the command runs (entry points are imported by nobody), in this process so the timers apply.
        sys.argv = ["pipeline.run", *pipeline_args]
        try:
            runpy.run_module("pipeline.run", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
        fn_runner.FnApiRunner._execute_bundle, fn_runner.FnApiRunner.run_stages = execute_bundle, run_stages
    ended = time.perf_counter()
    begin, end = bounds.get("run_stages_start", ended), bounds.get("run_stages_end", ended)
    return code, {
        "seconds": round(ended - started, 2),
        "before_stages_s": round(begin - started, 2),
        "stages_s": round(end - begin, 2),
        "after_stages_s": round(ended - end, 2),
        "stages": stages,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("pipeline_args", nargs=argparse.REMAINDER, help="after --: pipeline.run's flags")
    args = parser.parse_args(argv)
    pipeline_args = [a for a in args.pipeline_args if a != "--"]
    if not pipeline_args:
        parser.error("give pipeline.run's flags after --")
    result = common.envelope(common.command_line("benchmarks.pipeline_stages", argv), common.PACKAGES)
    code, timeline = timed_run(pipeline_args)
    if code != 0:
        print(f"pipeline.run exited with {code}: no timeline written", file=sys.stderr)
        return code
    result.update(pipeline_args=[common.portable(a) for a in pipeline_args], **timeline)
    common.write_result(args.out, result)
    for stage in timeline["stages"]:
        print(f"{stage['start_s']:8.2f} {stage['seconds']:7.2f}  {stage['stage'][:110]}")
    print(f"total {timeline['seconds']:.2f} s; wrote {common.repo_relative(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
