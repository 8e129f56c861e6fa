"""The driver side of preemption: SIGTERM reaches a rank once the rank can save (Linux /proc)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pipeline.train.jobs import _catches_sigterm, _signal_when_caught

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

CHILD = """
import signal, sys, time
time.sleep(0.5)  # starting: no handler yet, as a rank torchrun has just started
signal.signal(signal.SIGTERM, lambda *_: (print("saved", flush=True), sys.exit(0)))
print("ready", flush=True)
time.sleep(30)
"""


def test_a_just_started_rank_gets_sigterm_once_it_catches_it():
    """Before, the forwarded signal killed a rank still starting (no checkpoint, and torchrun
    printed the rank's death with a traceback); now it waits for the rank's handler."""
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.1)
        assert not _catches_sigterm(child.pid)
        _signal_when_caught([child.pid], timeout_s=20)
        out, _ = child.communicate(timeout=20)
    finally:
        child.kill()
    assert child.returncode == 0 and out.split() == ["ready", "saved"], (child.returncode, out)


def test_a_rank_that_never_catches_sigterm_is_ended_at_the_timeout():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = time.monotonic()
        _signal_when_caught([child.pid], timeout_s=0.5)
        assert child.wait(timeout=10) == -15 and time.monotonic() - started < 5
    finally:
        child.kill()
