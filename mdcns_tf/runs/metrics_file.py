"""``<output_dir>/metrics.json``: what a training run reports, written so that a reader never sees half a file."""

from __future__ import annotations

import json
import os
from typing import Any

METRICS_FILE = "metrics.json"


def write_metrics(out_dir: str, result: dict[str, Any]) -> None:
    """Writes ``result`` to ``<out_dir>/metrics.json`` atomically (a temporary file renamed into place). A value
    that is not a finite number is never written as a result: ValueError (``allow_nan=False``: JSON has no NaN, and
    a NaN metric or loss is a failed run, not a number)."""
    path = os.path.join(out_dir, METRICS_FILE)
    try:
        text = json.dumps(result, indent=1, allow_nan=False)
    except ValueError:
        raise ValueError(f"{path}: a metric or loss is NaN or infinite; the run is not reported as a result") from None
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
