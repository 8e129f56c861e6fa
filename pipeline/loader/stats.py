"""What a loader did and where its time went: ``loader.stats()``.

:class:`LoaderStats` is filled by every stage of a loader while it runs -- the reader's threads
(read, decode), the prefetch thread (shuffle, transform, collate), the training loop's thread
(host-to-device copies, and the time it waited inside ``next(loader)``) -- and turned into a
plain dict by :meth:`LoaderStats.snapshot`::

    {"batches": 120, "samples": 7680, "seconds": 3.1, "samples_per_s": 2477.4,
     "wait_fraction": 0.62,                  # share of the loop's wall time spent waiting for data
     "stages": {"read": 0.21, "decode": 3.70, "transform": 0.0, "shuffle": 0.02,
                "collate": 0.35, "h2d": 0.0},  # seconds, summed over the threads of each stage
     "bound_by": "decode",                   # the stage that limits throughput (see below)
     "queues": {"prefetched": 2, "prefetch_capacity": 2, "reading": 4, "buffered_rows": 4096},
     "rss_bytes": 412000000, "cpu_percent": 171.0, "workers": 2,
     "epoch": {"epoch": 1, "batches": 40, "samples": 2560, "seconds": 1.0, ...}}

``seconds`` runs from the first request for a batch. ``bound_by`` is ``"consumer"`` when the
loop waited less than 10% of its time (the training step is the bottleneck); otherwise the
stage with the most time per batch, counting the reader's stages divided by its threads.
Times are wall-clock seconds inside each stage (``time.perf_counter``); a stage that runs in
several threads at once adds up the threads' time, like CPU time.
"""

from __future__ import annotations

import functools
import os
import resource
import threading
import time
from typing import Any

from pipeline.reader.workers import time_reads

__all__ = ["STAGES", "LoaderStats", "bound_by", "process_rss_bytes", "time_source_reads"]

STAGES = ("read", "decode", "transform", "shuffle", "collate", "h2d")
"""Stages of :meth:`LoaderStats.snapshot`'s ``stages``, in data order."""

_CONSUMER_BOUND = 0.1


def process_rss_bytes() -> int:
    """Resident memory of this process now (Linux ``/proc``; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if os.uname().sysname == "Darwin" else 1024)


def time_source_reads(source: Any, stats: LoaderStats) -> None:
    """Count the Parquet reads of ``source`` (a ``DatasetSource``) as stage ``read``.

    The reader times each work item as a whole (read + decode); this wraps the source's
    row-group read on this one object so the two can be told apart
    (:func:`pipeline.reader.workers.time_reads`, which worker processes use too).
    """
    time_reads(source, functools.partial(stats.add, "read"))


class LoaderStats:
    """Thread-safe counters of one loader (see the module docstring for what they mean).

    Args:
        workers: Reader threads (divides the reader's stage times when finding the bound).
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._lock = threading.Lock()
        self._stages: dict[str, float] = dict.fromkeys((*STAGES, "read+decode"), 0.0)
        self._started: float | None = None
        self._cpu0 = _cpu_seconds()
        self._batches = self._samples = 0
        self._wait = 0.0
        self._epoch: dict[str, Any] | None = None

    def add(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to ``stage`` (called from any thread)."""
        with self._lock:
            self._stages[stage] = self._stages.get(stage, 0.0) + seconds

    def requested(self) -> float:
        """The consumer asks for a batch; returns the time it asked."""
        now = time.perf_counter()
        if self._started is None:
            self._started = now
        return now

    def delivered(self, asked: float, rows: int, epoch: int) -> None:
        """The consumer got a batch of ``rows`` rows of ``epoch`` after asking at ``asked``."""
        now = time.perf_counter()
        with self._lock:
            if self._epoch is None or self._epoch["epoch"] != epoch:
                self._epoch = {
                    "epoch": epoch,
                    "started": asked,
                    "batches": 0,
                    "samples": 0,
                    "wait": 0.0,
                    "stages": dict(self._stages),
                    "cpu": _cpu_seconds(),
                }
            self._batches += 1
            self._samples += rows
            self._wait += now - asked
            self._epoch["batches"] += 1
            self._epoch["samples"] += rows
            self._epoch["wait"] += now - asked

    def snapshot(self, queues: dict[str, int] | None = None) -> dict[str, Any]:
        """The counters as a JSON-serialisable dict (see the module docstring)."""
        now = time.perf_counter()
        with self._lock:
            stages = dict(self._stages)
            epoch = dict(self._epoch) if self._epoch is not None else None
            batches, samples, wait = self._batches, self._samples, self._wait
        seconds = now - self._started if self._started is not None else 0.0
        out = _summary(batches, samples, wait, seconds, _stage_view(stages), self.workers)
        out["cpu_percent"] = _percent(_cpu_seconds() - self._cpu0, seconds)
        out["rss_bytes"] = process_rss_bytes()
        out["workers"] = self.workers
        out["queues"] = dict(queues or {})
        if epoch is not None:
            since = {k: v - epoch["stages"].get(k, 0.0) for k, v in stages.items()}
            e_seconds = now - epoch["started"]
            view = _summary(
                epoch["batches"], epoch["samples"], epoch["wait"], e_seconds, _stage_view(since), self.workers
            )
            view["cpu_percent"] = _percent(_cpu_seconds() - epoch["cpu"], e_seconds)
            out["epoch"] = {"epoch": epoch["epoch"], **view}
        return out


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _percent(part: float, whole: float) -> float:
    return round(100 * part / whole, 1) if whole > 0 else 0.0


def _stage_view(raw: dict[str, float]) -> dict[str, float]:
    stages = {name: raw.get(name, 0.0) for name in STAGES}
    stages["decode"] = max(0.0, raw.get("read+decode", 0.0) - raw.get("read", 0.0))
    return {k: round(v, 4) for k, v in stages.items()}


def bound_by(stages: dict[str, float], wait_fraction: float, workers: int) -> str:
    """The stage that limits throughput: ``"consumer"`` when the loop barely waited."""
    if wait_fraction < _CONSUMER_BOUND:
        return "consumer"
    per_thread = {
        name: value / workers if name in ("read", "decode") else value for name, value in stages.items()
    }
    per_thread["shuffle+transform+collate"] = sum(stages[k] for k in ("shuffle", "transform", "collate"))
    name = max(("read", "decode", "shuffle+transform+collate", "h2d"), key=lambda k: per_thread[k])
    if name == "shuffle+transform+collate":  # one thread does the three: name the largest
        name = max(("shuffle", "transform", "collate"), key=lambda k: stages[k])
    return name


def _summary(
    batches: int, samples: int, wait: float, seconds: float, stages: dict[str, float], workers: int
) -> dict[str, Any]:
    fraction = min(1.0, wait / seconds) if seconds > 0 else 0.0
    return {
        "batches": batches,
        "samples": samples,
        "seconds": round(seconds, 4),
        "samples_per_s": round(samples / seconds, 1) if seconds > 0 else 0.0,
        "batches_per_s": round(batches / seconds, 2) if seconds > 0 else 0.0,
        "wait_seconds": round(wait, 4),
        "wait_fraction": round(fraction, 4),
        "stages": stages,
        "bound_by": bound_by(stages, fraction, workers) if batches else "none",
    }
