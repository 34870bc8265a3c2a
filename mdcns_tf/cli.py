"""What the command-line entry points share, kept free of TensorFlow so that ``--help`` answers at once.

Every entry point parses its arguments with only this, `argparse` and the standard library loaded, and imports
TensorFlow in the functions that run after parsing: ``--help`` and usage errors come back in a fraction of a second
instead of after the 3-5 s TensorFlow import.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator


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


# What TensorFlow's C++ side prints on every start on a machine without a GPU, before absl logging is initialised
# (so neither TF_CPP_MIN_LOG_LEVEL nor absl's flags reach it): the CUDA stubs' "no driver" lines, the failed cuInit,
# the oneDNN notice and absl's own preamble. Nothing a CPU user can act on.
_CPU_START_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|cudart_stub\.cc|cuda_platform\.cc:\d+\] failed call to cuInit"
    r"|port\.cc:\d+\] oneDNN custom operations are on|cpu_feature_guard\.cc"
)
VERBOSE_START_ENV = "MDCNS_TF_VERBOSE_START"


@contextlib.contextmanager
def without_cpu_start_noise() -> Iterator[None]:
    """Captures the process's stderr (fd 2, so C++ writes too) for the block, then writes back every line except
    the CPU-machine start-up noise (`_CPU_START_NOISE`)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not _CPU_START_NOISE.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def start_tensorflow() -> None:
    """Imports TensorFlow and lets it look for devices `without_cpu_start_noise`: warnings and errors still show.
    ``MDCNS_TF_VERBOSE_START=1`` shows everything."""
    if os.environ.get(VERBOSE_START_ENV):
        import tensorflow  # noqa: F401

        return
    with without_cpu_start_noise():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the device search is what calls cuInit


TRACEBACK_ENV = "MDCNS_TF_TRACEBACK"


def run_command(work: Callable[[], object], errors: tuple[type[BaseException], ...] = (ValueError, OSError)) -> int:
    """Runs a TensorFlow entry point's ``work`` once its arguments are parsed: logging set up, TensorFlow started
    (`start_tensorflow`), then 0 when ``work`` returns, or 2 with one ``error:`` line on stderr for an expected
    failure (a bad config, a missing file: ``errors``; `ConfigError` is a ValueError), so that a user reads what to
    do instead of a traceback. ``MDCNS_TF_TRACEBACK=1`` lets the traceback through."""
    setup_logging()
    start_tensorflow()
    try:
        work()
    except errors as e:
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"error: {getattr(e, 'message', None) or e}", file=sys.stderr)
        return 2
    return 0
