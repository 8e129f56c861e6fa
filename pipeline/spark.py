"""The one place a SparkSession is built: from ``conf/spark.yaml``, bound to loopback, always stopped.

Every job, CLI command and notebook goes through :func:`spark_session`::

    with spark_session(SparkConfig(master="local[2]")) as spark:
        convert_images(spark, ...)

When a session is already active (a Databricks or Jupyter notebook), it is reused and left
running; only a session this function created is stopped on exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from pipeline.config import load_options
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "SparkConfig",
    "active_session",
    "cancel_job_group",
    "check_java",
    "load_spark_config",
    "spark_session",
    "submitted_master",
]

log = logging.getLogger(__name__)

JAVA_HINT = (
    "install Java 17 (Debian 12/Ubuntu: `apt-get install -y openjdk-17-jre-headless`, Debian 13: "
    "`openjdk-21-jre-headless`; "
    "macOS: `brew install openjdk@17`) or point JAVA_HOME at a Java 17+ runtime"
)


@dataclass(frozen=True)
class SparkConfig:
    """Spark session settings (``conf/spark.yaml``)."""

    master: str = "local[*]"
    """Spark master URL: ``local[*]``, ``local[N]`` or ``spark://host:port``."""
    app_name: str = "pipeline"
    driver_memory: str = "4g"
    """Heap of the driver JVM; only effective when this process starts the JVM."""
    bind_address: str = "127.0.0.1"
    """Driver host and bind address; loopback unless the cluster must reach the driver."""
    ui: bool = False
    """Whether to start the Spark web UI."""
    log_level: str = "WARN"
    shuffle_partitions: int = 8
    python: str | None = None
    """Interpreter for Spark's Python workers; ``None`` uses the driver's own interpreter."""
    quick_jvm: bool = True
    """Local masters only: the driver JVM compiles with the C1 JIT alone
    (``-XX:TieredStopAtLevel=1``), which starts Spark in about 60% of the time -- most of a short
    command's fixed cost. ``pipeline convert table``, whose work runs in the JVM, turns it off
    (it slows JVM-heavy jobs 2-3x); set ``false`` for other long JVM-heavy work."""
    extra: dict[str, str] = field(default_factory=dict)
    """Any other ``spark.*`` settings, passed through as they are."""


def submitted_master() -> str | None:
    """The master given to ``spark-submit`` when this process runs under it, else ``None``.

    spark-submit starts the JVM first and passes its port in ``PYSPARK_GATEWAY_PORT``; its conf
    holds ``--master``, which must win over ``conf/spark.yaml``.
    """
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        return None
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # connects to spark-submit's JVM
    return SparkConf().get("spark.master", None)


def load_spark_config(
    config_path: str | os.PathLike[str] | None = None,
    *,
    master: str | None = None,
    extra: dict[str, str] | None = None,
) -> SparkConfig:
    """The one Spark-config builder of every job and command.

    Layers, each over the one before: ``conf/spark.yaml``; the ``spark:`` section of
    ``config_path`` (a ``--config`` file); ``master``, else the master given to spark-submit;
    ``extra`` settings merged into ``SparkConfig.extra`` (e.g. the GPU settings of training).

    Args:
        config_path: A ``--config`` YAML whose ``spark:`` section is laid over conf/spark.yaml.
            Defaults to ``None``.
        master: The ``--master`` flag. Defaults to ``None`` (spark-submit's, else the file's).
        extra: ``spark.*`` settings to add. Defaults to ``None``.
    """
    config = load_options(
        SparkConfig,
        "spark.yaml",
        config_path=config_path,
        section="spark",
        overrides={"master": master or submitted_master()},
    )
    if extra:
        config = replace(config, extra={**config.extra, **extra})
    return config


def _java_executable() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = os.path.join(home, "bin", "java")
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("java")


def check_java(minimum: int = 17) -> int:
    """Return the Java major version, or raise a one-line :class:`PipelineError` with a hint."""
    java = _java_executable()
    if java is None:
        raise PipelineError(
            f"Java {minimum} or newer is required by Spark and none was found", hint=JAVA_HINT
        )
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PipelineError(f"could not run {java} -version: {exc}", hint=JAVA_HINT) from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise PipelineError(f"could not read the Java version from {java}", hint=JAVA_HINT)
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < minimum:
        raise PipelineError(
            f"Java {major} found at {java}; Spark 4 needs Java {minimum} or newer", hint=JAVA_HINT
        )
    return major


