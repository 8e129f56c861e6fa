"""The driver side of a training job: preemption and the report (the command is ``pipeline train``).

Preemption: SIGTERM to the driver is passed on to the ranks (the processes ``torchrun``
started), which finish their step, save a checkpoint and stop; the driver waits for them
(:class:`DriverPreemption`) and reads what they saved (:func:`saved_state`). A SIGTERM sent to
the whole process group ends the same way. A SIGTERM before any rank runs (Spark or ``torchrun``
still starting) has nothing to save: the command stops as for any other SIGTERM (exit 143).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from typing import Any

__all__ = ["DriverPreemption", "report", "saved_state"]

log = logging.getLogger(__name__)


class DriverPreemption:
    """Driver side of SIGTERM: pass it on to the ranks, then :meth:`wait_for_ranks` lets them save."""

    def __init__(self) -> None:
        self.received = False
        self._ranks: list[int] = []
        self._previous: Any = None
        self._watching = False  # a thread passes the signal on to ranks that start later

    def __enter__(self) -> DriverPreemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received:
            return
        ranks = _rank_processes()
        if not ranks:
            # No rank runs yet (Spark or torchrun still starting): nothing to save. Ranks that
            # start anyway get the signal as soon as they exist; the caller's handler decides
            # (the CLI's stops the command: exit 143; TorchDistributor's launcher then
            # terminates torchrun on the way out). It is asked again when the CLI raises a
            # dropped interruption again (one raised inside a finalizer).
            if not self._watching:
                self._watching = True
                threading.Thread(
                    target=self._forward_when_started, name="sigterm-to-ranks", daemon=True
                ).start()
            if callable(self._previous):
                self._previous(signum, frame)
            return
        self._forward(ranks)

    def _forward_when_started(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ranks = _rank_processes()
            if ranks:
                self._forward(ranks)
                return
            time.sleep(0.2)

    def _forward(self, ranks: list[int]) -> None:
        self.received = True
        self._ranks = ranks
        log.warning("SIGTERM: asking %d rank(s) to save a checkpoint and stop", len(self._ranks))
        waiting = []
        for pid in self._ranks:
            if _catches_sigterm(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            else:
                waiting.append(pid)
        if waiting:  # just started: the signal would kill them, and torchrun would print a traceback
            threading.Thread(
                target=_signal_when_caught, args=(waiting,), name="sigterm-when-caught", daemon=True
            ).start()

    def wait_for_ranks(self, timeout_s: float = 300.0) -> None:
        """Wait until the ranks that got the signal have exited (they save first)."""
        deadline = time.monotonic() + timeout_s
        while self._ranks and time.monotonic() < deadline:
            self._ranks = [pid for pid in self._ranks if _alive(pid)]
            time.sleep(0.1)


def _catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a SIGTERM handler (Linux ``/proc``: ``SigCgt``)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _signal_when_caught(pids: list[int], timeout_s: float = 120.0) -> None:
    """SIGTERM to each of ``pids`` once it catches SIGTERM (its training loop started), or at the end.

    A rank that torchrun has just started runs no handler yet: SIGTERM would end it at once,
    with nothing saved, and torchrun would report the rank's death with a traceback. Its
    training loop saves a checkpoint and stops when the signal comes after the loop started.
    """
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        for pid in list(pids):
            if not _alive(pid):
                pids.remove(pid)
            elif _catches_sigterm(pid):
                pids.remove(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        time.sleep(0.05)
    for pid in pids:  # never caught it: ended as before
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _rank_processes() -> list[int]:
    """PIDs of this process's descendants started by ``torchrun`` (Linux ``/proc``; else none)."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                commands[int(entry)] = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue

    def descends(pid: int) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            if pid == os.getpid():
                return True
            pid, seen = parents.get(pid, 0), seen + 1
        return False

    return sorted(
        pid
        for pid, parent in parents.items()
        if "torch.distributed.run" in commands.get(parent, "") and descends(pid)
    )


def saved_state(run_dir: str) -> dict[str, Any]:
    """``metrics.json`` of ``run_dir`` (``status``, ``resume``, ...), ``{}`` when there is none."""
    metrics = os.path.join(os.path.expanduser(run_dir), "metrics.json")
    try:
        with open(metrics, encoding="utf-8") as fh:
            return dict(json.load(fh))
    except (OSError, ValueError):
        return {}


def report(result: dict[str, Any]) -> str:
    """A short human-readable summary of a training result."""
    final = result.get("final", {})
    lines = [
        f"trained {result['epochs_trained']} epoch(s) on {result['world_size']} rank(s) "
        f"({result['backend']}, {result['device']}) in {result['train_seconds']:.1f} s"
        + (f", resumed after epoch {result['resumed_from_epoch']}" if result["resumed_from_epoch"] else "")
        + (f" at step {result['resumed_from_step']}" if result.get("resumed_from_step") else ""),
    ]
    for key in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "eval_perplexity"):
        if key in final:
            lines.append(f"  {key:16s} {final[key]:.4f}")
    lines.append(f"  metrics          {result['metrics']}")
    lines.append(f"  loss curve       {result['loss_curve']}")
    if result.get("resume"):
        lines.append(result["resume"])
    return "\n".join(lines)
