"""Beam pipeline scaling: events/s, CPU seconds per million events and peak memory per process, per runner, with a
columnar one-process script beside them as a floor.

    python -m benchmarks.pipeline_scaling [--sizes 1000000,10000000,30000000] \\
        [--runners direct1,direct2,default,dask,columnar] [--repeat 1] [--events-per-file 250000] [--seed 0] \\
        [--log-cache DIR] [--keep-outputs DIR] [--max-seconds 3600] [--timeout 7200] \\
        [--out benchmarks/results/pipeline_scaling.json] [--append]

For each size a synthetic log (`pipeline.synthetic`, ``events // 20`` users, ``events // 50`` items, as
``benchmarks.speed``) is written as files of ``--events-per-file`` events (logs usually arrive as many files; a file
is read by one worker, so the files are what a runner can spread); ``--log-cache DIR`` keeps the logs across
invocations (``DIR/log_<events>_per<events per file>_seed<seed>/``, reused when its marker file says the same
sizes and seed), else they go to a temporary folder. Then each runner runs ``--repeat`` times, each run a fresh
launcher process of ``python -m pipeline.run --input <log> --input_format interactions --split loo --output <tmp>``:

- ``direct1``: ``--direct_num_workers=1`` (everything in the launcher process);
- ``direct2``: ``--direct_num_workers=2 --direct_running_mode=multi_processing`` (the launcher runs the shuffles, two
  SDK worker processes the steps); ``direct`` is an alias (the name of older results);
- ``default``: no runner flag at all: whatever `pipeline.run`'s defaults are when it runs;
- ``dask``: ``--runner=...DaskRunner --dask_client_address=...`` against a fresh ``distributed.LocalCluster`` of 2
  single-threaded worker processes (the scheduler runs in this benchmark process);
- ``columnar``: ``python -m benchmarks.columnar_reference`` (pyarrow + numpy, one process): the floor, NOT the
  product (no rejected rows, no accounting, one machine; see its docstring);
- ``ceiling1``, ``ceiling2``: ``python -m benchmarks.parallel_ceiling --processes 1|2``, NOT the pipeline: the same
  plain-Python work in one process and split over two; ``wall ceiling2 / ceiling1`` is this machine's own
  two-process ratio in the same rounds, the bound for the pipeline's ``default / direct1``.

Per run (a row):

- ``seconds``: wall time of the launcher process, start-up included; ``events_per_s`` = events / seconds.
- ``cpu_seconds``: user + sys CPU of the whole process tree. ``cpu.wait4`` is the launcher's ``os.wait4`` rusage,
  which on Linux includes every descendant its tree reaped; ``cpu.polled`` sums each process's own utime + stime
  from ``/proc/<pid>/stat``, polled every 0.2 s until it ends (the last value seen: a lower bound). ``cpu_seconds``
  is the larger; ``cpu.descendants_reaped`` says whether wait4 covered the polled children (Beam reaps its SDK
  workers, so it should). Dask adds the cluster processes' CPU during the run (``cpu.cluster``: workers and nannies,
  /proc before and after) and the scheduler's (``cpu.scheduler``: this process's CPU during the run less the
  poller thread's). ``cpu_seconds_per_million_events`` = cpu_seconds / events * 1e6; ``cpu.per_process``.
- ``peak_rss_mb``: the peak resident set (``VmHWM``, the kernel's high-water mark, polled) of the launcher, of each
  worker (direct: the launcher's children running Beam's ``sdk_worker_main``; dask: the cluster's workers) and of
  every other process (``other_processes``); ``peak_rss_mb_max`` the largest of them and of wait4's ``ru_maxrss``
  (the largest process of the reaped tree, exact even for a process that ended between two polls; also the
  launcher's value when it had no child).
- ``metadata``: ``metadata.json``'s ``counts`` (rows_read, rows_written, rows_rejected, rows_filtered, users_read,
  users_written) and ``records``; ``metadata_problems`` lists what does not add up (rows_read != events, rows read
  != written + rejected + filtered, a split's records != users_written), so a run that lost events shows.
- ``ok``: exit code 0 and no metadata problem. A failed run (non-zero exit, timeout) is a row with ``ok: false``,
  ``exit_code`` and ``log_tail`` (its last lines), not a crash of the benchmark.
- ``reported_runner``: the runner the launcher logged (``default`` shows what the default is);
  ``load_average_before``/``_after``: the machine may be shared (2 cores).

``summary`` has per size and runner the medians over the ok repeats, the ok count, and the ratios: wall of each
runner / direct1's, dask events/s / direct2's and / default's, cpu seconds / the columnar floor's. A size runs only
if every pipeline runner took at most ``--max-seconds`` (median) on the previous size. ``--append`` merges the rows
into ``--out``'s. Outputs are deleted after each run unless ``--keep-outputs DIR``
(``DIR/out_<events>_<runner>_<repeat>``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from benchmarks import common

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
RUNNERS = ("direct1", "direct2", "default", "dask", "columnar", "ceiling1", "ceiling2")
# Not the pipeline: the machine's own one- and two-process times of the same pure-Python work
# (`benchmarks.parallel_ceiling`), compared with each other only.
CEILING = ("ceiling1", "ceiling2")
ALIASES = {"direct": "direct2"}
PIPELINE = ["-m", "pipeline.run", "--input_format=interactions", "--split=loo"]
RUNNER_FLAGS = {
    "direct1": ["--direct_num_workers=1"],
    "direct2": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
    "default": [],
}
LOG_MARKER = ".pipeline_scaling_log.json"  # hidden: the pipeline does not read hidden files of an input folder
LOG_TAIL_LINES = 30
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- /proc ------------------------------------------------------------------------------------------------------


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


def proc_stat(pid: int) -> tuple[str, int, float] | None:
    """``(state, parent pid, own user + sys CPU seconds)`` from ``/proc/<pid>/stat``; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the command (field 2) may hold spaces and parentheses
    try:
        return fields[0], int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (IndexError, ValueError):
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


def alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


class ProcessWatch:
    """Polls, every ``interval`` s until stopped, the peak RSS and own CPU seconds of a launcher, its descendants
    (also those orphaned after they were first seen) and given extra processes (a Dask cluster's)."""

    def __init__(self, launcher: int, extra: list[int] | None = None, interval: float = 0.2) -> None:
        self.launcher, self.extra, self.interval = launcher, list(extra or []), interval
        self.peaks: dict[int, float] = {}
        self.cpu: dict[int, float] = {}  # last own utime + stime seen
        self.commands: dict[int, str] = {}
        self.poller_cpu = 0.0  # the polling thread's own CPU seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)
        self.poller_cpu = time.thread_time()

    def sample(self) -> None:
        watched = dict.fromkeys([self.launcher, *children(self.launcher), *self.extra, *self.cpu])
        for pid in watched:
            stat, peak = proc_stat(pid), peak_rss_mb(pid)
            if stat is None:
                continue
            self.cpu[pid] = max(self.cpu.get(pid, 0.0), stat[2])  # a zombie's is final
            if peak is not None:  # a zombie has none: its last live sample stands
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), peak)
            command = command_of(pid)  # again each time: a forked child shows its parent's until it execs
            if command or pid not in self.commands:
                self.commands[pid] = command

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # long-lived Dask workers: their final values


# --- logs -------------------------------------------------------------------------------------------------------


def write_log(folder: str, events: int, events_per_file: int, seed: int = 0) -> list[str]:
    """The synthetic log of ``events`` rows, cut into files of ``events_per_file`` rows (users interleave)."""
    from pipeline import synthetic

    os.makedirs(folder, exist_ok=True)
    users, items = log_shape(events)
    whole = os.path.join(folder, ".whole.tsv.tmp")
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


