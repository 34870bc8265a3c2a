"""Beam pipeline scaling: events/s and peak memory per process, direct runner vs a Dask cluster, 2 workers each.

    python -m benchmarks.pipeline_scaling [--sizes 1000000,10000000] [--runners direct,dask] \\
        [--events-per-file 250000] [--max-seconds 240] [--out benchmarks/results/pipeline_scaling.json]

For each size a synthetic log (`pipeline.synthetic`, ``events // 20`` users, ``events // 50`` items, as
``benchmarks.speed``) is written as files of ``--events-per-file`` events (logs usually arrive as many files; a file
is read by one worker, so the files are what a runner can spread), then ``python -m pipeline.run ... --split loo``
runs once per runner, each in a fresh launcher process:

- ``direct``: ``--direct_num_workers 2 --direct_running_mode multi_processing`` (the launcher runs the shuffles,
  two worker processes the steps);
- ``dask``: ``--runner=...DaskRunner --dask_client_address=...`` against a fresh ``distributed.LocalCluster`` of 2
  single-threaded worker processes (the scheduler runs in this process and is not counted).

Memory is the peak resident set (``VmHWM`` from ``/proc/<pid>/status``, the kernel's high-water mark, polled every
0.2 s until the process ends) of the launcher and of each worker process. A size runs only if every runner took at
most ``--max-seconds`` on the previous size. Every run records the load average: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from benchmarks import common

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set so far (VmHWM), in MB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def is_sdk_worker(command: str) -> bool:
    """A Python process running Beam's SDK worker (not the shell that starts it)."""
    return "sdk_worker" in command and "python" in command.split(" ", 1)[0]


