"""Per-epoch numbers from the training logs the MDCNS authors released (github.com/Lyz103/SIGIR26-MDCNS).

The logs are read straight out of a bare git snapshot (`git show <commit>:<path>`), never copied into this repo.
Two formats are understood by the one parser, `parse_log`:

* **MDCNS** (`MDCNS_Code/main.py`: Exp6_WeaktoStrong, TEST_KD, EXP2_BCE, EXP2_BPR, KuaiRand*): two models. Per epoch a
  train dict ``{'epoch': N, 'avg_loss': ...}``, a ``Validation for Epoch N`` section and a ``Test for Epoch N``
  section, each with three bare metric dicts (self, peer, ensemble) repeated as ``Model 1 (X) Results: {...}``,
  ``Model 2 (Y) Results: {...}`` and ``Ensemble Results: {...}``; at the end ``Best Validation Scores for Test`` and
  the self model's test dict at the selected epoch. Model selection is the self model's valid NDCG@20 (strictly
  better than the best so far), patience 30. tqdm bars (``EP_train:N: 100%|| 121/121 [01:05<00:00, ...]``,
  ``EP_valid``, ``EP_test``) give each epoch's times. The ``log_file`` copies in ``MDCNS_Code/output/*.txt`` have the
  same dicts without section headers and without the final block; there the first self-model result of an epoch is
  the validation one and the second the test one, as `main.py` evaluates in that order. They are append-mode files
  holding several runs: `split_runs` (CLI ``--split-runs``) cuts runs appended one after the other, but the released
  ones were written by several runs at once and interleave, which `parse_log` detects (epoch numbering going back)
  and reports in ``notes`` rather than mixing runs.
* **Baseline** (`Baselines/*/run_finetune_full.py`; the only released logs are ``MDCNS_Code/EXP5/cankao_DNS+/``):
  one model, so it is the "self" model. Per epoch ``{'epoch': N, 'loss': ...}`` and one bare validation dict, no
  per-epoch test, no tqdm timing; model selection on valid NDCG@20 with patience 50; after ``Change to
  test_rating_matrix!`` the test dict of the restored best checkpoint (its ``'Epoch'`` is always 0 because the code
  calls ``test(0)``, so the best epoch is taken from the last ``Validation score increased`` line instead).

What `parse_log` returns besides ``args`` / ``epochs`` / ``best``: per epoch ``train_loss`` (the train dict's
losses) and top-level ``early_stopped``, ``patience`` and ``notes`` (anomalies: NUL-byte holes where two processes
wrote one file, a second run in the same text, a truncated log).

CLI::

    python -m benchmarks.authors_logs --repo "$MDCNS_AUTHORS_REPO" \\
        --pattern 'MDCNS_Code/Exp6_WeaktoStrong/Beauty-SASRec-GRU4Rec_*.log' \\
        --out benchmarks/results/authors_logs/beauty_mdcns_gru4rec_peer.json

Pure Python on purpose (no TensorFlow, no numpy): it runs anywhere in a second.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from benchmarks import common

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.053, 0.058, 0.062)
# Epoch budgets at which the test number a shorter run would have given is reported (this repo's grids use 30).
BUDGETS: tuple[int, ...] = (10, 20, 30, 50)
# The quantity both codes select the model on (main.py: sasrec_scores[5]; baselines: scores[-1]).
MONITOR = "ndcg@20"

# Hyper-parameters copied from the Namespace into each summary row (absent ones are left out of the row).
SUMMARY_ARGS: tuple[str, ...] = (
    "data_name",
    "backbone",
    "backbone2",
    "neg_sampler",
    "loss_type",
    "alpha",
    "beta",
    "d_lambda",
    "dws_beta",
    "temperature",
    "K_hns",
    "N",
    "M",
    "kd_temperature",
    "kd_gamma",
    "lr",
    "batch_size",
    "epochs",
    "seed",
)

_BAR = re.compile(r"EP_(?P<phase>train|valid|test):(?P<epoch>\d+):.*?\[(?P<elapsed>\d+(?::\d+)+)[<,\]]")
_SECTION = re.compile(r"-{3,}\s*(?P<what>Validation|Test) for Epoch (?P<epoch>\d+)\s*-{3,}")
_MODEL_LINE = re.compile(
    r"^\s*(?:Model (?P<index>\d+) \((?P<name>[^)]*)\)|(?P<ensemble>Ensemble)) Results:\s*(?P<d>\{.*)"
)
_DICT = re.compile(r"\{[^{}]*\}")
_PATIENCE = re.compile(r"EarlyStopping counter: \d+ out of (?P<patience>\d+)")


# ---------------------------------------------------------------------------------------------------------- parsing


def _outside_quotes(text: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """``(index, char, bracket depth after it)`` for every character of ``text[start:]`` outside quoted strings
    (backslash escapes honoured): the one scanner behind splitting a ``Namespace`` at its commas and finding its end."""
    depth = 0
    quote: str | None = None
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
            continue
        depth += 1 if ch in "([{" else -1 if ch in ")]}" else 0
        yield i, ch, depth


def _split_top_level(body: str) -> list[str]:
    """Split ``a=1, b='x, y', c=[1, 2]`` at the commas that are outside quotes and brackets."""
    parts: list[str] = []
    start = 0
    for i, ch, depth in _outside_quotes(body):
        if ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return [p.strip() for p in parts if p.strip()]


def _namespace_body(line: str) -> tuple[str, bool]:
    """The text between ``Namespace(`` and its matching ``)``; second value False if the line was cut short."""
    start = line.index("Namespace(") + len("Namespace(")
    for i, _, depth in _outside_quotes(line, start):
        if depth == -1:  # the ``)`` that closes ``Namespace(``
            return line[start:i], True
    return line[start:], False


def parse_namespace(line: str) -> dict[str, Any]:
    """``Namespace(a=1, b='x', dev=device(type='cuda'))`` -> ``{'a': 1, 'b': 'x', 'dev': "device(type='cuda')"}``.

    Values go through `ast.literal_eval`; whatever it refuses (object reprs, a value cut by a truncated line) is kept
    as its source text, so one odd argument never loses the others.
    """
    body, _complete = _namespace_body(line)
    args: dict[str, Any] = {}
    for part in _split_top_level(body):
        name, sep, value = part.partition("=")
        if not sep or not name.strip().isidentifier():
            continue
        try:
            args[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            args[name.strip()] = value.strip()
    return args


def _literal_dict(text: str) -> dict[str, Any] | None:
    """The last ``{...}`` literal of a line, or None (tqdm debris around a print is common)."""
    found = _DICT.findall(text)
    if not found:
        return None
    try:
        value = ast.literal_eval(found[-1])
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _metrics(d: dict[str, Any]) -> dict[str, float]:
    """``{'Epoch': 3, 'HIT@10': '0.0454', ...}`` -> ``{'hit@10': 0.0454, ...}`` (the logs print strings)."""
    out: dict[str, float] = {}
    for key, value in d.items():
        if str(key).lower() == "epoch":
            continue
        try:
            out[str(key).lower()] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _is_metric_dict(d: dict[str, Any]) -> bool:
    return "Epoch" in d and any("@" in str(k) for k in d)


def _is_train_dict(d: dict[str, Any]) -> bool:
    return "epoch" in d and not any("@" in str(k) for k in d)


def _seconds(elapsed: str) -> float:
    """tqdm's ``MM:SS`` or ``H:MM:SS`` -> seconds."""
    total = 0.0
    for field in elapsed.split(":"):
        total = total * 60 + float(field)
    return total


