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
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

from pipeline.convert.tasks import failure_in
from pipeline.errors import InputError, PipelineError

__all__ = ["SKIP_HINT", "quiet_task_failures", "task_failure"]

log = logging.getLogger(__name__)

SKIP_HINT = "fix or remove it, or pass --on-error skip to skip bad input and list it in DEST/_skipped.jsonl"

_TASK_FAILURE_LOGGERS = ("org.apache.spark.scheduler.TaskSetManager", "org.apache.spark.executor.Executor")


def task_failure(exc: BaseException) -> PipelineError:
    """The user's error for a failed conversion job: the bad input it names, or Spark's reason."""
    text = str(exc)
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
