"""What every benchmark result carries: the machine, the library versions, the repo state (all from
`mdcns_tf.provenance`, shared with every training run) and the command."""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Any

from mdcns_tf import provenance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
# The real datasets live beside the repo, never inside it (../shared/data/README.md).
DEFAULT_DATA_ROOT = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))

# The library's own list plus what the benchmarks draw with; versions come from package metadata, so the parent
# process never has to import TensorFlow.
PACKAGES = (*provenance.PACKAGES, "matplotlib")


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, platform, memory and the load at the time of the measurement (`mdcns_tf.provenance`)."""
    return provenance.machine()


def versions() -> dict[str, str | None]:
    return provenance.versions(PACKAGES)


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the repo (None when it is not a git checkout), to trace a number to the code."""
    return provenance.git_state(REPO)


def command_line(module: str, argv: list[str] | None = None) -> str:
    """The command as a user would retype it from the repo root."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "-m", module, *args])


def now() -> str:
    return provenance.now()


def write_json(path: str, payload: Any) -> None:
    """Atomic write: a killed process never leaves a half-written (and so "finished") result behind."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def repo_relative(path: str) -> str:
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path
