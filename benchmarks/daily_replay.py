"""The daily loop (issue 31): a two-day replay of a timestamped log, day 2 trained from scratch and warm-started.

    python -m benchmarks.daily_replay --dataset ml100k --lock /tmp/heavy.lock
    python -m benchmarks.daily_replay --dataset synthetic_drift --lock /tmp/heavy.lock
    python -m benchmarks.daily_replay --dataset synthetic_drift --recipe ssm100 --warm shrink_perturb --lock FILE
    python -m benchmarks.daily_replay --dataset synthetic_drift_mild --recipe ssm100 --warm increment_replay --lock FILE

Days: day d's log is the events of the whole log before its ``DAY_END[d]`` event-time quantile (day 1: 0.8, day 2:
0.9; `time_cut`), written to ``benchmarks/results/scratch/daily_replay/<dataset>/day<d>.tsv`` (git-ignored; rows
unchanged). Each day is preprocessed with ``python -m pipeline.run --split time --cutoff_quantile Q``, where Q puts
the cut at the previous day's end (day 1: the 0.7 quantile; `cutoff_quantile`), so a day's last slice, the events
it added, is its validation/test (each user's first event in it; half the users validate, half test); day 2 with
``--vocabulary_from <day 1 output>`` so that day 1's ids stay put. Day 1 trains from scratch; day 2 twice, from
scratch and with ``train.warm_start: <day 1 run dir>``, otherwise the same config. ``--recipe`` names the training
recipe of every run (`RECIPES`: the loss and negatives), ``--warm`` adds warm-start variants (`WARM_VARIANTS`, each
a ``day2_warm_<name>`` run). Each training and pipeline run
is a subprocess, one at a time; ``--lock FILE`` holds an exclusive flock on FILE around each (a shared machine),
and a run's clock starts once the lock is held.

Reported per run: best validation NDCG@20 (the monitor) and its epoch, test NDCG@10 of the selected weights,
epochs, median s/epoch; and for the warm start, the seconds from launch at which it first reaches >= 99% of the
scratch day-2 run's best validation NDCG@20, and their ratio to the seconds the scratch run took to ITS best
(`catch_up`; the issue's target: <= 30%). Written to ``benchmarks/results/daily_replay/``: ``<name>.json``
(command, machine, versions, every run's metrics, commands and curve), ``<name>.md`` (the table) and
``<name>.png`` (validation NDCG@20 against seconds since launch), where ``<name>`` is the dataset's name, then
``_<recipe>`` for a recipe other than the default. Finished runs are kept (``--rerun`` retrains).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from benchmarks import commands, common, report

log = logging.getLogger("benchmarks.daily_replay")

DAY_END = {0: 0.7, 1: 0.8, 2: 0.9}  # event-time quantiles of the whole log; day 0 only ends day 1's training
CATCH_UP = 0.99
MONITOR = report.MONITOR
OUT = os.path.join(common.RESULTS, "daily_replay")
SCRATCH = os.path.join(common.RESULTS, "scratch", "daily_replay")
TRAINING = [os.path.join("configs", name) for name in ("base.yaml", "training/fast.yaml")]


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    input: str  # relative to the data root, or to the scratch folder for a generated log
    ts_column: int
    configs: tuple[str, ...]
    sets: tuple[str, ...]
    generate: tuple[str, ...] = ()  # `pipeline.synthetic` flags that write ``input`` when it is absent
    why: str = ""
    user_column: int = 0


# The synthetic log with drift (`pipeline.synthetic --drift`): 1M events, 10k users, 20k items.
SYNTHETIC_DRIFT = Dataset(
    "synthetic_drift",
    "synthetic_drift.tsv",
    2,
    tuple(TRAINING),
    ("data.max_len=50", "eval.valid_users=2000", "train.max_minutes=6", "train.patience=10"),
    generate=("--users", "10000", "--items", "20000", "--events", "1000000", "--seed", "7", "--drift", "0.5"),
    why="1M events: models selected on 2,000 sampled validation users, 6 minutes a run at most",
)
# SASRec with BCE and one uniform negative (base.yaml): the cheapest step, so the budget goes to epochs; the fast
# recipe's learning rate and patience; a wall-clock budget per run.
DATASETS = {
    "ml100k": Dataset(
        "ml100k",
        "ml-100k/u.data",
        3,
        (*TRAINING, "configs/datasets/ml100k_loo.yaml"),
        ("data.batch_size=128", "train.max_minutes=4"),
        why="943 users: batch 128, 11 steps an epoch in length buckets; every validation user is used (about 40)",
    ),
    "synthetic_drift": SYNTHETIC_DRIFT,
    # A fifth of the drift: the catalogue grows 10% over the span instead of 100%, so day 2 adds ~200 items, not
    # ~800 (how much of day 2 a warm start can already know: under the strong drift 57% of day 2's validation
    # targets are items day 1 never trained on, `unseen_targets`).
    "synthetic_drift_mild": dataclasses.replace(
        SYNTHETIC_DRIFT,
        name="synthetic_drift_mild",
        input="synthetic_drift_mild.tsv",
        generate=(*SYNTHETIC_DRIFT.generate[:-1], "0.1"),
        why="1M events, drift 0.1: models selected on 2,000 sampled validation users",
    ),
}


# Training recipes, the same for every run of a replay (later --set wins over the dataset's).
RECIPES: dict[str, tuple[str, ...]] = {
    "bce1": (),  # base.yaml: BCE, one uniform negative per position
    # Sampled softmax over 100 uniform negatives a position: a negative set that covers the catalogue every few
    # steps, so items whose popularity faded are pushed down without waiting to be drawn as the one negative.
    "ssm100": ("sampler.num_negatives=100", "loss.name=sampled_softmax", "train.max_minutes=12"),
}
DEFAULT_RECIPE = "bce1"
# Ash & Adams (NeurIPS 2020): 0.5 x the parent's weights + 0.1 x a fresh initialisation.
SHRINK_PERTURB = ("train.warm_start_shrink=0.5", "train.warm_start_perturb=0.1")
# The increment plus a seeded sample of REPLAY_FRACTION of the other users (replay against forgetting).
INCREMENT_REPLAY = ("data.train_users={increment_replay_users}",)
NEW_ITEMS_FROM_CONTEXTS = ("train.warm_start_new_items=context",)
# Warm-start variants (``--warm``): overrides of the day-2 warm run, each a run ``day2_warm_<name>``.
WARM_VARIANTS: dict[str, tuple[str, ...]] = {
    "shrink_perturb": SHRINK_PERTURB,
    # Fine-tuning on the increment: only the users with an event that day 2 trains on and day 1 did not (their whole
    # sequences); {increment_users} is the file `Replay.days` writes (`increment_users`).
    "increment": ("data.train_users={increment_users}",),
    "increment_replay": INCREMENT_REPLAY,
    # Both: shrink and perturb's quality with the replayed increment's cheaper epochs.
    "shrink_perturb_increment_replay": (*SHRINK_PERTURB, *INCREMENT_REPLAY),
    # New items' rows from the contexts they follow (most of day 2's targets are new items, whose random rows grow
    # no faster warm than cold), on the full data and on the replayed increment.
    "context": NEW_ITEMS_FROM_CONTEXTS,
    "context_increment_replay": (*NEW_ITEMS_FROM_CONTEXTS, *INCREMENT_REPLAY),
}
REPLAY_FRACTION = 0.25


def read_timestamps(path: str, column: int) -> list[int]:
    """The timestamp column of every non-empty line of a delimited log (tab, ``::``, comma or spaces)."""
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                out.append(int(float(_fields(line)[column])))
    return out


def _fields(line: str) -> list[str]:
    for delimiter in ("\t", "::", ","):
        if delimiter in line:
            return line.strip().split(delimiter)
    return line.split()


def time_cut(timestamps: Sequence[int], q: float) -> int:
    """The ``q`` event-time quantile: the timestamp of sorted event ``floor(q * n)``; events before it (``t < cut``)
    are about a fraction ``q`` of the log (fewer when events share that timestamp)."""
    ordered = sorted(timestamps)
    return ordered[min(len(ordered) - 1, math.floor(q * len(ordered)))]


def write_day(source: str, column: int, end: int, dest: str) -> dict[str, int]:
    """Copies the lines of ``source`` whose timestamp is ``< end`` to ``dest``; their count and time range."""
    kept, low, high = 0, None, None
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(source) as f, open(dest + ".tmp", "w") as out:
        for line in f:
            if not line.strip():
                continue
            t = int(float(_fields(line)[column]))
            if t < end:
                out.write(line)
                kept += 1
                low, high = (t, t) if low is None else (min(low, t), max(high, t))
    os.replace(dest + ".tmp", dest)
    return {"events": kept, "min_t": low, "max_t": high, "end": end}


def increment_users(source: str, user_column: int, ts_column: int, start: int, end: int) -> tuple[set, set]:
    """``(users with an event at start <= t < end, the other users with an event before end)`` of a log."""
    grew, before = set(), set()
    with open(source) as f:
        for line in f:
            if line.strip():
                fields = _fields(line)
                t = int(float(fields[ts_column]))
                if t < end:
                    (grew if t >= start else before).add(fields[user_column])
    return grew, before - grew


def replay_sample(users: set, fraction: float, seed: int = 0) -> list[str]:
    """A seeded sample of ``fraction`` of ``users`` (sorted first, so the sample depends on the set only)."""
    ordered = sorted(users)
    return random.Random(seed).sample(ordered, round(fraction * len(ordered)))


def write_keys(path: str, keys: Sequence[str]) -> None:
    """``keys`` sorted, one a line, written atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as out:
        out.writelines(f"{key}\n" for key in sorted(keys))
    os.replace(path + ".tmp", path)