def log_shape(events: int) -> tuple[int, int]:
    return max(10, events // 20), max(50, events // 50)


def log_params(events: int, events_per_file: int, seed: int) -> dict[str, Any]:
    users, items = log_shape(events)
    return {"events": events, "events_per_file": events_per_file, "seed": seed, "users": users, "items": items}


def cached_log(cache: str, events: int, events_per_file: int, seed: int) -> tuple[str, list[str], bool]:
    """``(folder, files, reused)``: the log in ``cache``, written unless a complete one with the same parameters is
    there (its marker, written last, names them and the files' sizes). A lock keeps two invocations apart."""
    folder = os.path.join(cache, f"log_{events}_per{events_per_file}_seed{seed}")
    os.makedirs(cache, exist_ok=True)
    params = log_params(events, events_per_file, seed)
    with open(os.path.join(cache, f".{os.path.basename(folder)}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = os.path.join(folder, LOG_MARKER)
        try:
            with open(marker) as f:
                found = json.load(f)
            files = [os.path.join(folder, name) for name in found["files"]]
            if found["params"] == params and all(
                os.path.getsize(p) == size for p, size in zip(files, found["sizes"], strict=True)
            ):
                return folder, files, True
        except (OSError, ValueError, KeyError, TypeError):
            pass
        shutil.rmtree(folder, ignore_errors=True)
        files = write_log(folder, events, events_per_file, seed)
        with open(marker + ".tmp", "w") as f:
            json.dump(
                {
                    "params": params,
                    "files": [os.path.basename(p) for p in files],
                    "sizes": [os.path.getsize(p) for p in files],
                },
                f,
                indent=1,
            )
        os.replace(marker + ".tmp", marker)
        return folder, files, False


# --- one run ----------------------------------------------------------------------------------------------------


def canonical(runner: str) -> str:
    runner = ALIASES.get(runner, runner)
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}; choose from {', '.join(RUNNERS)} (or direct = direct2)")
    return runner


def command(runner: str, log_dir: str, output: str, dask_address: str | None = None) -> list[str]:
    if runner in CEILING:
        return [sys.executable, "-m", "benchmarks.parallel_ceiling", f"--input={log_dir}", f"--processes={runner[-1]}"]
    if runner == "columnar":
        return [sys.executable, "-m", "benchmarks.columnar_reference", f"--input={log_dir}", f"--output={output}"]
    args = [sys.executable, *PIPELINE, f"--input={log_dir}", f"--output={output}"]
    if runner == "dask":
        return [*args, f"--runner={DASK_RUNNER}", f"--dask_client_address={dask_address}"]
    return [*args, *RUNNER_FLAGS[runner]]


def read_metadata(output: str, events: int) -> tuple[dict[str, Any] | None, list[str]]:
    """The run's counts and records from ``metadata.json``, and what in them does not add up."""
    try:
        with open(os.path.join(output, "metadata.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        return None, [f"no readable metadata.json: {e}"]
    counts = meta.get("counts", {})
    keys = ("rows_read", "rows_written", "rows_rejected", "rows_filtered", "users_read", "users_written")
    found = {k: counts[k] for k in keys if k in counts}
    found["records"] = meta.get("records", {})
    problems = []
    if found.get("rows_read") != events:
        problems.append(f"rows_read {found.get('rows_read')} != {events} events")
    written = sum(found.get(k, 0) for k in ("rows_written", "rows_rejected", "rows_filtered"))
    if found.get("rows_read") != written:
        problems.append(f"rows_read {found.get('rows_read')} != written + rejected + filtered {written}")
    for split, n in sorted(found["records"].items()):
        if n != found.get("users_written"):
            problems.append(f"{split} records {n} != users_written {found.get('users_written')}")
    if not found["records"]:
        problems.append("no records counted")
    return found, problems


def start_cluster(env: dict[str, str]) -> tuple[Any, list[int], list[int]]:
    """A fresh 2-worker LocalCluster: ``(cluster, worker pids, every cluster process pid)``."""
    import distributed

    os.environ["PYTHONPATH"] = env["PYTHONPATH"]  # the spawned workers import the repo's code
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    with distributed.Client(cluster) as client:
        workers = sorted(client.run(os.getpid).values())
    return cluster, workers, sorted(set(children(os.getpid())) | set(workers))


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_once(runner: str, log_dir: str, output: str, timeout: float, events: int) -> dict[str, Any]:
    """One run of ``runner`` on ``log_dir`` into ``output`` (created fresh): the row's measured fields."""
    shutil.rmtree(output, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [common.REPO, os.environ.get("PYTHONPATH")])))
    cluster, dask_workers, cluster_pids = None, [], []
    if runner == "dask":
        cluster, dask_workers, cluster_pids = start_cluster(env)
    args = command(runner, log_dir, output, cluster.scheduler_address if cluster is not None else None)
    log_path = output.rstrip("/") + ".log"
    load_before = os.getloadavg()
    cluster_before = {pid: (proc_stat(pid) or ("", 0, 0.0))[2] for pid in cluster_pids}
    self_before = self_cpu()
    timed_out = threading.Event()
    started = time.perf_counter()
    try:
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                args, cwd=common.REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

        def kill_on_timeout() -> None:
            timed_out.set()
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill_on_timeout)
        timer.start()
        with ProcessWatch(process.pid, cluster_pids) as watch:
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
            timer.cancel()
            watch.sample()  # descendants still running now are orphans: their CPU so far
        scheduler = self_cpu() - self_before - watch.poller_cpu
    finally:
        if cluster is not None:
            cluster.close()
    leftovers = [pid for pid in watch.commands if pid not in cluster_pids and pid != process.pid and alive(pid)]
    for pid in leftovers:  # started by this run's launcher and still there: they would load the next run
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)

    tree = [pid for pid in watch.cpu if pid not in cluster_pids]
    polled = sum(watch.cpu[pid] for pid in tree)
    wait4 = usage.ru_utime + usage.ru_stime
    cpu: dict[str, Any] = {
        "wait4": round(wait4, 2),
        "polled": round(polled, 2),
        "descendants_reaped": wait4 + 0.1 >= polled,
    }
    cpu_seconds = max(wait4, polled)
    if runner == "dask":
        cluster_cpu = sum(max(0.0, watch.cpu.get(pid, 0.0) - cluster_before[pid]) for pid in cluster_pids)
        cpu.update(cluster=round(cluster_cpu, 2), scheduler=round(scheduler, 2))
        cpu_seconds += cluster_cpu + scheduler

    def is_worker(pid: int) -> bool:
        return pid in dask_workers if runner == "dask" else is_sdk_worker(watch.commands.get(pid, ""))

    def cluster_cpu_of(pid: int) -> float:
        return watch.cpu.get(pid, 0.0) - cluster_before.get(pid, 0.0)

    workers = sorted((pid for pid in watch.peaks if pid != process.pid and is_worker(pid)), key=watch.peaks.get)[::-1]
    others = [pid for pid in watch.peaks if pid != process.pid and not is_worker(pid)]
    # wait4's ru_maxrss (KB) is the largest of the launcher and its reaped descendants, the kernel's own high-water
    # mark: what a process that ended between two polls reached. The launcher's own when it had no child.
    tree_max = usage.ru_maxrss / 1024
    launcher_peak, launcher_cpu = watch.peaks.get(process.pid, 0.0), watch.cpu.get(process.pid, 0.0)
    if not [pid for pid in tree if pid != process.pid]:
        launcher_peak, launcher_cpu = max(launcher_peak, tree_max), wait4
    peaks = {
        "launcher": round(launcher_peak, 1),
        "workers": [round(watch.peaks[pid], 1) for pid in workers],
    }
    per_process = {
        "launcher": round(launcher_cpu, 2),
        "workers": [round(cluster_cpu_of(pid), 2) for pid in workers],
    }
    if others:
        peaks["other_processes"] = [
            {"command": common.portable(watch.commands[pid])[:120], "peak_rss_mb": round(watch.peaks[pid], 1)}
            for pid in others
        ]
        per_process["other_processes"] = [
            {"command": common.portable(watch.commands[pid])[:120], "cpu_seconds": round(cluster_cpu_of(pid), 2)}
            for pid in others
        ]
    cpu["per_process"] = per_process

    with open(log_path, "rb") as f:
        log_text = f.read().decode(errors="replace")
    reported = re.search(r"input file\(s\), runner (\S+?),", log_text)
    done = process.returncode == 0 and runner not in CEILING
    metadata, problems = read_metadata(output, events) if done else (None, [])
    row: dict[str, Any] = {
        "ok": process.returncode == 0 and not problems and not timed_out.is_set(),
        "exit_code": process.returncode,
        **({"timed_out_after_s": timeout} if timed_out.is_set() else {}),
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds),
        "cpu_seconds": round(cpu_seconds, 2),
        "cpu_seconds_per_million_events": round(cpu_seconds / events * 1e6, 2),
        "cpu": cpu,
        "peak_rss_mb": peaks,
        "peak_rss_mb_max": round(max([tree_max, *watch.peaks.values()]), 1),
        "metadata": metadata,
        "metadata_problems": problems,
        "reported_runner": reported.group(1) if reported else None,
        "command": shlex.join(["python", *(common.portable(a) for a in args[1:])]),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    if leftovers:
        row["leftover_processes_killed"] = [common.portable(watch.commands[pid])[:120] for pid in leftovers]
    if not row["ok"]:
        row["log_tail"] = log_text.splitlines()[-LOG_TAIL_LINES:]
    return row


