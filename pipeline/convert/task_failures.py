"""A failed conversion job, as the user sees it: one clean error, and no Spark stack trace.

A task ends on bad input (``on_error="fail"``) or an unexpected error by raising
:class:`~pipeline.convert.tasks.TaskFailure`, whose message holds the record as a marked JSON line.
Spark fails the job and the driver's ``collect()`` raises a Py4J or PySpark error whose text
contains the task's Python traceback; :func:`task_failure` finds the record in it and returns the
:class:`~pipeline.errors.InputError` that names the input. Any other failure becomes a short
:class:`~pipeline.errors.PipelineError` quoting Spark's reason.

Spark logs every failed task itself (the executor's ``ERROR ... Exception in task`` and the
scheduler's ``WARN ... Lost task``, each with the whole traceback); :func:`quiet_task_failures`
turns exactly those two loggers off while a conversion job runs, unless ``-v`` asked for them.

Bad input fails every attempt of its task at the same record, so Spark's retries on a cluster
(``spark.task.maxFailures``, default 4) only repeat the work: :class:`BadInputWatch` cancels the
job at the first attempt that failed on bad input. Errors the kind did not expect are retried.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from pipeline.convert.tasks import failure_in
from pipeline.errors import InputError, PipelineError

__all__ = ["SKIP_HINT", "BadInputWatch", "quiet_task_failures", "task_failure"]

log = logging.getLogger(__name__)

SKIP_HINT = "fix or remove it, or pass --on-error skip to skip bad input and list it in DEST/_skipped.jsonl"

_TASK_FAILURE_LOGGERS = ("org.apache.spark.scheduler.TaskSetManager", "org.apache.spark.executor.Executor")


def task_failure(exc: BaseException, seen: str | None = None) -> PipelineError:
    """The user's error for a failed conversion job: the bad input it names, or Spark's reason.

    Args:
        exc: What the job's ``collect()`` raised.
        seen: The error of the task attempt that :class:`BadInputWatch` stopped the job for
            (the job's own error then only says it was cancelled). Defaults to ``None``.
    """
    text = str(exc) if seen is None else f"{seen}\n{exc}"
    record = failure_in(text)
    if record is not None:
        if record.reason.startswith("unexpected "):  # not a known kind of bad input: skipping won't help
            return InputError(
                f"conversion failed on {record.describe()}",
                hint="this input is not handled by the converter; remove it, and please report it "
                "(run with -vv for the traceback)",
            )
        return InputError(f"bad input: {record.describe()}", hint=SKIP_HINT)
    log.debug("Spark job failed", exc_info=exc)
    lines = [ln.strip() for ln in text.splitlines() if re.match(r"^\s*[\w.]+(Error|Exception)\b.*:", ln)]
    reason = lines[-1] if lines else (text.strip().splitlines() or [type(exc).__name__])[0]
    return PipelineError(
        f"the conversion failed in Spark: {reason[:500]}", hint="run with -vv for Spark's full log"
    )


@contextlib.contextmanager
def quiet_task_failures(spark: Any) -> Iterator[None]:
    """Spark's reports of failed tasks off while the block runs (kept with ``-v``).

    Only the two loggers that print a failed task's traceback are changed (in the driver's JVM,
    which in local mode also runs the executors); each gets back its own level, or none, on exit.
    """
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    restore: dict[str, Any] = {}
    try:
        jvm = spark.sparkContext._jvm
        log4j = jvm.org.apache.logging.log4j
        context = log4j.LogManager.getContext(False)
        config = context.getConfiguration()
        for name in _TASK_FAILURE_LOGGERS:
            own = config.getLoggerConfig(name)
            restore[name] = own.getLevel() if own.getName() == name else None
            log4j.core.config.Configurator.setLevel(name, log4j.Level.OFF)
    except Exception:  # not log4j 2's core (another logging backend): leave Spark's log as it is
        log.debug("cannot set Spark's log levels", exc_info=True)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            for name, level in restore.items():
                if level is None:
                    config.removeLogger(name)
                else:
                    log4j.core.config.Configurator.setLevel(name, level)
            if restore:
                context.updateLoggers()


_LOCAL_RETRIES = re.compile(r"^local\[[^,\]]+,\s*\d+\]$")  # local[N, F]: F attempts per task


class BadInputWatch:
    """Cancels a conversion job at the first task attempt that failed on bad input.

    Spark aborts a job without retrying a task only for a few Java exceptions; a Python task's
    error is always retried, up to ``spark.task.maxFailures`` attempts. While the job runs, a
    thread polls Spark's status tracker; when a stage of ``group`` has failed tasks, it reads
    their errors (Spark's status store, the data of its UI) and, if one holds the record of bad
    input (:class:`~pipeline.convert.tasks.TaskFailure`), keeps that error in :attr:`seen` and
    cancels the group. Local masters fail a job at its first failed task themselves: nothing to
    watch there (but ``local[N,F]``). Without the status store (another Spark) the watch ends
    and Spark's retries run as usual.

    Args:
        spark: The SparkSession.
        group: The job group of the conversion.
        poll_s: Seconds between two looks. Defaults to ``0.25``.
    """

    def __init__(self, spark: Any, group: str, *, poll_s: float = 0.25) -> None:
        self.context = spark.sparkContext
        self.group = group
        self.poll_s = poll_s
        self.seen: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> BadInputWatch:
        master = str(self.context.master)
        if not master.startswith("local") or _LOCAL_RETRIES.match(master):
            self._thread = threading.Thread(target=self._watch, name="pipeline-bad-input-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        checked: dict[int, int] = {}  # stage -> failed tasks already read
        try:
            while not self._stop.wait(self.poll_s):
                for stage, attempt, failed in self._failing_stages():
                    if failed > checked.get(stage, 0):
                        checked[stage] = failed
                        if self._bad_input_in(stage, attempt):
                            self.context.cancelJobGroup(self.group)
                            return
        except Exception:  # the status store is internal to Spark: without it, Spark retries
            log.debug("cannot watch the tasks of %s", self.group, exc_info=True)

    def _failing_stages(self) -> Iterator[tuple[int, int, int]]:
        tracker = self.context.statusTracker()
        for job in tracker.getJobIdsForGroup(self.group):
            info = tracker.getJobInfo(job)
            for stage in info.stageIds if info is not None else ():
                stage_info = tracker.getStageInfo(stage)
                if stage_info is not None and stage_info.numFailedTasks > 0:
                    yield stage, stage_info.currentAttemptId, stage_info.numFailedTasks

    def _bad_input_in(self, stage: int, attempt: int) -> bool:
        tasks = self.context._jsc.sc().statusStore().taskList(stage, attempt, 10_000)  # the latest
        for i in range(tasks.size()):
            message = tasks.apply(i).errorMessage()
            if not message.isDefined():
                continue
            record = failure_in(message.get())
            if record is not None and not record.reason.startswith("unexpected "):
                self.seen = message.get()
                return True
        return False
