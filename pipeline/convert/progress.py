"""Progress of a running conversion on a terminal: tasks, input bytes, rate and ETA.

The Spark job of a conversion runs in one job group (:func:`pipeline.convert.writer.write_petastorm`).
:class:`ConversionProgress` polls Spark's status tracker for that group from a background thread
and redraws one line on stderr::

    converting images: 37/64 tasks, 1.2 GiB/2.1 GiB, 310 MiB/s, ETA 3 s

Partitions are balanced by input bytes (:func:`pipeline.convert.writer.plan_partitions`), so the
bytes done are estimated as the completed share of tasks times the input size. The line is drawn
only when stderr is a terminal and ``pipeline`` logs at INFO (not ``-q``), and never when
``PIPELINE_PROGRESS=0`` (the CLI sets it under ``--json``); logs and pipes stay clean.
``PIPELINE_PROGRESS=1`` forces it on.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

from pipeline.units import human_bytes

__all__ = ["ConversionProgress", "format_progress", "progress_enabled"]

log = logging.getLogger(__name__)

ENV = "PIPELINE_PROGRESS"


def progress_enabled(stream: TextIO | None = None) -> bool:
    """Whether to draw progress: ``PIPELINE_PROGRESS`` if set, else a terminal at INFO level."""
    setting = os.environ.get(ENV, "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    if setting in ("1", "true", "yes", "on"):
        return True
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and logging.getLogger("pipeline").isEnabledFor(logging.INFO)


def format_progress(what: str, done_tasks: int, total_tasks: int, total_bytes: int, elapsed: float) -> str:
    """One progress line, e.g. ``converting images: 3/8 tasks, 1.0 MiB/2.7 MiB, 4.0 MiB/s, ETA 1 s``."""
    total_tasks = max(total_tasks, 1)
    done_tasks = min(done_tasks, total_tasks)  # a retried task can complete twice
    share = done_tasks / total_tasks
    done_bytes = int(share * total_bytes)
    parts = [f"converting {what}: {done_tasks}/{total_tasks} tasks"]
    if total_bytes:
        parts.append(f"{human_bytes(done_bytes)}/{human_bytes(total_bytes)}")
    if elapsed > 0 and done_tasks:
        if total_bytes:
            parts.append(f"{human_bytes(done_bytes / elapsed)}/s")
        remaining = elapsed * (1 - share) / share if share else float("inf")
        parts.append(f"ETA {remaining:.0f} s")
    return ", ".join(parts)


class ConversionProgress:
    """Draw the progress of one Spark job group until the ``with`` block ends.

    Args:
        spark: The SparkSession running the job.
        group: The job group the conversion's job runs in.
        what: The kind of input, for the line (``"images"``, ``"text"``, ...).
        total_tasks: Tasks of the job when known before it starts (partitions of the plan), else
            ``0``: Spark's own count is used once the job runs.
        total_bytes: Input bytes, for the byte count, rate and ETA. ``0`` shows tasks only.
        stream: Where to draw. Defaults to ``None`` (stderr).
        interval: Seconds between redraws. Defaults to ``0.5``.
        enabled: Draw at all. Defaults to ``None``: :func:`progress_enabled`.
    """

    def __init__(
        self,
        spark: Any,
        group: str,
        *,
        what: str,
        total_tasks: int,
        total_bytes: int,
        stream: TextIO | None = None,
        interval: float = 0.5,
        enabled: bool | None = None,
    ) -> None:
        self._spark = spark
        self._group = group
        self._what = what
        self._total_tasks = total_tasks
        self._total_bytes = total_bytes
        self._stream = sys.stderr if stream is None else stream
        self._interval = interval
        self._enabled = progress_enabled(self._stream) if enabled is None else enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._drawn = 0

    def __enter__(self) -> ConversionProgress:
        if self._enabled:
            self._started = time.perf_counter()
            self._thread = threading.Thread(target=self._run, name="pipeline-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if exc[0] is None:
            self._draw(self._total_tasks)
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()

    def completed_tasks(self) -> int:
        """Completed tasks of the group's jobs so far, from Spark's status tracker."""
        return self.task_counts()[0]

    def task_counts(self) -> tuple[int, int]:
        """``(completed, total)`` tasks of the group's stages; total falls back to ``total_tasks``."""
        tracker = self._spark.sparkContext.statusTracker()
        done = total = 0
        for job_id in tracker.getJobIdsForGroup(self._group):
            job = tracker.getJobInfo(job_id)
            for stage_id in job.stageIds if job is not None else ():
                stage = tracker.getStageInfo(stage_id)
                if stage is not None:
                    done += stage.numCompletedTasks
                    total += stage.numTasks
        return done, max(total, self._total_tasks)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                done, total = self.task_counts()
            except Exception as exc:  # the tracker is best effort: never fail the conversion
                log.debug("progress: %s", exc)
                return
            self._total_tasks = total
            self._draw(done)

    def _draw(self, done: int) -> None:
        line = format_progress(
            self._what,
            done,
            self._total_tasks,
            self._total_bytes,
            time.perf_counter() - self._started,
        )
        pad = max(self._drawn - len(line), 0)
        self._stream.write("\r" + line + " " * pad)
        self._stream.flush()
        self._drawn = len(line)
