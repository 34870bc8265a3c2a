"""`conftest.wait_while_progressing`, the wait the multi-process tests use: slow is not hung."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import wait_while_progressing


def test_a_slow_process_that_keeps_working_is_waited_for():
    # 4 s of CPU work against a 2 s stall window: a fixed 2 s timeout would have failed it
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 4\nwhile time.time() < end: pass"])
    assert wait_while_progressing([busy], stall_seconds=2.0, limit_seconds=60.0) == [0]


def test_a_process_that_writes_its_log_is_waited_for(tmp_path):
    log = tmp_path / "log"
    code = "import sys, time\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(1)"
    with open(log, "w") as f:
        writer = subprocess.Popen([sys.executable, "-c", code], stdout=f)
        assert wait_while_progressing([writer], [str(log)], stall_seconds=2.5, limit_seconds=60.0) == [0]


def test_a_hung_process_fails_after_the_stall_window():
    hung = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(TimeoutError, match="no progress"):
            wait_while_progressing([hung], stall_seconds=2.0, limit_seconds=30.0)
    finally:
        hung.kill()
        hung.wait()
