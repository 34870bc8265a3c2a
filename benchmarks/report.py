"""Run JSONs of a grid -> ``results.md`` (mean ± std over seeds, published numbers beside ours) and PNG plots."""

from __future__ import annotations

import glob
import json
import os
import statistics
from collections import defaultdict
from typing import Any

from benchmarks import common, published

TABLE_METRICS = ("ndcg@10", "recall@10", "ndcg@20", "recall@20", "mrr")
MONITOR = "val_ndcg_20"  # the grids' model-selection metric (`train.monitor: ndcg@20`), as the history names it
NEAR_BEST = 0.95  # "time to quality": the first epoch at this fraction of the run's own best


def load_runs(runs_dir: str) -> list[dict[str, Any]]:
    """Every finished run JSON under ``runs_dir`` (``<dataset>/<backbone>/<method>/seed<k>.json``)."""
    runs = []
    for path in sorted(glob.glob(os.path.join(runs_dir, "*", "*", "*", "seed*.json"))):
        with open(path) as f:
            run = json.load(f)
        if run.get("status") == "done":
            runs.append(run)
    return runs


def metric_version(run: dict[str, Any]) -> int:
    """The ranking-metric version a run was scored with (`mdcns_tf.metrics.METRIC_VERSION`; absent = 1, pre-fix)."""
    return int(run.get("metrics", {}).get("metric_version", 1))


def resumed(run: dict[str, Any]) -> bool:
    """True when an earlier process trained some of the run's epochs (a cell resumed from its backup): an epoch
    ended before this process launched. Its timings (``train_seconds``, ``wall_seconds``, seconds since launch)
    cover only the last process."""
    launched = run.get("timings", {}).get("launched_unix")
    history = run.get("metrics", {}).get("history", [])
    return launched is not None and any(entry.get("wall_time", launched) < launched for entry in history)


def validation_curve(run: dict[str, Any]) -> list[dict[str, float]]:
    """Per-epoch points ``{epoch, steps, seconds, value}`` of one grid run (seconds since the process launched; None
    for a run resumed from its backup, see `resumed`)."""
    metrics = run["metrics"]
    steps_per_epoch = metrics.get("steps_per_epoch") or 0
    # A resumed run's earlier epochs were trained by another process: no seconds axis.
    launched = None if resumed(run) else run.get("timings", {}).get("launched_unix")
    points = []
    for entry in metrics.get("history", []):
        if MONITOR not in entry:
            continue
        seconds = entry["wall_time"] - launched if launched is not None and "wall_time" in entry else None
        points.append(
            {
                "epoch": entry["epoch"],
                "steps": entry["epoch"] * steps_per_epoch,
                "seconds": None if seconds is None else round(seconds, 1),
                "value": entry[MONITOR],
            }
        )
    return points


def first_reaching(points: list[dict[str, float]], threshold: float) -> dict[str, float] | None:
    """The first point whose value is >= threshold, or None."""
    return next((p for p in points if p["value"] >= threshold), None)


def seconds_to_quality(run: dict[str, Any], fraction: float = 1.0) -> float | None:
    """Seconds from launch to the first epoch whose validation NDCG@20 reaches ``fraction`` x the run's best
    (1.0: the best epoch itself); None for a resumed run or one without validation."""
    return _seconds_to(validation_curve(run), fraction)


def _seconds_to(curve: list[dict[str, float]], fraction: float) -> float | None:
    if not curve:
        return None
    return first_reaching(curve, fraction * max(p["value"] for p in curve))["seconds"]


def metric_versions_label(runs: list[dict[str, Any]]) -> str:
    """``metric v2``, or ``metric v1 (pre-fix)`` / a mix, for a table row or a plot title."""
    versions = sorted({metric_version(r) for r in runs})
    text = "metric " + "/".join(f"v{v}" for v in versions)
    return text + (" (pre-fix)" if 1 in versions else "")


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator; None for a single seed)."""
    mean = sum(values) / len(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def fmt_mean_std(values: list[float], digits: int = 4) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def group_runs(runs: list[dict[str, Any]]) -> dict[str, dict[tuple[str, str], list[dict[str, Any]]]]:
    """dataset -> (backbone, method) -> runs, keeping the grid's order (runs carry ``order``)."""
    grouped: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for run in sorted(runs, key=lambda r: (r.get("order", 0), r["seed"])):
        grouped[run["dataset"]][(run["backbone"], run["method"])].append(run)
    return grouped


