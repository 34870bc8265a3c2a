"""``<output_dir>/metrics.json``: what a training run reports, written so that a reader never sees half a file."""

from __future__ import annotations

import json
import os
from typing import Any

METRICS_FILE = "metrics.json"


def write_metrics(out_dir: str, result: dict[str, Any]) -> None:
    """Writes ``result`` to ``<out_dir>/metrics.json`` atomically (a temporary file renamed into place)."""
    path = os.path.join(out_dir, METRICS_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
