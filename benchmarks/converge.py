"""Time to quality: validation NDCG@20 against wall-clock seconds and optimizer steps, ours beside the authors'.

    python -m benchmarks.converge --grid configs/benchmarks/converge_beauty.yaml [--only PATTERN] [--report-only]
        [--authors benchmarks/results/authors_logs/beauty_mdcns_gru4rec_peer.json --authors-run 'l1.0*kdt1.0']

A convergence grid is an ordinary quality grid (`benchmarks.grid`): its methods are the training settings being
compared (batch size, learning rate, positions, buckets, variant, distillation weight...). Its cells are trained by
`benchmarks.quality` (one subprocess each, resumable, one JSON per run); this module then reads every run's
per-epoch history, where each epoch carries its wall-clock end (``wall_time``) and the run its launch time
(``timings.launched_unix``), so the seconds axis includes process start-up, graph tracing and every validation pass.

Written to ``benchmarks/results/<grid>/``: ``convergence.json`` (the curves and the first epoch, step and second at
which each threshold is reached), ``convergence.md`` (the table) and ``converge_seconds.png`` /
``converge_steps.png`` / ``converge_epochs.png``. The authors' curves come from their released logs, parsed by
`benchmarks.authors_logs`; their runs take 121 steps an epoch (batch 1024 prefix samples).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import re
import sys
from typing import Any

from benchmarks import common, report
from benchmarks.grid import cell_matches, load_grid_or_report
from benchmarks.grid_runner import run_grid
from mdcns_tf import cli

log = logging.getLogger("benchmarks.converge")

THRESHOLDS = (0.053, 0.058, 0.062)
AUTHORS_STEPS_PER_EPOCH = 121  # ceil(123,086 prefixes / 1024), printed by their progress bars
MONITOR = report.MONITOR


def unfinished_curve(output_dir: str) -> list[dict[str, float]]:
    """Points of a training run still under way (or cut off), from its ``best/state.json`` history and the
    ``N steps/epoch`` line of its ``train.log`` (a grid cell's scratch folder); seconds are left out (no launch
    time is recorded before the run finishes)."""
    with open(os.path.join(output_dir, "best", "state.json")) as f:
        history = json.load(f)["history"]
    steps_per_epoch = 0
    log_path = os.path.join(output_dir, "train.log")
    if os.path.exists(log_path):
        with open(log_path, errors="replace") as f:
            found = re.findall(r"(\d+) steps/epoch", f.read())
        steps_per_epoch = int(found[-1]) if found else 0
    return [
        {"epoch": h["epoch"], "steps": h["epoch"] * steps_per_epoch, "seconds": None, "value": h[MONITOR]}
        for h in history
        if MONITOR in h
    ]


def authors_curve(parsed: dict[str, Any]) -> list[dict[str, float]]:
    """The same points for one parsed authors' log (`benchmarks.authors_logs.parse_log`); epochs count from 1 as
    ours do, and their seconds are the log's own (their GPU), not this machine's."""
    points = []
    elapsed: float | None = None  # some logs (their baselines') print no timings: no seconds, not zero
    for entry in parsed["epochs"]:
        epoch = entry["epoch"] + 1  # their logs count epochs from 0
        spent = [entry.get(key) for key in ("train_seconds", "eval_seconds") if entry.get(key) is not None]
        if spent:
            elapsed = (elapsed or 0.0) + sum(spent)
        points.append(
            {
                "epoch": epoch,
                "steps": epoch * AUTHORS_STEPS_PER_EPOCH,
                "seconds": None if elapsed is None else round(elapsed, 1),
                "value": entry["valid"]["ndcg@20"],
            }
        )
    return points


def parse_thresholds(text: str) -> tuple[float, ...]:
    """Comma-separated levels, e.g. "0.04,0.045", as a tuple; an argparse type, so that a bad list is a usage
    error, not a stack trace."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or list(values) != sorted(values) or not all(0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"need ascending NDCG levels in (0, 1), got {text!r}")
    return values


def summarize_curve(
    label: str,
    points: list[dict[str, float]],
    source: str,
    machine: str = "–",
    thresholds: tuple[float, ...] = THRESHOLDS,
) -> dict[str, Any]:
    best = max(points, key=lambda p: p["value"]) if points else None
    return {
        "label": label,
        "source": source,
        "machine": machine,
        "epochs": len(points),
        "best": best,
        "reached": {f"{t:.3f}": report.first_reaching(points, t) for t in thresholds},
        "points": points,
    }