def cutoff_quantile(low: int, high: int, boundary: int) -> float:
    """``--cutoff_quantile`` Q whose cut ``low + Q (high - low)`` (`pipeline.timesplit.cutoff_info`) lies half a
    unit before the integer ``boundary``: events at ``t < boundary`` train, whatever the float rounding."""
    return (boundary - 0.5 - low) / (high - low)


def unseen_targets(day1: str, day2: str) -> dict[str, Any]:
    """Of day 2's validation targets, those day 1 never trained on: a training count of 0 in day 1's ``metadata.json``
    (``item_counts``) or an id day 1 did not have (ids stay put between the days). What a warm start cannot know
    yet, however good day 1's model."""
    import tensorflow as tf

    from mdcns_tf import features

    with open(os.path.join(day1, features.METADATA_FILE)) as f:
        counts = json.load(f)["item_counts"]
    files = tf.io.gfile.glob(features.split_pattern(day2, "valid"))
    spec = {features.TARGET: features.feature_spec()[features.TARGET]}
    targets: list[int] = []
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096):
        targets.extend(tf.io.parse_example(batch, spec)[features.TARGET].numpy().tolist())
    unseen = sum(1 for t in targets if t >= len(counts) or counts[t] == 0)
    return {"valid_targets": len(targets), "never_trained_on": unseen, "share": unseen / max(1, len(targets))}


