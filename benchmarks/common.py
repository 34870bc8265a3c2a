"""What every benchmark result carries: the command, when it was measured, the machine and its load, the library
versions and the repo state (all from `mdcns_tf.runs.provenance`, shared with every training run).

`envelope` starts a result with them and `write_result` adds the load at the end and writes it: every results JSON
has the same keys, so one reader serves them all. Files written before the envelope named the timestamp ``when``,
``date``, ``finished_at`` or ``updated``; `measured_at` reads any of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from mdcns_tf.runs import provenance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
# The real datasets live beside the repo, never inside it (../shared/data/README.md).
SHARED = os.path.normpath(os.path.join(REPO, "..", "shared"))
DEFAULT_DATA_ROOT = os.path.join(SHARED, "data")


def data_root() -> str:
    """Where the raw datasets are: ``$MDCNS_SHARED_DATA``, else ../shared/data beside the repo."""
    return os.environ.get("MDCNS_SHARED_DATA", DEFAULT_DATA_ROOT)


def add_data_root_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root",
        default=data_root(),
        help="folder holding the raw datasets (default ../shared/data or $MDCNS_SHARED_DATA)",
    )


# The library's own list plus what the benchmarks draw with; versions come from package metadata, so the parent
# process never has to import TensorFlow.
PACKAGES = (*provenance.PACKAGES, "matplotlib")


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, platform, memory and the load at the time of the measurement (`mdcns_tf.runs.provenance`)."""
    return provenance.machine()


def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    return provenance.versions(packages)


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the repo (None when it is not a git checkout), to trace a number to the code."""
    return provenance.git_state(REPO)


def command_line(module: str, argv: list[str] | None = None) -> str:
    """The command as a user would retype it from the repo root."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "-m", module, *args])


def now() -> str:
    return provenance.now()


# The one name of a result's timestamp; older files used the others (read by `measured_at`).
TIMESTAMP_KEY = "measured_at"
OLD_TIMESTAMP_KEYS = ("when", "date", "finished_at", "updated")


def envelope(command: str, packages: Sequence[str] = PACKAGES) -> dict[str, Any]:
    """The head of a results JSON, taken when the measurement starts: the command, the timestamp, the machine (with
    its 1-minute load average: the machine may be shared), the versions of ``packages`` and the git state."""
    return {
        "command": command,
        TIMESTAMP_KEY: now(),
        "machine": machine_info(),
        "versions": versions(packages),
        "git": git_state(),
    }


def measured_at(result: dict[str, Any]) -> str | None:
    """The timestamp of a result, whichever key the script that wrote it used."""
    for key in (TIMESTAMP_KEY, *OLD_TIMESTAMP_KEYS):
        if key in result:
            return result[key]
    return None


def close(result: dict[str, Any]) -> dict[str, Any]:
    """Records the load average at the end beside the one at the start of an `envelope`: load that came and went
    during a long measurement shows."""
    result["machine"]["load_average_1m_end"] = machine_info().get("load_average_1m")
    return result


def machine_line(result: dict[str, Any]) -> str:
    """The machine of a result in one line for its markdown: cores, CPU and the load around the measurement."""
    machine = result["machine"]
    end = machine.get("load_average_1m_end")
    return (
        f"{machine['cores']} cores, {machine['cpu_model']}, load average {machine.get('load_average_1m')} at the start"
        + (f", {end} at the end" if end is not None else "")
        + " (shared machine: absolute times are indicative, ratios are measured side by side)"
    )


def write_result(path: str, result: dict[str, Any]) -> None:
    """`close`, then writes ``result`` atomically."""
    write_json(path, close(result))


def portable(value: Any) -> Any:
    """``value`` with this checkout's absolute paths made relative: the repository root becomes the repo-relative
    path, the ``shared`` folder beside it ``../shared``. A committed result then names no folder of the machine it
    was measured on; a path from a flag or an environment variable outside both stays as given."""
    if isinstance(value, str):
        return value.replace(REPO + os.sep, "").replace(SHARED + os.sep, "../shared" + os.sep)
    if isinstance(value, dict):
        return {portable(key): portable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [portable(item) for item in value]
    return value


def write_json(path: str, payload: Any) -> None:
    """Atomic write: a killed process never leaves a half-written (and so "finished") result behind. Paths inside
    the checkout or ``../shared`` are written relative (`portable`)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(portable(payload), f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def repo_relative(path: str) -> str:
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path