@contextmanager
def spark_session(config: SparkConfig | None = None, **overrides: object) -> Iterator[SparkSession]:
    """Yield a SparkSession built from ``config``; stop it on exit if this call created it.

    Args:
        config: Session settings. Defaults to ``conf/spark.yaml`` or the built-in defaults.
        **overrides: Field overrides for ``config``, e.g. ``master="local[2]"``; ``None`` values
            are ignored.

    Yields:
        The active SparkSession.
    """
    from pyspark.sql import SparkSession

    from pipeline.quiet import quiet_third_party_warnings

    quiet_third_party_warnings()  # pyspark's pandas-3 notice, in every job that starts Spark
    config = config or load_spark_config()
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes:
        config = replace(config, **changes)  # type: ignore[arg-type]

    active = active_session()
    if active is not None:
        log.info("reusing the active SparkSession (master %s)", active.sparkContext.master)
        yield active
        return

    check_java()
    python = config.python or sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", config.bind_address)
    os.environ.setdefault("PYSPARK_PYTHON", python)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    builder = (
        SparkSession.builder.master(config.master)
        .appName(config.app_name)
        .config("spark.driver.host", config.bind_address)
        .config("spark.driver.bindAddress", config.bind_address)
        .config("spark.driver.memory", config.driver_memory)
        .config("spark.ui.enabled", str(config.ui).lower())
        .config("spark.ui.showConsoleProgress", "false")  # conversions draw their own line
        .config("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.pyspark.python", python)
        .config("spark.pyspark.driver.python", sys.executable)
    )
    java_options = _driver_java_options(config)
    if java_options:
        builder = builder.config("spark.driver.extraJavaOptions", java_options)
    if config.master.startswith("local"):  # workers in our process group: Ctrl-C is the driver's
        builder = builder.config("spark.python.daemon.module", "pipeline.spark_daemon")
    for key, value in config.extra.items():
        builder = builder.config(key, value)
    log.info("starting Spark (master %s)", config.master)
    main_thread = threading.current_thread() is threading.main_thread()
    caller_sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(config.log_level)
    if main_thread:
        _keep_sigint_handler(spark, caller_sigint)
    try:
        yield spark
    except KeyboardInterrupt:  # the jobs are being cancelled: their tasks' errors say nothing new
        with contextlib.suppress(Exception):
            spark.sparkContext.setLogLevel("OFF")
        raise
    finally:
        spark.stop()
        if main_thread and caller_sigint is not None:
            signal.signal(signal.SIGINT, caller_sigint)


def active_session() -> SparkSession | None:
    """The SparkSession running in this process, whatever thread started it, else ``None``.

    ``SparkSession.getActiveSession()`` alone answers per JVM thread: a session made by another
    thread, or seen after py4j gave this thread a new JVM thread, would look absent (and a
    builder would then "create" -- and its owner stop -- the running one).
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is None and _running_context() is not None:
        active = SparkSession.builder.getOrCreate()
    return active


def _running_context() -> object | None:
    """The SparkContext running in this process, if any (whatever thread started it)."""
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    if sc is None:
        return None
    try:
        return None if sc._jsc.sc().isStopped() else sc
    except Exception:  # its JVM is gone: nothing to reuse
        return None


def _driver_java_options(config: SparkConfig) -> str | None:
    """The driver JVM's options unless the settings give their own: ``-Dlog4j2.configurationFile=``
    for ``conf/log4j2.properties``, and the C1 JIT for local masters (``quick_jvm``)."""
    from pipeline.config import conf_dir

    if "spark.driver.extraJavaOptions" in config.extra:
        return None
    options = []
    base = conf_dir()
    path = base / "log4j2.properties" if base is not None else None
    if path is not None and path.is_file():
        options.append(f"-Dlog4j2.configurationFile={path.resolve().as_uri()}")
    if config.quick_jvm and config.master.startswith("local"):
        options.append("-XX:TieredStopAtLevel=1")
    return " ".join(options) or None


def _keep_sigint_handler(spark: SparkSession, caller: object) -> None:
    """PySpark replaces the SIGINT handler with its own; put back the caller's, if it had one.

    PySpark's handler calls the JVM from inside the signal handler, on the connection that the
    interrupted call is using (py4j's pinned threads), which fails with a long traceback. A caller
    with its own handler (the CLI: it records the interrupt and exits 130) cancels its jobs when
    the interrupt unwinds (the conversion writer cancels its job group).
    """
    if callable(caller) and caller is not signal.default_int_handler:
        signal.signal(signal.SIGINT, caller)  # type: ignore[arg-type]


def cancel_job_group(spark: SparkSession, group: str, *, timeout_s: float = 30.0) -> None:
    """Cancel the jobs of ``group`` and wait until their tasks have stopped (Ctrl-C, SIGTERM).

    Cancelling returns at once and the job counts as failed at once; its tasks stop a moment
    later, and one still running when its output folder is removed fails with an error of its
    own. Spark's log is off meanwhile: the killed tasks' errors say nothing the caller does not
    know. Waits ``timeout_s`` seconds at most.
    """
    context = spark.sparkContext
    try:
        level = str(context._jvm.org.apache.logging.log4j.LogManager.getRootLogger().getLevel().toString())
    except Exception:
        level = "WARN"
    context.setLogLevel("OFF")
    try:
        context.cancelJobGroup(group)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _group_tasks_running(context, group):
            time.sleep(0.05)
    finally:
        context.setLogLevel(level)


def _group_tasks_running(context: object, group: str) -> bool:
    """Whether a task of a job in ``group`` still runs.

    A cancelled stage leaves the active stages at once, while its tasks run on until their
    executor has killed them (its Python worker after ``spark.python.task.killTimeout``); the
    stage's own count of active tasks drops only then. Counting the active stages' tasks only
    returned early, and a task killed after the log level was restored printed an ``ERROR``.
    """
    tracker = context.statusTracker()  # type: ignore[attr-defined]
    for job in tracker.getJobIdsForGroup(group):
        info = tracker.getJobInfo(job)
        for stage in info.stageIds if info is not None else ():
            stage_info = tracker.getStageInfo(stage)
            if stage_info is not None and stage_info.numActiveTasks > 0:
                return True
    return False