def split_runs(text: str) -> list[str]:
    """Cut a text holding several runs (append-mode ``log_file`` copies) before each ``Namespace(`` line.

    Text before the first header (data loading, tqdm) stays with the first run; a text without a header is one run.
    """
    lines = text.replace("\r", "\n").split("\n")
    starts = [i for i, line in enumerate(lines) if "Namespace(" in line]
    if len(starts) <= 1:
        return [text]
    bounds = [0, *starts[1:], len(lines)]
    return ["\n".join(lines[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def _pick_fragment(text: str, notes: list[str]) -> str:
    """A run of NUL bytes marks a hole: a second process wrote the same file at its own offset. Keep the fragment
    that has the ``Namespace`` header (its hyper-parameters are known) and say what was dropped."""
    fragments = re.split(r"\x00+", text)
    if len(fragments) == 1:
        return text
    keep = next((i for i, f in enumerate(fragments) if "Namespace(" in f), 0)
    for i, fragment in enumerate(fragments):
        if i == keep:
            continue
        epochs = [int(m) for m in re.findall(r"\{'epoch': (\d+)", fragment)]
        if epochs:
            span = f"epochs {min(epochs)}-{max(epochs)}"
        else:
            span = "no epochs"
        best = "with" if "Best Validation Scores" in fragment else "without"
        notes.append(f"NUL-byte hole: ignored fragment {i} ({len(fragment)} chars, {span}, {best} a final best block)")
    return fragments[keep]


def parse_log(text: str) -> dict[str, Any]:
    """Parse one training log of the authors' code (MDCNS or baseline format, see the module docstring).

    Returns ``{"args", "epochs", "best", "early_stopped", "patience", "notes"}``: ``args`` from the ``Namespace`` line
    (``{}`` when absent), ``epochs`` a list of ``{"epoch", "valid", "test", "train_seconds", "eval_seconds",
    "train_loss"}`` with the self model's metrics (``{"ndcg@10": 0.0634, "hit@10": ...}``; ``None`` when the log has
    none for that epoch), ``best`` ``{"epoch", "test"}`` from the final block or ``None`` when the run never reached it.
    Only the first run of a multi-run text is parsed (a note says so; use `split_runs`).
    """
    notes: list[str] = []
    text = _pick_fragment(text, notes)
    # tqdm redraws with \r: every redraw becomes its own line, prints stay whole.
    lines = text.replace("\r", "\n").split("\n")
    two_models = any(_MODEL_LINE.match(line) for line in lines)

    args: dict[str, Any] = {}
    epochs: dict[int, dict[str, Any]] = {}
    bars: dict[tuple[str, int], float] = {}
    current: dict[str, Any] | None = None
    section: str | None = None  # "valid" / "test" from a header, "best" in the final block, None: by order
    section_first_bare: dict[str, float] | None = None  # peer-free fallback when a section's Model-1 line is missing
    slot = 0  # results seen in the current epoch without headers: 0 -> valid, 1 -> test
    last_improved: int | None = None
    best_dict: dict[str, Any] | None = None
    early_stopped = False
    patience: int | None = None
    headers_seen = 0

    def close_section() -> None:
        # A truncated section (killed run) may have the bare dicts but not the "Model 1" line: the first bare dict
        # is the self model's (main.py prints model 1, model 2, ensemble in that order).
        nonlocal section_first_bare
        if current is not None and section in ("valid", "test") and current[section] is None and section_first_bare:
            current[section] = section_first_bare
        section_first_bare = None

    def store(result: dict[str, float]) -> None:
        nonlocal slot
        if current is None:
            return
        where = section if section in ("valid", "test") else ("valid" if slot == 0 else "test")
        if current[where] is None:
            current[where] = result
        slot += 1

    for number, line in enumerate(lines):
        if "Namespace(" in line:
            headers_seen += 1
            if headers_seen == 1:
                args = parse_namespace(line[line.index("Namespace(") :])
                continue
            notes.append(f"a second run starts at line {number + 1}; parsed the first only (use split_runs)")
            break
        bar = _BAR.search(line)
        if bar:
            # The last redraw of a bar holds its final elapsed time (tqdm prints the closing state twice).
            bars[(bar["phase"], int(bar["epoch"]))] = _seconds(bar["elapsed"])
            if "{" not in line:
                continue
        header = _SECTION.search(line)
        if header:
            close_section()
            section = "valid" if header["what"] == "Validation" else "test"
            continue
        if "Best Validation Scores for Test" in line or "Change to test_rating_matrix" in line:
            close_section()
            section = "best"
            continue
        if "Validation score increased" in line:
            if current is not None:
                last_improved = current["epoch"]
            continue
        counter = _PATIENCE.search(line)
        if counter:
            patience = int(counter["patience"])
            continue
        if line.strip().startswith("Early stopping"):
            early_stopped = True
            continue
        model_line = _MODEL_LINE.match(line)
        d = _literal_dict(line) if "{" in line else None
        if d is None:
            continue
        if _is_train_dict(d):
            close_section()
            epoch = int(d["epoch"])
            if current is not None and epoch <= current["epoch"]:
                notes.append(f"epoch numbering goes back to {epoch} at line {number + 1}; stopped there")
                break
            current = {
                "epoch": epoch,
                "valid": None,
                "test": None,
                "train_seconds": None,
                "eval_seconds": None,
                "train_loss": {k: float(v) for k, v in d.items() if k != "epoch" and _is_number(v)},
            }
            epochs[epoch] = current
            section, slot = None, 0
            continue
        if not _is_metric_dict(d):
            continue
        result = _metrics(d)
        if section == "best":
            if best_dict is None:
                best_dict = d
            continue
        if model_line:
            if model_line["index"] == "1":
                store(result)
            continue
        if two_models:
            # Bare dicts of the two-model format repeat the "Model k" lines; keep the first as a fallback only.
            if section in ("valid", "test") and section_first_bare is None:
                section_first_bare = result
            continue
        store(result)
    close_section()

    for (phase, epoch), seconds in bars.items():
        entry = epochs.get(epoch)
        if entry is None:
            continue
        if phase == "train":
            entry["train_seconds"] = seconds
        else:
            entry["eval_seconds"] = (entry["eval_seconds"] or 0.0) + seconds

    best: dict[str, Any] | None = None
    if best_dict is not None:
        has_test = any(e["test"] is not None for e in epochs.values())
        # MDCNS prints the selected epoch in the dict; the baselines print 0 (test(0) on the restored checkpoint).
        epoch = int(best_dict["Epoch"]) if has_test else last_improved
        if has_test and last_improved is not None and epoch != last_improved:
            notes.append(f"best block says epoch {epoch}, the last 'Validation score increased' was {last_improved}")
        best = {"epoch": epoch, "test": _metrics(best_dict)}
    elif epochs:
        notes.append("no final best block: the run was cut short (killed or still running when the log was copied)")
    if not args:
        notes.append("no Namespace header")
    return {
        "args": args,
        "epochs": [epochs[k] for k in sorted(epochs)],
        "best": best,
        "early_stopped": early_stopped,
        "patience": patience,
        "notes": notes,
    }


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


# ------------------------------------------------------------------------------------------------------ repository


def _git(repo: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    if not os.path.isdir(repo):
        raise FileNotFoundError(f"git repository not found: {repo}")
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, check=False, timeout=120)


def read_repo_file(repo: str, path: str, commit: str = "HEAD") -> str:
    """The text of ``commit:path`` in a (bare) git repository, via ``git show``.

    Raises FileNotFoundError naming the path and git's message when the path is not in that commit, or when the
    snapshot lists a blob it does not hold (large files of a partial mirror). Bytes that are not UTF-8 are replaced,
    NUL bytes are kept (`parse_log` uses them to find holes).
    """
    proc = _git(repo, "show", f"{commit}:{path}")
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip()
        raise FileNotFoundError(f"cannot read {commit}:{path} from {repo}: {message}")
    return proc.stdout.decode("utf-8", "replace")


def list_repo_files(repo: str, pattern: str, commit: str = "HEAD") -> list[str]:
    """Paths of ``commit``'s tree matching an fnmatch pattern (case-sensitive; ``*`` also crosses ``/``), sorted."""
    proc = _git(repo, "ls-tree", "-r", "-z", "--name-only", commit)
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip()
        raise FileNotFoundError(f"cannot list {commit} of {repo}: {message}")
    paths = [p for p in proc.stdout.decode("utf-8", "replace").split("\0") if p]
    return sorted(p for p in paths if fnmatch.fnmatchcase(p, pattern))


def resolve_commit(repo: str, commit: str = "HEAD") -> str:
    """Full sha of ``commit``."""
    proc = _git(repo, "rev-parse", "--verify", f"{commit}^{{commit}}")
    if proc.returncode != 0:
        raise FileNotFoundError(f"no commit {commit} in {repo}: {proc.stderr.decode('utf-8', 'replace').strip()}")
    return proc.stdout.decode().strip()


def repo_name(repo: str) -> str:
    """``owner/name`` of a mirror at ``.../owner+name/repo`` (the mirror's layout), else the origin URL's tail."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(repo)))
    if "+" in parent:
        return parent.replace("+", "/", 1)
    proc = _git(repo, "config", "--get", "remote.origin.url")
    url = proc.stdout.decode().strip().removesuffix(".git")
    return "/".join(url.replace(":", "/").split("/")[-2:]) if url else os.path.basename(os.path.abspath(repo))


# --------------------------------------------------------------------------------------------------------- summary


def infer_method(path: str, args: dict[str, Any]) -> str:
    """The method a log belongs to: two backbones -> MDCNS; a baseline folder name if the path has one; else the
    sampler. The baseline code calls DNS(M,N) 'DNS' in its arguments, so the folder (``cankao_DNS+``) decides."""
    if args.get("backbone2"):
        return "MDCNS"
    lowered = path.lower()
    for needle, name in (
        ("dns+", "DNS+"),
        ("srns", "SRNS"),
        ("gnno", "GNNO"),
        ("posmix", "PosMix"),
        ("two_pass", "two-pass"),
        ("uniform", "uniform (RNS)"),
    ):
        if needle in lowered:
            return name
    sampler = str(args.get("neg_sampler", "unknown"))
    return "uniform (RNS)" if sampler.lower() == "uniform" else sampler


def _threshold_key(threshold: float) -> str:
    return f"first_epoch_valid_{MONITOR}>={threshold:g}"


def summarize_run(path: str, run: dict[str, Any], thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """One summary row (see `summarize`)."""
    args = run.get("args", {})
    row: dict[str, Any] = {"file": path, "method": infer_method(path, args)}
    row.update({name: args[name] for name in SUMMARY_ARGS if name in args})
    scored = [e for e in run["epochs"] if e.get("valid") and MONITOR in e["valid"]]
    best_entry: dict[str, Any] | None = None
    for entry in scored:
        # Strictly better, as both codes' EarlyStopping: the first epoch reaching the maximum is the one kept.
        if best_entry is None or entry["valid"][MONITOR] > best_entry["valid"][MONITOR]:
            best_entry = entry
    best = run.get("best")
    test: dict[str, float] | None = None
    if best_entry is not None:
        test = best_entry.get("test")
        if test is None and best is not None and best["epoch"] == best_entry["epoch"]:
            test = best["test"]  # baseline format: only the final block has test numbers
    row.update(
        {
            "complete": best is not None,
            "early_stopped": run.get("early_stopped", False),
            "epochs_run": len(scored),
            "best_valid_epoch": best_entry["epoch"] if best_entry else None,
            f"valid_{MONITOR}": best_entry["valid"][MONITOR] if best_entry else None,
            "valid_ndcg@10": best_entry["valid"].get("ndcg@10") if best_entry else None,
            "test_ndcg@10": test.get("ndcg@10") if test else None,
            "test_hit@10": test.get("hit@10") if test else None,
            "test_ndcg@20": test.get("ndcg@20") if test else None,
            "logged_best_epoch": best["epoch"] if best else None,
            "logged_best_test_ndcg@10": best["test"].get("ndcg@10") if best else None,
        }
    )
    for threshold in thresholds:
        reached = next((e["epoch"] for e in scored if e["valid"][MONITOR] >= threshold), None)
        row[_threshold_key(threshold)] = reached
    for budget in BUDGETS:
        # Model selection replayed on the first `budget` epochs; None when the run is shorter or has no per-epoch test.
        window = [e for e in scored if e["epoch"] < budget]
        kept = None
        for entry in window:
            if kept is None or entry["valid"][MONITOR] > kept["valid"][MONITOR]:
                kept = entry
        usable = len(window) == budget and kept is not None and kept.get("test")
        row[f"test_ndcg@10_at_budget_{budget}"] = kept["test"].get("ndcg@10") if usable else None
    train = [e["train_seconds"] for e in run["epochs"] if e.get("train_seconds") is not None]
    evaluation = [e["eval_seconds"] for e in run["epochs"] if e.get("eval_seconds") is not None]
    row["median_train_seconds"] = statistics.median(train) if train else None
    row["median_eval_seconds"] = statistics.median(evaluation) if evaluation else None
    row["notes"] = list(run.get("notes", []))
    return row


def _sort_key(row: dict[str, Any]) -> tuple[bool, float]:
    value = row.get("test_ndcg@10")
    return (value is None, -(value or 0.0))


def summarize(runs: dict[str, dict], thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[dict]:
    """One row per run, best test NDCG@10 first (runs without a test number last).

    A row has the file, the method (`infer_method`), the hyper-parameters of `SUMMARY_ARGS` found in the Namespace,
    the best valid epoch (first epoch with the maximal self-model valid NDCG@20, the codes' own selection rule), the
    valid NDCG@20 / NDCG@10 there, the test NDCG@10 / HIT@10 / NDCG@20 at that epoch (the final block's numbers for
    the baseline format), the epochs run, the first epoch whose valid NDCG@20 reaches each threshold (None if never),
    the median train / evaluation seconds per epoch (None without tqdm bars), the test NDCG@10 the same selection
    restricted to the first epochs of each of `BUDGETS` would have kept, what the final block logged, and notes.
    """
    rows = [summarize_run(path, run, thresholds) for path, run in runs.items()]
    return sorted(rows, key=_sort_key)


def _median(values: Iterable[float | int | None]) -> float | None:
    kept = [v for v in values if v is not None]
    if not kept:
        return None
    middle = statistics.median(kept)
    # Mean of two 4-decimal values: round off the binary noise (0.05495000000000001).
    return round(middle, 6) if isinstance(middle, float) else middle


def aggregate(rows: Sequence[dict[str, Any]], thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[dict]:
    """Per (method, backbone, peer, loss) group: run counts; range and median of test NDCG@10; the best run by test
    (what a best-of-grid table reports) and the run a validation-only choice would take (highest valid NDCG@20) with
    its test NDCG@10; the median of test minus valid NDCG@10 (valid and test are different users here); the median
    best epoch; the median first epoch reaching each threshold (over the runs that reach it, with their count) and
    the median of the runs' median train / evaluation seconds per epoch; the median test NDCG@10 that model selection
    restricted to the first 10 / 20 / 30 / 50 epochs would have given (`BUDGETS`)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(str(row.get(name) or "") for name in ("method", "backbone", "backbone2", "loss_type"))
        groups.setdefault(key, []).append(row)
    out = []
    for (method, backbone, peer, loss), members in groups.items():
        scored = [r for r in members if r.get("test_ndcg@10") is not None]
        values = [r["test_ndcg@10"] for r in scored]
        top = max(scored, key=lambda r: r["test_ndcg@10"]) if scored else None
        by_valid = max(scored, key=lambda r: r[f"valid_{MONITOR}"]) if scored else None
        gaps = [r["test_ndcg@10"] - r["valid_ndcg@10"] for r in scored if r.get("valid_ndcg@10") is not None]
        entry: dict[str, Any] = {
            "method": method,
            "backbone": backbone or None,
            "backbone2": peer or None,
            "loss_type": loss or None,
            "runs": len(members),
            "complete": sum(1 for r in members if r["complete"]),
            "test_ndcg@10_min": min(values) if values else None,
            "test_ndcg@10_median": _median(values),
            "test_ndcg@10_max": max(values) if values else None,
            "best_file": top["file"] if top else None,
            "valid_selected_file": by_valid["file"] if by_valid else None,
            "valid_selected_test_ndcg@10": by_valid["test_ndcg@10"] if by_valid else None,
            "test_minus_valid_ndcg@10_median": _median(gaps),
            "best_valid_epoch_median": _median(r["best_valid_epoch"] for r in members),
            "epochs_run_median": _median(r["epochs_run"] for r in members),
            "median_train_seconds": _median(r["median_train_seconds"] for r in members),
            "median_eval_seconds": _median(r["median_eval_seconds"] for r in members),
        }
        for threshold in thresholds:
            key = _threshold_key(threshold)
            entry[key + "_median"] = _median(r[key] for r in members)
            entry[key + "_runs_reaching"] = sum(1 for r in members if r[key] is not None)
        for budget in BUDGETS:
            key = f"test_ndcg@10_at_budget_{budget}"
            entry[key + "_median"] = _median(r.get(key) for r in members)
        out.append(entry)
    return out


def _fmt(key: str, value: Any) -> str:
    """Metrics with 4 decimals (as logged), seconds with 1, hyper-parameters as written (0.7, 10, 1e-05)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if "@" in key:
            return f"{value:.4f}"
        if key.endswith("seconds"):
            return f"{value:.1f}"
        return f"{value:g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> str:
    """The summary as a Markdown table, in the rows' order."""
    columns: list[tuple[str, str]] = [
        ("file", "file"),
        ("method", "method"),
        ("backbone", "self"),
        ("backbone2", "peer"),
        ("loss_type", "loss"),
        ("d_lambda", "l"),
        ("K_hns", "k"),
        ("N", "N"),
        ("M", "M"),
        ("kd_temperature", "kdt"),
        ("kd_gamma", "kdg"),
        ("epochs_run", "epochs"),
        ("best_valid_epoch", "best ep"),
        (f"valid_{MONITOR}", "val N@20"),
        ("test_ndcg@10", "test N@10"),
        ("test_hit@10", "test H@10"),
    ]
    columns += [(_threshold_key(t), f"ep N@20>={t:g}") for t in thresholds]
    columns += [("median_train_seconds", "train s/ep"), ("median_eval_seconds", "eval s/ep")]
    # Columns no row fills (M for MDCNS runs, kd_* for baselines) are noise in the table.
    columns = [(key, title) for key, title in columns if any(row.get(key) is not None for row in rows)]
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_fmt(key, os.path.basename(row[key]) if key == "file" else row.get(key)) for key, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------- CLI


def dumps_result(value: Any, level: int = 0) -> str:
    """JSON with one line per epoch, summary row and run header field: a few MB of per-epoch numbers stay readable
    and diff line by line, without the blow-up of indenting every metric."""

    def records(v: Any) -> bool:  # a list of dicts (epochs, summary rows), or a dict holding one
        if isinstance(v, list):
            return bool(v) and all(isinstance(x, dict) for x in v)
        return isinstance(v, dict) and any(records(x) for x in v.values())

    if not (records(value) or (isinstance(value, dict) and level < 2)):
        return json.dumps(value, separators=(",", ":"))
    pad, inner = " " * level, " " * (level + 1)
    if isinstance(value, list):
        body = ",\n".join(inner + dumps_result(x, level + 1) for x in value)
        return "[\n" + body + "\n" + pad + "]"
    body = ",\n".join(f"{inner}{json.dumps(str(k))}: {dumps_result(v, level + 1)}" for k, v in value.items())
    return "{\n" + body + "\n" + pad + "}" if body else "{}"


CURVE_METRICS = ("ndcg@10", "ndcg@20")


def curves_only(run: dict[str, Any]) -> dict[str, Any]:
    """A parsed run reduced to what curves and summaries use: per epoch the valid/test ``CURVE_METRICS`` and the
    seconds (no losses, no @5 metrics), so that a results file of 40 runs stays well under a megabyte."""
    keep = lambda metrics: {k: v for k, v in (metrics or {}).items() if k in CURVE_METRICS}  # noqa: E731
    epochs = [
        {
            "epoch": e["epoch"],
            "valid": keep(e.get("valid")),
            "test": keep(e.get("test")),
            "train_seconds": e.get("train_seconds"),
            "eval_seconds": e.get("eval_seconds"),
        }
        for e in run["epochs"]
    ]
    return {**run, "epochs": epochs}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.authors_logs",
        description="Parse the MDCNS authors' released training logs out of a git snapshot into one JSON file and "
        "print a Markdown summary (sorted by test NDCG@10 at the best validation epoch).",
    )
    parser.add_argument("--repo", required=True, help="git directory of the snapshot (bare is fine)")
    parser.add_argument(
        "--pattern",
        action="append",
        required=True,
        help="fnmatch pattern over the tree's paths ('*' crosses '/'); repeat for several",
    )
    parser.add_argument("--commit", default="HEAD", help="commit to read (default HEAD; recorded as a full sha)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument(
        "--split-runs",
        action="store_true",
        help="cut each file before every Namespace line and key the runs 'path#k' (the append-mode output/*.txt)",
    )
    parser.add_argument(
        "--full", action="store_true", help="keep every parsed field per epoch (default: curves only, `curves_only`)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        action="append",
        help=f"valid {MONITOR} level whose first epoch is reported; repeat (default {list(DEFAULT_THRESHOLDS)})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    thresholds = tuple(options.threshold) if options.threshold else DEFAULT_THRESHOLDS
    commit = resolve_commit(options.repo, options.commit)
    paths: list[str] = []
    for pattern in options.pattern:
        matched = list_repo_files(options.repo, pattern, commit)
        if not matched:
            print(f"warning: no file matches {pattern!r}", file=sys.stderr)
        paths += [p for p in matched if p not in paths]
    runs: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for path in paths:
        try:
            text = read_repo_file(options.repo, path, commit)
        except FileNotFoundError as error:
            # A partial mirror lists large blobs it does not hold: record the gap, keep the rest.
            skipped[path] = str(error)
            print(f"warning: {error}", file=sys.stderr)
            continue
        pieces = split_runs(text) if options.split_runs else [text]
        for k, piece in enumerate(pieces):
            runs[path if len(pieces) == 1 else f"{path}#{k}"] = parse_log(piece)
    rows = summarize(runs, thresholds)
    result = {
        **common.envelope(common.command_line("benchmarks.authors_logs", None if argv is None else list(argv))),
        "source": {"repo": repo_name(options.repo), "commit": commit, "patterns": list(options.pattern)},
        "thresholds": list(thresholds),
        "skipped": skipped,
        "aggregate": aggregate(rows, thresholds),
        "runs": runs if options.full else {path: curves_only(run) for path, run in runs.items()},
        "summary": rows,
    }
    common.close(result)
    os.makedirs(os.path.dirname(os.path.abspath(options.out)), exist_ok=True)
    with open(options.out, "w") as f:
        f.write(dumps_result(result) + "\n")
    print(markdown_table(rows, thresholds))
    print(f"\n{len(runs)} runs from {len(paths)} files ({len(skipped)} unreadable) -> {options.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