def curve(metrics: dict[str, Any], launched: float) -> list[dict[str, float]]:
    """``{epoch, seconds (since launch), value}`` per validated epoch of a run's ``metrics.json``."""
    return [
        {"epoch": h["epoch"], "seconds": round(h["wall_time"] - launched, 1), "value": h[MONITOR]}
        for h in metrics.get("history", [])
        if MONITOR in h
    ]


def catch_up(scratch: list[dict[str, float]], warm: list[dict[str, float]], fraction: float = CATCH_UP) -> dict:
    """When ``warm`` first reaches ``fraction`` x the best value of ``scratch`` (the first best, if it repeats),
    against the seconds ``scratch`` took to its best: ``ratio`` = warm seconds / scratch seconds (None if never)."""
    best = max(scratch, key=lambda p: p["value"])
    best = next(p for p in scratch if p["value"] == best["value"])
    threshold = fraction * best["value"]
    reached = report.first_reaching(warm, threshold)
    return {
        "fraction": fraction,
        "threshold": threshold,
        "scratch_best": best,
        "warm_reached": reached,
        "ratio": None if reached is None or best["seconds"] <= 0 else reached["seconds"] / best["seconds"],
    }


@contextlib.contextmanager
def held(lock: str | None) -> Iterator[None]:
    """An exclusive flock on ``lock`` (the same lock as ``flock FILE command``), or nothing."""
    if not lock:
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_child(command: list[str], log_path: str, lock: str | None) -> dict[str, Any]:
    """Runs ``command`` (under the lock) with its output to ``log_path``; exit code, launch time and resources."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with held(lock), open(log_path, "a") as logf:
        launched = time.time()
        child = subprocess.Popen(command, cwd=common.REPO, env=commands.child_env(), stdout=logf, stderr=logf)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.time() - launched
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "launched_unix": round(launched, 3),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "command": common.command_line(command[2], command[3:]),
    }


class Replay:
    def __init__(
        self,
        dataset: Dataset,
        data_root: str,
        lock: str | None,
        rerun: bool,
        command: str,
        recipe: str = DEFAULT_RECIPE,
        warm: Sequence[str] = (),
    ) -> None:
        self.ds, self.data_root, self.lock, self.rerun = dataset, data_root, lock, rerun
        self.recipe, self.warm = recipe, tuple(warm)
        self.files: dict[str, str] = {}  # files a warm variant names ({increment_users}, ...)
        self.scratch = os.path.join(SCRATCH, dataset.name)
        name = dataset.name if recipe == DEFAULT_RECIPE else f"{dataset.name}_{recipe}"
        self.runs_dir = os.path.join(self.scratch, "runs" if recipe == DEFAULT_RECIPE else f"runs_{recipe}")
        self.path = os.path.join(OUT, f"{name}.json")
        previous = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                previous = json.load(f)
        self.result = {
            **common.envelope(command),
            "dataset": dataset.name,
            "why": dataset.why,
            "recipe": {"name": recipe, "sets": list(RECIPES[recipe])},
        }
        self.result.update({k: previous[k] for k in ("days", "runs", "generated") if k in previous and not rerun})
        self.result.setdefault("days", {})
        self.result.setdefault("runs", {})

    def save(self) -> None:
        common.write_result(self.path, self.result)

    def source(self) -> str | None:
        if self.ds.generate:
            path = os.path.join(self.scratch, self.ds.input)
            if not os.path.exists(path):
                cmd = commands.module_command("pipeline.synthetic", "--output", path, *self.ds.generate)
                done = run_child(cmd, os.path.join(self.scratch, "generate.log"), self.lock)
                if done["rc"] != 0:
                    raise RuntimeError(f"generating {path} failed: {done}")
                self.result["generated"] = done
            return path
        path = os.path.join(self.data_root, self.ds.input)
        return path if os.path.exists(path) else None

    def days(self, source: str) -> dict[str, str]:
        """Writes the two days' logs and preprocesses them; their data folders."""
        stamps = read_timestamps(source, self.ds.ts_column)
        ends = {d: time_cut(stamps, q) for d, q in DAY_END.items()}
        # Day 1 trains on t < ends[0], day 2 on t < ends[1]: the users of the events in between grew.
        grew, others = increment_users(source, self.ds.user_column, self.ds.ts_column, ends[0], ends[1])
        replayed = replay_sample(others, REPLAY_FRACTION)
        for name, keys in (("increment_users", grew), ("increment_replay_users", [*grew, *replayed])):
            self.files[name] = os.path.join(self.scratch, "data", f"{name}.txt")
            write_keys(self.files[name], list(keys))
        self.result["increment_users"] = {"from": ends[0], "to": ends[1], "users": len(grew)}
        self.result["replayed_users"] = {"fraction": REPLAY_FRACTION, "of": len(others), "users": len(replayed)}
        folders = {}
        for day in (1, 2):
            data = os.path.join(self.scratch, "data", f"day{day}")
            folders[f"day{day}"] = data
            info = self.result["days"].get(f"day{day}")
            if info and os.path.exists(os.path.join(data, "metadata.json")):
                continue
            log_path = os.path.join(self.scratch, f"day{day}.tsv")
            info = write_day(source, self.ds.ts_column, ends[day], log_path)
            q = cutoff_quantile(info["min_t"], info["max_t"], ends[day - 1])
            parent = ["--vocabulary_from", folders["day1"]] if day == 2 else []
            cmd = commands.pipeline_command(
                log_path, "interactions", "time", data, "--cutoff_quantile", repr(q), "--overwrite", *parent
            )
            done = run_child(cmd, os.path.join(self.scratch, f"pipeline_day{day}.log"), self.lock)
            if done["rc"] != 0:
                raise RuntimeError(f"pipeline day {day} failed: see {done}")
            with open(os.path.join(data, "metadata.json")) as f:
                meta = json.load(f)
            info.update(
                quantile=DAY_END[day],
                eval_from=ends[day - 1],
                cutoff_quantile=q,
                pipeline=done,
                n_users=meta["n_users"],
                n_items=meta["n_items"],
                records=meta["records"],
                split=meta["split"],
                new_items=(meta["source"].get("vocabulary_from") or {}).get("new_items"),
            )
            self.result["days"][f"day{day}"] = info
            self.save()
        return folders

    def train(self, name: str, data: str, extra: Sequence[str] = ()) -> dict[str, Any] | None:
        if name in self.result["runs"] and not self.rerun:
            return self.result["runs"][name]
        out = os.path.join(self.runs_dir, name)
        sets = [f"data.dir={data}", f"output_dir={out}", *self.ds.sets, *RECIPES[self.recipe], *extra]
        cmd = commands.module_command(
            "mdcns_tf.train", "--config", *self.ds.configs, *[a for s in sets for a in ("--set", s)], "--restart"
        )
        log.info("training %s: %s", name, " ".join(cmd))
        done = run_child(cmd, os.path.join(out + ".log"), self.lock)
        metrics_path = os.path.join(out, "metrics.json")
        if done["rc"] != 0 or not os.path.exists(metrics_path):
            log.error("%s failed (exit %s), log %s.log", name, done["rc"], out)
            return None
        with open(metrics_path) as f:
            metrics = json.load(f)
        points = curve(metrics, done["launched_unix"])
        best = max(points, key=lambda p: p["value"])
        per_epoch = metrics.get("seconds_per_epoch") or []
        run = {
            **done,
            "output_dir": out,
            "best_val_ndcg@20": best["value"],
            "best_epoch": metrics.get("best_epoch"),
            "best_seconds": next(p["seconds"] for p in points if p["value"] == best["value"]),
            "test_ndcg@10": metrics.get("test", {}).get("ndcg@10"),
            "test": metrics.get("test"),
            "valid": metrics.get("valid"),
            "epochs": metrics.get("epochs_run"),
            "seconds_per_epoch_median": sorted(per_epoch)[len(per_epoch) // 2] if per_epoch else None,
            "stopped_by": metrics.get("stopped_by"),
            "warm_start": (metrics.get("provenance") or {}).get("warm_start"),
            "curve": points,
        }
        self.result["runs"][name] = run
        self.save()
        return run

    def run(self) -> int:
        source = self.source()
        if source is None:
            print(
                f"skipped: {os.path.join(self.data_root, self.ds.input)} is absent (real data lives in "
                "../shared/data beside the repo; --data-root)"
            )
            return 0
        folders = self.days(source)
        if "unseen_targets" not in self.result:
            self.result["unseen_targets"] = unseen_targets(folders["day1"], folders["day2"])
            self.save()
        day1 = self.train("day1_scratch", folders["day1"])
        self.train("day2_scratch", folders["day2"])
        warm = {"day2_warm": ()} | {
            f"day2_warm_{v}": tuple(s.format(**self.files) for s in WARM_VARIANTS[v]) for v in self.warm
        }
        if day1 is not None:
            for name, sets in warm.items():
                self.train(name, folders["day2"], [f"train.warm_start={day1['output_dir']}", *sets])
        runs = self.result["runs"]
        if "day2_scratch" in runs:
            # Every warm run of this result, those of earlier invocations too (a result keeps their runs).
            self.result["catch_up"] = {
                name: catch_up(runs["day2_scratch"]["curve"], run["curve"])
                for name, run in runs.items()
                if name.startswith("day2_warm")
            }
        self.save()
        write_markdown(self.result, self.path[: -len(".json")] + ".md")
        plot(self.result, self.path[: -len(".json")] + ".png")
        return 0 if all(name in runs for name in ("day1_scratch", "day2_scratch", *warm)) else 1


def _f(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(result: dict[str, Any]) -> list[str]:
    """The results table: one row per run, the warm start's catch-up in its own columns."""
    lines = [
        "| run | best val NDCG@20 (epoch, s) | reaches 99% of scratch day-2 best at | / scratch's s to its best | "
        "test NDCG@10 | epochs | s/epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in result["runs"].items():
        reached = ratio = ""
        c = (result.get("catch_up") or {}).get(name)
        if c:
            r = c["warm_reached"]
            reached = "never" if r is None else f"{r['seconds']:.0f} s (epoch {r['epoch']})"
            ratio = "–" if c["ratio"] is None else f"{100 * c['ratio']:.0f}% (of {c['scratch_best']['seconds']:.0f} s)"
        lines.append(
            f"| {name} | {_f(run['best_val_ndcg@20'])} ({run['best_epoch']}, {run['best_seconds']:.0f} s) | "
            f"{reached} | {ratio} | {_f(run['test_ndcg@10'])} | {run['epochs']} | "
            f"{_f(run['seconds_per_epoch_median'], 2)} |"
        )
    return lines


def _recipe(result: dict[str, Any]) -> dict[str, Any]:
    """The replay's recipe (results written before ``--recipe`` existed ran the default)."""
    return result.get("recipe") or {"name": DEFAULT_RECIPE, "sets": []}


def write_markdown(result: dict[str, Any], path: str) -> None:
    days = result["days"]
    recipe = _recipe(result)
    sets = ", ".join(f"`{s}`" for s in recipe["sets"]) or "base.yaml's loss and sampler"
    lines = [
        f"# Daily loop: {result['dataset']}, recipe {recipe['name']}",
        "",
        f"Command: `{result['command']}`. {result['why']}. Recipe of every run: {sets}.",
        "",
    ]
    for day, info in days.items():
        lines.append(
            f"- {day}: {info['events']:,} events (before the {info['quantile']} event-time quantile), "
            f"`--cutoff_quantile {info['cutoff_quantile']:.6f}` (validation/test: the events from the "
            f"{DAY_END[int(day[-1]) - 1]} quantile on), {info['n_users']:,} users, {info['n_items']:,} items"
            + (f" ({info['new_items']:,} new)" if info.get("new_items") is not None else "")
            + f", records {info['records']}"
        )
    unseen = result.get("unseen_targets")
    if unseen:
        lines.append(
            f"- day 2's validation targets that day 1 never trained on (a new item, or no training event on day 1): "
            f"{unseen['never_trained_on']:,} of {unseen['valid_targets']:,} ({100 * unseen['share']:.0f}%)"
        )
    lines += ["", *table(result), "", common.machine_line(result), "", f"Updated {common.measured_at(result)}.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def plot(result: dict[str, Any], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for name, run in result["runs"].items():
        ax.plot([p["seconds"] for p in run["curve"]], [p["value"] for p in run["curve"]], lw=1.4, label=name)
    c = next(iter((result.get("catch_up") or {}).values()), None)
    if c:
        ax.axhline(c["threshold"], color="grey", lw=0.6, ls=":", label="99% of day-2 scratch best")
    ax.set_xlabel("seconds since launch")
    ax.set_ylabel("validation NDCG@20")
    ax.set_title(f"daily loop, {result['dataset']}, recipe {_recipe(result)['name']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    report.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.daily_replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="ml100k")
    parser.add_argument("--lock", help="hold an exclusive flock on this file around each child process")
    parser.add_argument("--rerun", action="store_true", help="preprocess and train again, forgetting finished runs")
    parser.add_argument(
        "--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE, help="loss and negatives of every run"
    )
    parser.add_argument(
        "--warm", action="append", choices=sorted(WARM_VARIANTS), default=[], help="add a warm-start variant; repeat"
    )
    common.add_data_root_option(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    command = common.command_line("benchmarks.daily_replay", argv)
    replay = Replay(DATASETS[args.dataset], args.data_root, args.lock, args.rerun, command, args.recipe, args.warm)
    return replay.run()


if __name__ == "__main__":
    sys.exit(main())