# --- the result -------------------------------------------------------------------------------------------------


def median_of(per_runner: dict[str, Any], runner: str, key: str) -> float | None:
    """``runner``'s median ``key`` of one size, or that of its older name (``direct`` for direct2)."""
    old_names = [old for old, new in ALIASES.items() if new == runner]
    found = [per_runner[name] for name in (runner, *old_names) if name in per_runner]
    return found[0].get(key) if found else None


def round_ratios(rows: list[dict[str, Any]], events: int, runner: str, base: str = "direct1") -> list[float]:
    """``runner``'s wall seconds over ``base``'s, one ratio per repeat round in which both ran ok (side by side)."""
    seconds: dict[tuple[str, int], float] = {
        (row["runner"], row["repeat"]): row["seconds"]
        for row in rows
        if row["events"] == events and row.get("ok", True) and row.get("seconds") and row.get("repeat")
    }
    return [
        round(seconds[(runner, repeat)] / seconds[(base, repeat)], 3)
        for runner_, repeat in sorted(seconds)
        if runner_ == runner and (base, repeat) in seconds
    ]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per size: per runner the medians of the ok repeats (and how many were ok), then the ratios."""
    out: dict[str, Any] = {}
    for events in sorted({row["events"] for row in rows}):
        per_runner: dict[str, Any] = {}
        for runner in dict.fromkeys(row["runner"] for row in rows if row["events"] == events):
            runs = [row for row in rows if row["events"] == events and row["runner"] == runner]
            good = [row for row in runs if row.get("ok", True)]
            entry: dict[str, Any] = {"ok_runs": f"{len(good)} of {len(runs)}"}
            for key in ("seconds", "events_per_s", "cpu_seconds", "cpu_seconds_per_million_events", "peak_rss_mb_max"):
                values = [row[key] for row in good if row.get(key) is not None]
                if values:
                    entry[key] = round(statistics.median(values), 2)
            per_runner[runner] = entry
        ratios: dict[str, float] = {}

        pairs = [(runner, "direct1") for runner in per_runner if runner not in ("direct1", *CEILING)]
        for runner, base in [*pairs, ("ceiling2", "ceiling1")]:
            one = median_of(per_runner, base, "seconds")
            if one and runner in per_runner and per_runner[runner].get("seconds"):
                ratios[f"wall {runner} / {base}"] = round(per_runner[runner]["seconds"] / one, 3)
                by_round = round_ratios(rows, events, runner, base)
                if by_round:
                    ratios[f"wall {runner} / {base}, round by round"] = by_round
        dask = median_of(per_runner, "dask", "events_per_s")
        for other in ("direct2", "default"):
            if dask and median_of(per_runner, other, "events_per_s"):
                ratios[f"events_per_s dask / {other}"] = round(dask / median_of(per_runner, other, "events_per_s"), 3)
        floor = median_of(per_runner, "columnar", "cpu_seconds")
        for runner in per_runner:
            if floor and runner not in ("columnar", *CEILING) and per_runner[runner].get("cpu_seconds"):
                ratios[f"cpu {runner} / columnar"] = round(per_runner[runner]["cpu_seconds"] / floor, 2)
        out[str(events)] = {"runners": per_runner, "ratios": ratios}
    return out


PACKAGES = (*common.PACKAGES, "dask", "distributed", "pyarrow")


def merge(previous: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with ``previous``'s rows too (sorted by size, runner, repeat); the earlier runs' commands, times
    machines and commits are kept under ``earlier_runs``."""
    earlier_run = {k: previous.get(k) for k in ("command", "measured_at", "machine", "git")}
    earlier = [*previous.get("earlier_runs", []), earlier_run]
    # The new rounds are numbered after the earlier ones of their size, so the round-by-round pairs stay apart.
    last_round: dict[int, int] = {}
    for row in previous["rows"]:
        last_round[row["events"]] = max(last_round.get(row["events"], 0), row.get("repeat", 1))
    added = [{**row, "repeat": row.get("repeat", 1) + last_round.get(row["events"], 0)} for row in result["rows"]]
    rows = sorted([*previous["rows"], *added], key=lambda row: (row["events"], row["runner"], row.get("repeat", 1)))
    merged = {
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
    if "summary" in result:
        merged["summary"] = summarize(rows)
    return merged


def print_row(row: dict[str, Any]) -> None:
    rss = row["peak_rss_mb"]
    status = "ok" if row["ok"] else f"FAILED (exit {row['exit_code']}; {'; '.join(row['metadata_problems'])})"
    print(
        f"{row['events']:>10,} events  {row['runner']:8} #{row['repeat']}  {row['seconds']:7.1f} s  "
        f"{row['events_per_s']:>7,} ev/s  {row['cpu_seconds']:7.1f} CPU s ({row['cpu_seconds_per_million_events']:.1f}"
        f" per M)  peak RSS launcher {rss['launcher']:.0f} MB, workers {rss['workers']} MB, max "
        f"{row['peak_rss_mb_max']:.0f} MB  (load {row['load_average_before'][0]:.1f})  {status}",
        flush=True,
    )


@contextlib.contextmanager
def folder(path: str | None, prefix: str) -> Iterator[str]:
    if path:
        os.makedirs(path, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield tmp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,10000000,30000000", help="events per log, comma list, ascending")
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"comma list of {', '.join(RUNNERS)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (size, runner)")
    parser.add_argument("--events-per-file", type=int, default=250_000)
    parser.add_argument("--seed", type=int, default=0, help="the synthetic log's seed")
    parser.add_argument("--log-cache", default=None, metavar="DIR", help="keep the generated logs here (reused)")
    parser.add_argument("--keep-outputs", default=None, metavar="DIR", help="keep each run's output folder here")
    parser.add_argument("--max-seconds", type=float, default=3600, help="skip larger sizes after a slower run")
    parser.add_argument("--timeout", type=float, default=7200, help="a run's limit: killed and recorded as failed")
    parser.add_argument("--out", default=os.path.join(common.RESULTS, "pipeline_scaling.json"))
    parser.add_argument(
        "--append",
        action="store_true",
        help="add the rows to --out's (another size measured later); keeps both commands",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    try:
        runners = list(dict.fromkeys(canonical(r) for r in args.runners.split(",") if r))
    except ValueError as e:
        parser.error(str(e))
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")

    result = {
        **common.envelope(common.command_line("benchmarks.pipeline_scaling", argv), PACKAGES),
        "what": "python -m pipeline.run --split loo on a synthetic log (events // 20 users, events // 50 items) cut "
        "into files of events_per_file rows, per runner; wall time of the launcher process (start-up included); CPU "
        "seconds of the whole process tree (Dask: + cluster processes + scheduler); peak RSS (VmHWM) per process; "
        "metadata.json counts checked against the events. columnar = benchmarks.columnar_reference, a one-process "
        "floor, not the product",
        "runners": {
            "direct1": " ".join(RUNNER_FLAGS["direct1"]),
            "direct2": " ".join(RUNNER_FLAGS["direct2"]) + " (older results call it direct)",
            "default": "no runner flag: pipeline.run's defaults (reported_runner: what it logged)",
            "dask": f"--runner={DASK_RUNNER} --dask_client_address=<LocalCluster(n_workers=2, threads_per_worker=1, "
            "processes=True)> (scheduler in the benchmark process, counted in cpu.scheduler)",
            "columnar": "python -m benchmarks.columnar_reference: pyarrow + numpy in one process, the floor (no "
            "rejected rows, no accounting, one machine), not the product",
            "ceiling1": "python -m benchmarks.parallel_ceiling --processes=1: each file of the log grouped by user in "
            "plain Python, one process; not the pipeline",
            "ceiling2": "the same split over 2 forked processes: ceiling2 / ceiling1 is the machine's own two-process "
            "ratio in the same minutes",
        },
        "events_per_file": args.events_per_file,
        "seed": args.seed,
        "repeat": args.repeat,
    }
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    with folder(None, "pipeline_scaling_") as tmp, folder(args.log_cache, "pipeline_scaling_logs_") as cache:
        outputs = args.keep_outputs or tmp
        os.makedirs(outputs, exist_ok=True)
        for events in sizes:
            previous = [r for r in rows if r["events"] == (rows[-1]["events"] if rows else None)]
            slow = [
                r["runner"]
                for r in previous
                if r["runner"] != "columnar"
                and statistics.median(x["seconds"] for x in previous if x["runner"] == r["runner"]) > args.max_seconds
            ]
            if slow:
                skipped.append(
                    f"{events} events: {slow[0]} took more than {args.max_seconds:.0f} s on the previous size"
                )
                continue
            started = time.perf_counter()
            log_dir, files, reused = cached_log(cache, events, args.events_per_file, args.seed)
            print(
                f"{events:,} events: {len(files)} files in {log_dir} "
                f"({'reused' if reused else f'written in {time.perf_counter() - started:.0f} s'})",
                flush=True,
            )
            # Repeat-major: each round runs every runner once, so a ratio compares runs minutes apart, not a block of
            # one runner's runs against a later block of another's (this machine's speed drifts by 10-20%).
            for repeat in range(1, args.repeat + 1):
                for runner in runners:
                    output = os.path.join(outputs, f"out_{events}_{runner}_{repeat}")
                    row = {"events": events, "files": len(files), "runner": runner, "repeat": repeat}
                    row.update(run_once(runner, log_dir, output, args.timeout, events))
                    rows.append(row)
                    print_row(row)
                    if not args.keep_outputs:
                        shutil.rmtree(output, ignore_errors=True)
    result.update(rows=rows, skipped=skipped, summary=summarize(rows))
    if args.append and os.path.exists(args.out):
        with open(args.out) as f:
            result = merge(json.load(f), result)
    common.write_result(args.out, result)
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {common.repo_relative(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
