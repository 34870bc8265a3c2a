"""What the command-line entry points share, kept free of TensorFlow so that ``--help`` answers at once.

Every entry point parses its arguments with only this, `argparse` and the standard library loaded, and imports
TensorFlow in the functions that run after parsing: ``--help`` and usage errors come back in a fraction of a second
instead of after the 3-5 s TensorFlow import.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def prog(module: str, script: str) -> str:
    """The command as the user typed it, for usage lines: the console script ``script`` (``mdcns-train``) when run
    through it, otherwise ``python -m module``. argparse's own default would be ``train.py`` under ``python -m``."""
    return script if os.path.basename(sys.argv[0]) == script else f"python -m {module}"


def parser(module: str, script: str | None, description: str | None) -> argparse.ArgumentParser:
    """An entry point's argument parser: usage named as typed (`prog`; ``python -m module`` for a module without a
    console script), the module docstring as the description, its line breaks kept (the docstrings show commands
    and file layouts)."""
    return argparse.ArgumentParser(
        prog=prog(module, script) if script else f"python -m {module}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def setup_logging() -> None:
    """INFO log lines with timestamps for the CLIs; TensorFlow's and absl's own chatter only from WARNING up."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