def load_authors(path: str, patterns: list[str], thresholds: tuple[float, ...] = THRESHOLDS) -> list[dict[str, Any]]:
    """Curves of the authors' runs in an `benchmarks.authors_logs` result file whose path matches a pattern."""
    with open(path) as f:
        payload = json.load(f)
    curves = []
    for run_path, parsed in payload["runs"].items():
        name = os.path.basename(run_path)
        if any(fnmatch.fnmatchcase(name, p if any(c in p for c in "*?[") else f"*{p}*") for p in patterns):
            label = "authors " + name.split("_", 1)[-1].removesuffix(".log")
            source = f"{payload['source']['repo']}:{run_path}"
            curves.append(summarize_curve(label, authors_curve(parsed), source, "the authors' (GPU)", thresholds))
    return curves


def run_machine(run: dict[str, Any]) -> str:
    """Where a run of ours trained, in a few words: cores, CPU and the load average around it (from its own JSON;
    the machine that writes the report may be another, or the same one pinned to fewer cores)."""
    machine, timings = run.get("machine") or {}, run.get("timings") or {}
    if not machine:
        return "–"
    load = [timings.get("load_average_1m_before"), timings.get("load_average_1m_after")]
    loads = " -> ".join(f"{v:.1f}" for v in load if v is not None)
    return f"{machine.get('cores', '?')} cores, {machine.get('cpu_model', '?')}" + (f", load {loads}" if loads else "")


def _cell(point: dict[str, float] | None, key: str, digits: int = 0) -> str:
    if point is None or point.get(key) is None:
        return "–"
    return f"{point[key]:.{digits}f}"


def markdown(curves: list[dict[str, Any]], header: dict[str, Any]) -> str:
    thresholds = header.get("thresholds", THRESHOLDS)
    lines = [
        f"# {header['grid']}: time to quality",
        "",
        header.get("description", ""),
        "",
        f"Command: `{header['command']}`. Metric version {header['metric_version']}. "
        "Seconds count from the process launch (start-up, tracing and validation included). The authors' seconds are "
        "those their logs print (their machine, epochs of ~38 s training + ~11 s evaluation): compare steps and "
        "epochs with them, seconds among our rows.",
        "",
        "| run | epochs | best val NDCG@20 (epoch) | "
        + " | ".join(f"first >= {t:.3f}: epoch / step / s" for t in thresholds)
        + " | trained on |",
        "|---|---|---|" + "---|" * len(thresholds) + "---|",
    ]
    for curve in curves:
        best = curve["best"]
        best_text = "–" if best is None else f"{best['value']:.4f} ({best['epoch']})"
        reached = [curve["reached"][f"{t:.3f}"] for t in thresholds]
        cells = [f"{_cell(p, 'epoch')} / {_cell(p, 'steps')} / {_cell(p, 'seconds')}" for p in reached]
        machine = curve.get("machine", "–")
        lines.append(f"| {curve['label']} | {curve['epochs']} | {best_text} | " + " | ".join(cells) + f" | {machine} |")
    lines += ["", f"Updated {common.measured_at(header)}.", ""]
    return "\n".join(lines)


def plot(
    curves: list[dict[str, Any]], out_dir: str, title: str, thresholds: tuple[float, ...] = THRESHOLDS
) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the bench extra is optional
        log.warning("matplotlib is not installed: no plots")
        return []
    written = []
    for axis, label in (("seconds", "seconds since launch"), ("steps", "optimizer steps"), ("epoch", "epoch")):
        fig, ax = plt.subplots(figsize=(7.0, 4.2))
        for curve in curves:
            if axis == "seconds" and curve["label"].startswith("authors"):
                continue  # their seconds are another machine's
            xs = [p[axis] for p in curve["points"] if p.get(axis) is not None]
            ys = [p["value"] for p in curve["points"] if p.get(axis) is not None]
            style = "--" if curve["label"].startswith("authors") else "-"
            ax.plot(xs, ys, style, lw=1.4, label=curve["label"])
        for t in thresholds:
            ax.axhline(t, color="grey", lw=0.6, ls=":")
        ax.set_xlabel(label)
        ax.set_ylabel("validation NDCG@20")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        name = f"converge_{axis if axis != 'epoch' else 'epochs'}.png"
        written.append(report.save_figure(fig, os.path.join(out_dir, name)))
    return written