def _published(run: dict[str, Any]) -> dict[str, Any] | None:
    """The published number for what the run trained, looked up now (`benchmarks.published` is the one place for
    them), so a rebuilt table picks up numbers added after the run; a run without its config keeps what it stored."""
    info = run.get("dataset_info") or {}
    if run.get("config") and info.get("input") and info.get("split"):
        match = published.lookup(info["input"], info["split"], run["config"])
        if match is None:
            return None
        return {"ndcg@10": match.ndcg10, "recall@10": match.recall10, "source": match.source}
    return run.get("published")


def _published_cell(runs: list[dict[str, Any]]) -> str:
    reference = _published(runs[0])
    if not reference:
        return ""
    recall = reference.get("recall@10")
    text = f"{reference['ndcg@10']:.4f}" + (f" / {recall:.4f}" if recall is not None else "")
    data = runs[0].get("config", {}).get("data", {})
    # Same protocol, but ours trains or evaluates on a subset of the users: say so next to the number.
    subset = "; ours on a data subset" if data.get("max_train_sequences") or data.get("max_eval_users") else ""
    return f"{text} ({reference['source']}{subset})"


def results_table(runs: list[dict[str, Any]], metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    """One Markdown table a dataset: test metrics mean ± std over seeds, published NDCG@10 / Recall@10, timings."""
    lines: list[str] = []
    for dataset, by_method in group_runs(runs).items():
        first = next(iter(by_method.values()))[0]
        info = first.get("dataset_info", {})
        lines.append(f"### {dataset}")
        lines.append("")
        if info:
            lines.append(
                f"`{info.get('input', '?')}`, split `{info.get('split', '?')}`: {info.get('n_users', '?')} users, "
                f"{info.get('n_items', '?')} items, records {info.get('records', {})}."
            )
            lines.append("")
        header = [
            "backbone",
            "method",
            "seeds",
            *[f"test {m}" for m in metrics],
            "published NDCG@10 / Recall@10",
            "best epoch",
            "epochs run",
            "s/epoch",
            "train min/run (whole runs)",
            "best val NDCG@20",
            "s to best val",
            f"s to {NEAR_BEST:.0%} of it",
            "metric",
        ]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for (backbone, method), group in by_method.items():
            row = [backbone, method, ",".join(str(r["seed"]) for r in group)]
            for metric in metrics:
                row.append(
                    fmt_mean_std(
                        [r["metrics"]["test"][metric] for r in group if metric in r["metrics"].get("test", {})]
                    )
                )
            row.append(_published_cell(group))
            row.append(fmt_mean_std([float(r["metrics"]["best_epoch"]) for r in group], 1))
            row.append(fmt_mean_std([float(r["metrics"]["epochs_run"]) for r in group], 1))
            row.append(fmt_mean_std([r["timings"]["seconds_per_epoch_median"] for r in group], 1))
            row.append(fmt_mean_std([r["timings"]["train_seconds"] / 60 for r in group if not resumed(r)], 1))
            curves = [validation_curve(r) for r in group]
            row.append(fmt_mean_std([max(p["value"] for p in curve) for curve in curves if curve]))
            for fraction in (1.0, NEAR_BEST):
                seconds = [_seconds_to(curve, fraction) for curve in curves]
                row.append(fmt_mean_std([s for s in seconds if s is not None], 0))
            row.append(metric_versions_label(group).removeprefix("metric "))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def _measured_on(runs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Where and by what the runs were trained (each run JSON records it): a rebuilt report (``--report-only``)
    must not attribute old runs to today's machine or commit."""
    machines, commits, commands = [], [], []
    for run in runs:
        machine = run.get("machine") or {}
        text = f"{machine.get('cores', '?')} cores, {machine.get('cpu_model', '?')}"
        git = run.get("git") or {}
        commit = str(git.get("commit", "?"))[:10] + ("+dirty" if git.get("dirty") else "")
        for values, value in ((machines, text), (commits, commit), (commands, run.get("command"))):
            if value and value not in values:
                values.append(value)
    return {"machines": machines, "commits": commits, "commands": commands}


def write_markdown(
    path: str, runs: list[dict[str, Any]], header: dict[str, Any], notes: list[str] | None = None
) -> str:
    """``results.md``: what was run (grid, budget, command, machine, versions), the tables, then the notes."""
    out = [f"# Quality grid `{header['grid']}`", ""]
    if header.get("description"):
        out += [header["description"], ""]
    measured = _measured_on(runs)
    out += [
        f"- Command: `{header['command']}`"
        + (f"; the runs were trained by `{'`, `'.join(measured['commands'])}`" if measured["commands"] else ""),
        f"- Grid file: `{header['grid_file']}`; budget: `{json.dumps(header['budget'])}`; seeds: {header['seeds']}",
        f"- Machine of the runs: {'; '.join(measured['machines']) or '?'}; report written on "
        f"{header['machine'].get('cores')} cores, {header['machine'].get('cpu_model')}; "
        f"versions: {', '.join(f'{k} {v}' for k, v in header['versions'].items())}",
        f"- Code of the runs: {', '.join(f'`{c}`' for c in measured['commits']) or '?'}; report written at commit "
        f"`{header.get('git', {}).get('commit', '?')}`"
        + (" (uncommitted changes)" if header.get("git", {}).get("dirty") else ""),
        f"- Updated: {common.measured_at(header)}; runs: {len(runs)} finished, wall time of the finished runs "
        f"{sum(r['timings']['wall_seconds'] for r in runs) / 60:.1f} min (a resumed run: its last process only)",
        "",
        "Test metrics at the best validation epoch (model selection on validation NDCG@20), full ranking, mean ± "
        "sample std over seeds. Published numbers (benchmarks/published.py) are the papers' own runs, mostly "
        "best-of-grid single seeds with a full budget (up to 300 epochs): compare them with a grid of that budget. "
        "The metric column is the ranking-metric version (`mdcns_tf.metrics.METRIC_VERSION`): v1 runs predate the "
        "rank fix of commit 3f5f247 and understate NDCG@10 by about 10%. Time to quality: seconds from the process "
        "launch (start-up, tracing and validation included) to the first epoch at the run's best validation NDCG@20 "
        "and at 95% of it, over the runs one process trained (a resumed run has no seconds axis); runs of a grid are "
        "trained one after another on a shared machine, so compare them with the s/epoch column's spread in mind.",
        "",
        results_table(runs),
    ]
    if notes:
        out += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    text = "\n".join(out).rstrip() + "\n"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return text


def _label(backbone: str, method: str, backbones: set[str]) -> str:
    return method if len(backbones) == 1 else f"{backbone}/{method}"


def save_figure(fig: Any, path: str) -> str:
    """Lays ``fig`` out, writes it as a PNG at ``path`` (one resolution for every benchmark plot) and frees it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(out_dir: str, runs: list[dict[str, Any]]) -> list[str]:
    """Per dataset: ``ndcg10_<dataset>.png`` (test NDCG@10 per method, error bars = sample std over seeds) and
    ``val_ndcg20_<dataset>.png`` (validation NDCG@20 per epoch, mean over seeds, one line per method)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on the benchmark machines
    import matplotlib.pyplot as plt

    written = []
    for dataset, by_method in group_runs(runs).items():
        backbones = {b for b, _ in by_method}
        labels, means, stds = [], [], []
        for (backbone, method), group in by_method.items():
            values = [r["metrics"]["test"]["ndcg@10"] for r in group if "ndcg@10" in r["metrics"].get("test", {})]
            if not values:
                continue
            mean, std = mean_std(values)
            labels.append(_label(backbone, method, backbones))
            means.append(mean)
            stds.append(std or 0.0)
        fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(labels) + 1.5), 3.6))
        ax.bar(range(len(labels)), means, yerr=stds, capsize=4, color="#4C72B0")
        labelled = False
        for i, group in enumerate(g for g in by_method.values() if g[0]["metrics"].get("test")):
            reference = _published(group[0])
            if reference:
                ax.plot(
                    [i - 0.4, i + 0.4],
                    [reference["ndcg@10"]] * 2,
                    color="#C44E52",
                    lw=2,
                    label=None if labelled else "published",
                )
                labelled = True
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
        ax.set_ylabel("test NDCG@10")
        every = [r for group in by_method.values() for r in group]
        ax.set_title(f"{dataset}: test NDCG@10 (mean ± std over seeds; {metric_versions_label(every)})", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right")
        written.append(save_figure(fig, os.path.join(out_dir, f"ndcg10_{dataset}.png")))

        fig, ax = plt.subplots(figsize=(6.0, 3.8))
        for (backbone, method), group in by_method.items():
            curves = [
                [(h["epoch"], h["val_ndcg_20"]) for h in r["metrics"].get("history", []) if "val_ndcg_20" in h]
                for r in group
            ]
            length = min((len(c) for c in curves if c), default=0)
            if not length:
                continue
            # Early stopping ends seeds at different epochs: the mean is drawn over the epochs every seed ran.
            epochs = [e for e, _ in curves[0][:length]]
            mean = [sum(c[i][1] for c in curves) / len(curves) for i in range(length)]
            ax.plot(epochs, mean, marker="o" if length < 30 else None, ms=3, label=_label(backbone, method, backbones))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation NDCG@20")
        ax.set_title(f"{dataset}: validation NDCG@20 (mean over seeds; {metric_versions_label(every)})", fontsize=9)
        ax.legend()
        ax.grid(alpha=0.3)
        written.append(save_figure(fig, os.path.join(out_dir, f"val_ndcg20_{dataset}.png")))
    return written
