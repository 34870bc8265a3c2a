"""What produced a result: the config and its hash, the data's fingerprint, the code, the libraries, the machine.

`run_record` goes into every ``metrics.json`` and every export's ``assets.extra/model_card.json``; the benchmarks
stamp their results with `machine`, `versions` and `git_state`. Nothing here imports TensorFlow (versions come from
package metadata), so a benchmark's parent process can call it cheaply, and nothing here raises: a fact that cannot
be read is recorded as None.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import mdcns_tf

# Distribution names whose versions decide what a run computes.
PACKAGES = ("tensorflow", "tf-keras", "apache-beam", "tensorflow-recommenders", "numpy")
# The folder holding the `mdcns_tf` package: the repository root in a checkout, site-packages once installed.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mdcns_tf.__file__)))


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo ("unknown" off Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    # The affinity mask is what a container or taskset really grants; os.cpu_count() counts the host's cores.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    """Cores, CPU model, platform, memory and the load when called (the machine may be shared)."""
    info: dict[str, Any] = {
        "cores": usable_cores(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "memory_gib": None,
    }
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            total_kb = int(f.readline().split()[1])
        info["memory_gib"] = round(total_kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, None when it is not installed."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(root: str = SOURCE_ROOT) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the git checkout whose top folder is ``root``; both None when ``root`` is not the
    top of a checkout (an installed package, even inside some other repository's venv), or git is missing."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", root, *args], capture_output=True, text=True, timeout=10, check=True, stdin=subprocess.DEVNULL
        )
        return done.stdout.strip()

    try:
        top = git("rev-parse", "--show-toplevel")
        if os.path.realpath(top) != os.path.realpath(root):
            return {"commit": None, "dirty": None}
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError, ValueError):
        return {"commit": None, "dirty": None}


def now() -> str:
    """UTC now, to the second, ISO 8601."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def run_record(config_dict: dict[str, Any], data_dir: str, data_fingerprint: dict[str, Any] | None) -> dict[str, Any]:
    """What a training run or an export was made from: ``config_dict`` (`Config.to_dict`, resolved) and its
    `run_state.config_hash`, the data folder and its ``metadata.json`` fingerprint (None for data written before
    fingerprints), package versions, git state, machine, ranking-metric version and the command line."""
    # Imported here: both import TensorFlow, which the callers of the functions above must not pay for.
    from mdcns_tf.metrics import METRIC_VERSION
    from mdcns_tf.runs.state import config_hash

    return {
        "created_at": now(),
        "argv": list(sys.argv),
        "config": config_dict,
        "config_hash": config_hash(config_dict),
        "data": {"dir": data_dir, "fingerprint": data_fingerprint},
        "metric_version": METRIC_VERSION,
        "versions": versions(),
        "git": git_state(),
        "machine": machine(),
    }