def build_report(
    grid_name: str,
    results_dir: str,
    command: str,
    description: str,
    authors: list[dict[str, Any]],
    extra_runs: list[str] = (),
    unfinished: list[str] = (),
    only: str | None = None,
    thresholds: tuple[float, ...] = THRESHOLDS,
) -> dict[str, Any]:
    """Writes convergence.json / .md / plots for the grid's runs, the runs of ``extra_runs`` (``runs/`` folders of
    other grids, e.g. the paper grid, whose first epochs are the same trajectory when the config differs only in
    the budget), those of them whose cell `grid.cell_matches` ``only``, and the authors' curves."""
    from mdcns_tf.metrics import METRIC_VERSION

    curves = []
    for runs_dir in [os.path.join(results_dir, "runs"), *extra_runs]:
        for run in report.load_runs(runs_dir):
            if not cell_matches(run["cell"], only):
                continue
            prefix = "" if run.get("grid") == grid_name else f"{run.get('grid')}: "
            label = f"{prefix}{run['method']} seed{run['seed']}"
            source = f"{run.get('grid')}/{run['cell']}"
            curves.append(summarize_curve(label, report.validation_curve(run), source, run_machine(run), thresholds))
    for output_dir in unfinished:
        label = f"{os.path.basename(os.path.dirname(os.path.normpath(output_dir)))} (unfinished)"
        curves.append(
            summarize_curve(label, unfinished_curve(output_dir), common.repo_relative(output_dir), "–", thresholds)
        )
    curves.sort(key=lambda c: (c["reached"][f"{thresholds[-1]:.3f}"] or {}).get("seconds") or float("inf"))
    curves += authors
    header = {
        **common.envelope(command),
        "grid": grid_name,
        "description": description,
        "metric_version": METRIC_VERSION,
        "thresholds": list(thresholds),
    }
    payload = {**header, "curves": curves}
    common.write_result(os.path.join(results_dir, "convergence.json"), payload)
    with open(os.path.join(results_dir, "convergence.md"), "w") as f:
        f.write(markdown(curves, header))
    plot(curves, results_dir, f"{grid_name}: validation NDCG@20", thresholds)
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("benchmarks.converge", None, __doc__)
    parser.add_argument("--grid", required=True, help="a quality-grid file whose methods are the settings compared")
    parser.add_argument(
        "--only", help="train and draw only the matching cells, of the grid and of --extra-runs (as benchmarks.quality)"
    )
    parser.add_argument("--report-only", action="store_true", help="rebuild convergence.md/json and plots only")
    parser.add_argument("--authors", default=None, help="an authors_logs result JSON to draw beside ours")
    parser.add_argument(
        "--authors-run", action="append", default=[], help="pattern on the authors' log names to draw (repeatable)"
    )
    parser.add_argument("--results", default=None, help="results folder (default benchmarks/results/<grid>)")
    parser.add_argument(
        "--extra-runs",
        action="append",
        default=[],
        help="another grid's runs/ folder to draw too (repeatable), e.g. benchmarks/results/paper_beauty/runs",
    )
    parser.add_argument(
        "--unfinished",
        action="append",
        default=[],
        help="a grid cell's scratch folder whose run has not finished: drawn from its best/state.json history",
    )
    parser.add_argument(
        "--thresholds",
        type=parse_thresholds,
        default=THRESHOLDS,
        help="validation NDCG@20 levels whose first epoch / step / second are tabled, comma-separated, ascending "
        f"(default {','.join(map(str, THRESHOLDS))}: the MDCNS curves; the baselines peak at .04-.06)",
    )
    args = parser.parse_args(argv)
    cli.setup_logging()
    grid = load_grid_or_report(args.grid)
    if grid is None:
        return 2
    results_dir = args.results or os.path.join(common.RESULTS, grid.name)
    rc = 0
    if not args.report_only:
        # Trained as `benchmarks.quality` would, and recorded as that command in the run files.
        grid_args = ["--grid", args.grid, "--results", results_dir, *(["--only", args.only] if args.only else [])]
        data_root = common.data_root()
        command = common.command_line("benchmarks.quality", grid_args)
        rc = run_grid(grid, data_root, results_dir, command, args.only)
    authors = load_authors(args.authors, args.authors_run or ["*"], args.thresholds) if args.authors else []
    payload = build_report(
        grid.name,
        results_dir,
        common.command_line("benchmarks.converge", argv),
        grid.description,
        authors,
        args.extra_runs,
        args.unfinished,
        args.only,
        args.thresholds,
    )
    print(open(os.path.join(results_dir, "convergence.md")).read())
    log.info("%d curves in %s", len(payload["curves"]), results_dir)
    return rc


if __name__ == "__main__":
    sys.exit(main())
