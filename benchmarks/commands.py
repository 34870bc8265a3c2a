"""The project's own commands as child processes: their argument lists and the environment they run in.

Benchmarks run the pipeline and the trainer in subprocesses (a fresh runtime each, a crash is a note, not the end of
the benchmark); building those command lines in one place keeps every caller's flags the same.
"""

from __future__ import annotations

import os
import sys

from benchmarks import common


def module_command(module: str, *args: str) -> list[str]:
    """``python -m module args...`` with this interpreter (the venv's, whatever ``python`` is on the PATH)."""
    return [sys.executable, "-m", module, *args]


def pipeline_command(input_path: str, input_format: str, split: str, output: str, *extra: str) -> list[str]:
    """``python -m pipeline.run`` from ``input_path`` to ``output``; ``extra`` flags are appended as given."""
    return module_command(
        "pipeline.run",
        "--input",
        input_path,
        "--input_format",
        input_format,
        "--split",
        split,
        "--output",
        output,
        *extra,
    )


def child_env() -> dict[str, str]:
    """This environment with the repo first on ``PYTHONPATH`` (a child finds the checkout's code even when the
    package is not installed) and TensorFlow's C++ log quietened."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (common.REPO, env.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env
