"""Running a quality grid: preprocess each dataset once, train each cell in its own process, write one JSON a run,
then the table and plots. The library behind `benchmarks.quality` and `benchmarks.converge` (whose grids are quality
grids); the command-line parsing stays in those entry points.

    benchmarks/results/<grid>/runs/<dataset>/<backbone>/<method>/seed<k>.json   one finished run (committed)
    benchmarks/results/<grid>/results.md, *.png                                    table and plots (committed)
    benchmarks/results/scratch/<grid>/...                                          logs, checkpoints (git-ignored)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import yaml

from benchmarks import commands, common, published, report
from benchmarks.grid import Cell, DatasetSpec, GridSpec

log = logging.getLogger("benchmarks.quality")


class DataMissing(RuntimeError):
    """The raw input of a dataset is absent (a fresh clone has no ../shared/data)."""


def data_cache_root() -> str:
    return os.environ.get("MDCNS_DATA_CACHE") or os.path.join(common.RESULTS, "data")


def scratch_root(grid: GridSpec) -> str:
    return os.path.join(os.environ.get("MDCNS_BENCH_SCRATCH") or os.path.join(common.RESULTS, "scratch"), grid.name)


def run_json_path(results_dir: str, cell: Cell) -> str:
    return os.path.join(results_dir, "runs", cell.dataset, cell.backbone, cell.method, f"seed{cell.seed}.json")


def pipeline_command(spec: DatasetSpec, data_root: str, output: str) -> list[str]:
    """The pipeline run that preprocesses ``spec`` (paths relative to ``data_root``) into ``output``."""
    split_file = ["--split_file", os.path.join(data_root, spec.split_file)] if spec.split_file else []
    return commands.pipeline_command(
        os.path.join(data_root, spec.input),
        spec.input_format,
        spec.split,
        output,
        "--overwrite",
        *split_file,
        *spec.pipeline_args,
    )


def preprocess(spec: DatasetSpec, data_root: str, dry_run: bool = False) -> tuple[str, dict[str, Any]]:
    """The dataset's preprocessed directory, running the pipeline once; the stamp file marks a complete output."""
    for needed in (spec.input, spec.split_file):
        raw = os.path.join(data_root, needed) if needed else None
        if raw and not os.path.exists(raw):
            raise DataMissing(
                f"{raw} is absent: real data lives in ../shared/data beside the repo (or pass --data-root)"
            )
    out = os.path.join(data_cache_root(), spec.cache_key())
    stamp_path = out + ".json"
    if os.path.exists(stamp_path) and os.path.exists(os.path.join(out, "metadata.json")):
        with open(stamp_path) as f:
            return out, json.load(f)
    command = pipeline_command(spec, data_root, out)
    if dry_run:
        return out, {"command": common.command_line("pipeline.run", command[3:]), "pending": True}
    log.info("preprocessing %s: %s", spec.name, " ".join(command))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    started = time.perf_counter()
    with open(out + ".log", "w") as logf:
        rc = subprocess.run(
            command, cwd=common.REPO, env=commands.child_env(), stdout=logf, stderr=subprocess.STDOUT
        ).returncode
    seconds = time.perf_counter() - started
    if rc != 0:
        raise RuntimeError(f"pipeline failed for {spec.name} (exit {rc}); log: {out}.log")
    with open(os.path.join(out, "metadata.json")) as f:
        metadata = json.load(f)
    stamp = {
        "input": spec.input,
        "input_format": spec.input_format,
        "split": spec.split,
        "pipeline_args": list(spec.pipeline_args),
        "split_file": spec.split_file,
        "split_file_sha256": metadata["split"].get("split_file_sha256"),
        "command": common.command_line("pipeline.run", command[3:]),
        "preprocess_seconds": round(seconds, 1),
        "n_users": metadata["n_users"],
        "n_items": metadata["n_items"],
        "records": metadata["records"],
        "rows_read": metadata["counts"].get("rows_read"),
        "created": common.now(),
    }
    common.write_json(stamp_path, stamp)
    return out, stamp