def children(pid: int) -> list[int]:
    """Direct and indirect child processes (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


class PeakMemory:
    """Polls the peak RSS of a launcher (and its descendants) and of given extra processes until stopped."""

    def __init__(self, launcher: int, workers: list[int] | None = None, interval: float = 0.2) -> None:
        self.launcher, self.fixed_workers, self.interval = launcher, workers, interval
        self.peaks: dict[int, float] = {}
        self.commands: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        watched = [self.launcher, *(self.fixed_workers if self.fixed_workers is not None else children(self.launcher))]
        for pid in watched:
            peak = peak_rss_mb(pid)
            if peak is not None:
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), peak)
                self.commands.setdefault(pid, command_of(pid))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # long-lived Dask workers: their final high-water mark


def write_log(folder: str, events: int, events_per_file: int, seed: int = 0) -> list[str]:
    """The synthetic log of ``events`` rows, cut into files of ``events_per_file`` rows (users interleave)."""
    from pipeline import synthetic

    os.makedirs(folder, exist_ok=True)
    users, items = max(10, events // 20), max(50, events // 50)
    whole = os.path.join(folder, "whole.tsv.tmp")
    with open(whole, "w") as f:
        synthetic.generate(f, users=users, items=items, events=events, seed=seed)
    paths: list[str] = []
    with open(whole) as f:
        out = None
        for n, line in enumerate(f):
            if n % events_per_file == 0:
                if out is not None:
                    out.close()
                paths.append(os.path.join(folder, f"log-{len(paths):04d}.tsv"))
                out = open(paths[-1], "w")
            out.write(line)
        if out is not None:
            out.close()
    os.remove(whole)
    return paths


def run_once(runner: str, log_dir: str, output: str, timeout: float) -> dict[str, Any]:
    args = [
        sys.executable,
        "-m",
        "pipeline.run",
        f"--input={log_dir}",
        "--input_format=interactions",
        "--split=loo",
        f"--output={output}",
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [common.REPO, os.environ.get("PYTHONPATH")])))
    cluster = None
    worker_pids: list[int] | None = None
    if runner == "direct":
        args += ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    else:
        import distributed

        os.environ["PYTHONPATH"] = env["PYTHONPATH"]  # the spawned workers import the repo's code
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        )
        with distributed.Client(cluster) as client:
            worker_pids = sorted(client.run(os.getpid).values())
        args += [f"--runner={DASK_RUNNER}", f"--dask_client_address={cluster.scheduler_address}"]
    load_before = os.getloadavg()
    started = time.perf_counter()
    try:
        process = subprocess.Popen(args, cwd=common.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        with PeakMemory(process.pid, worker_pids) as memory:
            log, _ = process.communicate(timeout=timeout)
        seconds = time.perf_counter() - started
    finally:
        if cluster is not None:
            cluster.close()
    if process.returncode != 0:
        raise RuntimeError(f"{runner} failed ({process.returncode}): {log.decode(errors='replace')[-2000:]}")
    launcher = round(memory.peaks.pop(process.pid, 0.0), 1)
    # direct: the launcher's children that run Beam's SDK worker (sdk_worker_main); dask: the cluster's workers
    workers = sorted(
        (round(mb, 1) for pid, mb in memory.peaks.items() if runner == "dask" or is_sdk_worker(memory.commands[pid])),
        reverse=True,
    )
    others = {
        memory.commands[pid][:120]: round(mb, 1) for pid, mb in memory.peaks.items() if round(mb, 1) not in workers
    }
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": {"launcher": launcher, "workers": workers, **({"other_processes": others} if others else {})},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


PACKAGES = (*common.PACKAGES, "dask", "distributed")


def merge(previous: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with ``previous``'s rows too (sorted by size, runner); the earlier runs' commands, times and
    machines are kept under ``earlier_runs``."""
    earlier = [*previous.get("earlier_runs", []), {k: previous.get(k) for k in ("command", "measured_at", "machine")}]
    rows = sorted([*previous["rows"], *result["rows"]], key=lambda row: (row["events"], row["runner"]))
    return {
        **result,
        "rows": rows,
        # An earlier run's skips stay true of that run only: say which.
        "skipped": [
            *(
                s if s.startswith("earlier run") else f"earlier run ({previous.get('command')}): {s}"
                for s in previous.get("skipped", [])
            ),
            *result["skipped"],
        ],
        "earlier_runs": earlier,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,10000000", help="events per log, comma-separated, ascending")
    parser.add_argument("--runners", default="direct,dask")
    parser.add_argument("--events-per-file", type=int, default=250_000)
    parser.add_argument("--max-seconds", type=float, default=240, help="skip larger sizes after a slower run")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", default=os.path.join(common.RESULTS, "pipeline_scaling.json"))
    parser.add_argument(
        "--append",
        action="store_true",
        help="add the rows to --out's (another size measured later); keeps both commands",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    runners = args.runners.split(",")

    result = {
        **common.envelope(common.command_line("benchmarks.pipeline_scaling", argv), PACKAGES),
        "what": "python -m pipeline.run --split loo on a synthetic log (events // 20 users, events // 50 items) cut "
        "into files of events_per_file rows; 2 worker processes per runner; wall time of the launcher process "
        "(start-up included); peak RSS (VmHWM) per process",
        "runners": {
            "direct": "--direct_num_workers=2 --direct_running_mode=multi_processing",
            "dask": f"--runner={DASK_RUNNER} --dask_client_address=<LocalCluster(n_workers=2, threads_per_worker=1, "
            "processes=True)> (scheduler in the benchmark process, not counted)",
        },
        "events_per_file": args.events_per_file,
        "shared_machine": "the machine was shared: a training job ran in the background and the benchmark ran under "
        "nice -n 19, so times are upper bounds; see each row's load average (2 cores)",
    }
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pipeline_scaling_") as tmp:
        for events in sizes:
            if rows and max(r["seconds"] for r in rows if r["events"] == rows[-1]["events"]) > args.max_seconds:
                skipped.append(f"{events} events: the previous size took more than {args.max_seconds:.0f} s")
                continue
            log_dir = os.path.join(tmp, f"log_{events}")
            files = write_log(log_dir, events, args.events_per_file)
            for runner in runners:
                measured = run_once(runner, log_dir, os.path.join(tmp, f"out_{events}_{runner}"), args.timeout)
                row = {"events": events, "files": len(files), "runner": runner, **measured}
                row["events_per_s"] = round(events / measured["seconds"])
                rows.append(row)
                print(
                    f"{events:>10,} events  {runner:6}  {measured['seconds']:7.1f} s  {row['events_per_s']:>7,} ev/s  "
                    f"peak RSS launcher {measured['peak_rss_mb']['launcher']:.0f} MB, workers "
                    f"{measured['peak_rss_mb']['workers']} MB  (load {measured['load_average_before'][0]:.1f})",
                    flush=True,
                )
    slowest = max(rows, key=lambda row: (row["events"], row["seconds"]), default=None)
    if slowest is not None and slowest["seconds"] > args.max_seconds and not skipped:
        skipped.append(
            f"sizes above {slowest['events']} events: not run, {slowest['runner']} took {slowest['seconds']:.0f} s "
            f"there (> --max-seconds {args.max_seconds:.0f})"
        )
    result.update(rows=rows, skipped=skipped)
    if args.append and os.path.exists(args.out):
        with open(args.out) as f:
            result = merge(json.load(f), result)
    common.write_result(args.out, result)
    print(f"wrote {common.repo_relative(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