def config_hash(config_dict: dict[str, Any], cache_key: str) -> str:
    """Hash of what the cell trains: the keys whose value differs from the code's defaults.

    Hashing the difference, not the whole config, keeps a finished run valid when a later commit adds a config key
    with a default that reproduces the old behaviour (a stored config lacks the key; the new one holds its
    default: both leave it out), while a changed default changes the hash of every cell that relied on it.
    Machine-specific paths (data cache, scratch) are replaced or dropped so that moving the cache does not
    invalidate finished runs.
    """
    from mdcns_tf.config_loader import differences_from_defaults

    payload = json.loads(json.dumps(config_dict))
    payload.pop("output_dir", None)
    payload["data"]["dir"] = cache_key
    differences = differences_from_defaults(payload)
    return hashlib.sha256(json.dumps(differences, sort_keys=True).encode()).hexdigest()[:16]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return 0.0 if not n else (ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2]))


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


class GridRunner:
    def __init__(self, grid: GridSpec, data_root: str, results_dir: str, command: str) -> None:
        self.grid = grid
        self.data_root = data_root
        self.results_dir = results_dir
        self.command = command
        self.notes: dict[str, str] = {}  # cell id or dataset -> why it has no result
        self.data: dict[str, tuple[str, dict[str, Any]] | None] = {}
        combos = list(dict.fromkeys((c.dataset, c.backbone, c.method) for c in grid.cells()))
        self.order = {combo: i for i, combo in enumerate(combos)}

    def dataset(self, name: str, dry_run: bool) -> tuple[str, dict[str, Any]] | None:
        if name not in self.data:
            try:
                self.data[name] = preprocess(self.grid.datasets[name], self.data_root, dry_run)
            except (DataMissing, RuntimeError) as e:
                self.notes[name] = f"dataset `{name}` skipped: {e}"
                log.warning("%s", self.notes[name])
                self.data[name] = None
        return self.data[name]

    def plan(self, cell: Cell, dry_run: bool) -> dict[str, Any] | None:
        """Resolves a cell: its config, hash and status (done / todo); None (with a note) if it cannot run."""
        from mdcns_tf.config import ConfigError

        prepared = self.dataset(cell.dataset, dry_run)
        if prepared is None:
            return None
        data_dir, stamp = prepared
        scratch = os.path.join(scratch_root(self.grid), cell.dataset, cell.backbone, cell.method, f"seed{cell.seed}")
        try:
            config = self.grid.resolve(cell, data_dir, scratch)
        except ConfigError as e:
            self.notes[cell.id] = f"`{cell.id}` skipped: {e}"
            log.warning("%s", self.notes[cell.id])
            return None
        config_dict = config.to_dict()
        digest = config_hash(config_dict, self.grid.datasets[cell.dataset].cache_key())
        path = run_json_path(self.results_dir, cell)
        status = "todo"
        if os.path.exists(path):
            with open(path) as f:
                previous = json.load(f)
            status = "done" if self.stored_hash(previous, cell) == digest else "stale"
        if status != "done" and self.reuse(cell, digest, path, dry_run):
            status = "done"
        return {
            "cell": cell,
            "config": config_dict,
            "hash": digest,
            "scratch": scratch,
            "path": path,
            "status": status,
            "stamp": stamp,
        }

    def stored_hash(self, run: dict[str, Any], cell: Cell) -> str:
        """A finished run's hash recomputed from its stored config, so runs hashed by an older scheme compare."""
        return config_hash(run["config"], self.grid.datasets[cell.dataset].cache_key())

    def reuse(self, cell: Cell, digest: str, path: str, dry_run: bool = False) -> bool:
        """Copies a finished run of the same cell and config hash from a grid in ``reuse_runs_from``; the copy
        keeps its original ``grid`` field and gains ``reused_from`` so the table says where it was measured."""
        for other in self.grid.reuse_runs_from:
            source = run_json_path(os.path.join(os.path.dirname(self.results_dir), other), cell)
            if not os.path.exists(source):
                continue
            with open(source) as f:
                run = json.load(f)
            if self.stored_hash(run, cell) != digest:
                continue
            if dry_run:
                return True
            run["reused_from"] = common.repo_relative(source)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            common.write_json(path, run)
            log.info("%s: reusing the finished run of grid %s (same config hash %s)", cell.id, other, digest)
            return True
        return False

    def run_cell(self, plan: dict[str, Any]) -> dict[str, Any] | None:
        cell: Cell = plan["cell"]
        scratch = plan["scratch"]
        marker = os.path.join(scratch, "cell_hash.txt")
        if os.path.exists(marker):
            with open(marker) as f:
                if f.read().strip() != plan["hash"]:
                    # A checkpoint of a different config must not be resumed into this one.
                    shutil.rmtree(scratch)
        os.makedirs(scratch, exist_ok=True)
        with open(marker, "w") as f:
            f.write(plan["hash"])
        config_path = os.path.join(scratch, "config.cell.yaml")
        with open(config_path, "w") as f:
            yaml.safe_dump(plan["config"], f, sort_keys=False)
        command = commands.module_command("mdcns_tf.train", "--config", config_path)
        log_path = os.path.join(scratch, "train.log")
        load_before = self.machine_load()
        started_at = common.now()
        launched_unix = time.time()  # time-to-quality curves (benchmarks.converge) count from here: start-up included
        started = time.perf_counter()
        with open(log_path, "a") as logf:
            child = subprocess.Popen(
                command, cwd=common.REPO, env=commands.child_env(), stdout=logf, stderr=subprocess.STDOUT
            )
            # wait4: this child's own peak RSS (getrusage(RUSAGE_CHILDREN) would be the largest of all cells so far).
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = rc = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        metrics_path = os.path.join(scratch, "metrics.json")
        if rc != 0 or not os.path.exists(metrics_path):
            self.notes[cell.id] = f"`{cell.id}` failed (exit {rc}); log: `{common.repo_relative(log_path)}`"
            log.error("%s\n%s", self.notes[cell.id], tail(log_path))
            return None
        with open(metrics_path) as f:
            metrics = json.load(f)
        metrics.pop("export_path", None)
        spec = self.grid.datasets[cell.dataset]
        match = published.lookup(spec.input, spec.split, plan["config"])
        stamp = plan["stamp"]
        reference = None
        if match is not None:
            reference = {"ndcg@10": match.ndcg10, "recall@10": match.recall10, "source": match.source}
        run = {
            "status": "done",
            "grid": self.grid.name,
            "cell": cell.id,
            "dataset": cell.dataset,
            "backbone": cell.backbone,
            "method": cell.method,
            "seed": cell.seed,
            "order": self.order[(cell.dataset, cell.backbone, cell.method)],
            "config_hash": plan["hash"],
            "config_files": [common.repo_relative(p) for p in self.grid.config_files(cell)],
            "overrides": self.grid.overrides_for(cell, "<data cache>", "<scratch>"),
            "config": plan["config"],
            "metrics": metrics,
            "timings": {
                "launched_unix": round(launched_unix, 3),
                "wall_seconds": round(wall, 1),
                "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: ru_maxrss in KiB
                "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
                "train_seconds": metrics.get("train_seconds", 0.0),
                "seconds_per_epoch_median": median(metrics.get("seconds_per_epoch", [])),
                "preprocess_seconds": stamp.get("preprocess_seconds"),
                "load_average_1m_before": load_before,
                "load_average_1m_after": self.machine_load(),
            },
            "published": reference,
            "dataset_info": {
                k: stamp.get(k) for k in ("input", "input_format", "split", "n_users", "n_items", "records", "command")
            },
            "cell_command": f"python -m mdcns_tf.train --config {common.repo_relative(config_path)}",
            "started_at": started_at,
            # The envelope's timestamp is the end of the run (older run files call it ``finished_at``).
            **common.envelope(self.command),
        }
        common.write_json(plan["path"], run)
        return run

    @staticmethod
    def machine_load() -> float | None:
        try:
            return round(os.getloadavg()[0], 2)
        except OSError:
            return None

    def write_report(self, all_cells: list[Cell]) -> None:
        runs = report.load_runs(os.path.join(self.results_dir, "runs"))
        names = {c.id for c in all_cells}
        runs = [r for r in runs if r["cell"] in names]  # cells since dropped from the grid stay on disk, unlisted
        done = {r["cell"] for r in runs}
        notes = [n for key, n in self.notes.items() if key in self.grid.datasets]
        for cell in all_cells:
            if cell.id in done:
                continue
            if cell.dataset in self.notes:
                continue
            notes.append(self.notes.get(cell.id, f"`{cell.id}`: not run yet"))
        header = {
            "grid": self.grid.name,
            "description": self.grid.description,
            "grid_file": common.repo_relative(self.grid.path),
            "budget": self.grid.budget,
            "seeds": list(self.grid.seeds),
            **common.envelope(self.command),
        }
        report.write_markdown(os.path.join(self.results_dir, "results.md"), runs, header, notes)
        if runs:
            report.write_plots(self.results_dir, runs)


def run_grid(
    grid: GridSpec,
    data_root: str,
    results_dir: str,
    command: str,
    only: str | None = None,
    dry_run: bool = False,
    report_only: bool = False,
) -> int:
    """Runs (or resumes) the cells of ``grid`` matching ``only`` and rewrites the report after each; ``dry_run``
    lists them with their status, ``report_only`` rebuilds the report alone. The exit code: 0, 1 when a cell
    failed, 2 when nothing matches ``only``."""
    runner = GridRunner(grid, data_root, results_dir, command)
    all_cells = grid.cells()
    if report_only:
        runner.write_report(all_cells)
        print(f"wrote {os.path.join(results_dir, 'results.md')}")
        return 0

    cells = grid.cells(only)
    if not cells:
        print(f"error: no cell matches --only {only!r}", file=sys.stderr)
        return 2
    plans = [p for p in (runner.plan(c, dry_run) for c in cells) if p is not None]
    todo = [p for p in plans if p["status"] != "done"]
    print(
        f"grid {grid.name}: {len(cells)} cells selected, {len(plans) - len(todo)} done, {len(todo)} to run, "
        f"{len(cells) - len(plans)} skipped"
        + (
            f"; expected ~{grid.expected_minutes:.0f} min for the whole grid on the reference machine"
            if grid.expected_minutes
            else ""
        )
    )
    if dry_run:
        for plan in plans:
            print(f"  [{plan['status']:5}] {plan['cell'].id}  hash {plan['hash']}")
        for dataset, prepared in runner.data.items():
            if prepared and prepared[1].get("pending"):
                print(f"  preprocess {dataset}: {prepared[1]['command']}")
        for note in runner.notes.values():
            print(f"  note: {note}")
        return 0

    walls: dict[str, list[float]] = {}
    for i, plan in enumerate(todo, 1):
        cell = plan["cell"]
        log.info(
            "[%d/%d] %s%s: training (log: %s)",
            i,
            len(todo),
            cell.id,
            " (config changed, re-running)" if plan["status"] == "stale" else "",
            common.repo_relative(os.path.join(plan["scratch"], "train.log")),
        )
        run = runner.run_cell(plan)
        if run is not None:
            walls.setdefault(cell.method, []).append(run["timings"]["wall_seconds"])
            every = [w for ws in walls.values() for w in ws]
            # ETA per method: MDCNS steps cost about twice a uniform step.
            eta = sum(median(walls.get(p["cell"].method, every)) for p in todo[i:])
            test = run["metrics"].get("test", {})
            log.info(
                "[%d/%d] %s done in %.0fs: test ndcg@10 %.4f recall@10 %.4f (best epoch %s); ETA %.0f min",
                i,
                len(todo),
                cell.id,
                run["timings"]["wall_seconds"],
                test.get("ndcg@10", float("nan")),
                test.get("recall@10", float("nan")),
                run["metrics"].get("best_epoch"),
                eta / 60,
            )
        # Rewritten after every cell: a long grid shows its partial table while it runs.
        runner.write_report(all_cells)
    runner.write_report(all_cells)
    print(f"wrote {os.path.join(results_dir, 'results.md')}")
    failed = [c for c in runner.notes if "failed" in runner.notes[c]]
    return 1 if failed else 0
