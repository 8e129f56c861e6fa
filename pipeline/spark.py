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
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import load_options
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "SparkConfig",
    "SparkStart",
    "active_session",
    "cancel_job_group",
    "check_java",
    "load_spark_config",
    "spark_session",
    "spark_session_in_background",
    "submitted_master",
]

log = logging.getLogger(__name__)

JAVA_HINT = (
    "install Java 17 (Debian 12/Ubuntu: `apt-get install -y openjdk-17-jre-headless`, Debian 13: "
    "`openjdk-21-jre-headless`; "
    "macOS: `brew install openjdk@17`) or point JAVA_HOME at a Java 17+ runtime"
)


CLASS_ARCHIVE_ENV = "PIPELINE_CLASS_ARCHIVE"
"""Overrides ``class_archive`` of :func:`load_spark_config`: a folder, or ``off``."""


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
    class_archive: str | None = "~/.cache/pipeline/jvm"
    """Folder of the driver JVM's class-data archive (AppCDS), or ``None``: the JVM maps the
    classes Spark loads while it starts from one file made for this Java and Spark install,
    instead of finding, verifying and parsing each of them in hundreds of jars (Spark starts with
    about half the JVM CPU time). The first ``pipeline convert`` without one records the classes
    its JVM loads (a list, no slower); after the command a detached, niced helper makes the
    archive from that list (~130 MB, ~30 CPU-seconds, once), checks it and puts it in place. Only
    a checked archive of its recorded size is ever used. Defaults to ``"~/.cache/pipeline/jvm"``."""
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
    ``extra`` settings merged into ``SparkConfig.extra`` (e.g. the GPU settings of training);
    ``$PIPELINE_CLASS_ARCHIVE`` for ``class_archive`` (a folder, or ``off``).

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
    archive = os.environ.get(CLASS_ARCHIVE_ENV)
    if archive is not None:  # e.g. off for a test suite, whose leak checks see the helper
        off = archive.strip().lower() in ("", "0", "off", "none", "null", "false")
        config = replace(config, class_archive=None if off else archive)
    return config


def _java_executable() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = os.path.join(home, "bin", "java")
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("java")


_JAVA_VERSIONS: dict[str, int] = {}
"""Major version of each Java executable already checked (the CLI checks before Spark starts)."""


def check_java(minimum: int = 17) -> int:
    """Return the Java major version, or raise a one-line :class:`PipelineError` with a hint."""
    java = _java_executable()
    if java is None:
        raise PipelineError(
            f"Java {minimum} or newer is required by Spark and none was found", hint=JAVA_HINT
        )
    if _JAVA_VERSIONS.get(java, 0) >= minimum:
        return _JAVA_VERSIONS[java]
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
    _JAVA_VERSIONS[java] = major
    return major


def _resolved(config: SparkConfig | None, overrides: dict[str, object]) -> SparkConfig:
    config = config or load_spark_config()
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(config, **changes) if changes else config  # type: ignore[arg-type]


def _build(config: SparkConfig, archive: _Archive | None = None) -> SparkSession:
    """Start a new SparkSession from ``config`` (the JVM, then the SparkContext); ``archive``: the
    class archive to use or record (:func:`_class_archive`)."""
    from pyspark.sql import SparkSession

    check_java()
    _numpy_check_without_pandas()
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
    java_options = _driver_java_options(config, archive.options if archive is not None else None)
    if java_options:
        builder = builder.config("spark.driver.extraJavaOptions", java_options)
    if config.master.startswith("local"):  # workers in our process group: Ctrl-C is the driver's
        builder = builder.config("spark.python.daemon.module", "pipeline.spark_daemon")
    for key, value in config.extra.items():
        builder = builder.config(key, value)
    log.info("starting Spark (master %s)", config.master)
    started = time.perf_counter()
    try:
        spark = builder.getOrCreate()
    except KeyboardInterrupt:  # Ctrl-C/SIGTERM while Spark starts: no JVM may outlive the command
        _kill_unstarted_jvm()
        raise
    spark.sparkContext.setLogLevel(config.log_level)
    log.debug("Spark started in %.2f s", time.perf_counter() - started)
    return spark


def _kill_unstarted_jvm() -> None:
    """Kill the JVM of a SparkContext whose start was interrupted, and forget it.

    The JVM exits by itself when this process's pipe to it closes, but only once it reaches that
    point of its start, and its shutdown hooks can then wait on the half-made SparkContext: a
    command interrupted while Spark started left it running (and holding the command's
    stdout/stderr) for minutes.
    """
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None)
    if proc is None:  # not a JVM this process launched
        return
    with contextlib.suppress(Exception):
        gateway.shutdown()
    with contextlib.suppress(Exception):
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    SparkContext._gateway = None
    SparkContext._jvm = None
    SparkContext._active_spark_context = None


def _spark_submit_children() -> set[int]:
    """This process's child processes that run ``spark-submit`` (the JVM it launches; Linux)."""
    found = set()
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    parent = int(fh.read().rsplit(b")", 1)[1].split()[1])
                if parent != os.getpid():
                    continue
                with open(f"/proc/{name}/cmdline", "rb") as fh:
                    if b"org.apache.spark.deploy.SparkSubmit" in fh.read():
                        found.add(int(name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _stop(spark: SparkSession, interrupted: bool) -> None:
    if interrupted:  # the jobs are being cancelled: their tasks' errors say nothing new
        with contextlib.suppress(Exception):
            spark.sparkContext.setLogLevel("OFF")
    started = time.perf_counter()
    context = spark.sparkContext
    # pyspark's stop() waits for its accumulator server, whose handler polls once a second and
    # whose loop polls every 0.5 s: ~0.9 s of every command's end. The updates it serves came
    # in with the tasks' results, before the jobs ended; its threads are daemons. So the wait
    # is moved to a daemon thread, and the command ends when the JVM's context has stopped.
    accumulators = getattr(context, "_accumulatorServer", None)
    if accumulators is not None:
        context._accumulatorServer = None
    try:
        spark.stop()
    finally:
        if accumulators is not None:
            threading.Thread(
                target=accumulators.shutdown, name="pipeline-spark-accumulators", daemon=True
            ).start()
    log.debug("Spark stopped in %.2f s", time.perf_counter() - started)


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
    from pipeline.quiet import quiet_third_party_warnings

    quiet_third_party_warnings()  # pyspark's pandas-3 notice, in every job that starts Spark
    config = _resolved(config, overrides)

    active = active_session()
    if active is not None:
        log.info("reusing the active SparkSession (master %s)", active.sparkContext.master)
        yield active
        return

    main_thread = threading.current_thread() is threading.main_thread()
    caller_sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    spark = _build(config, _class_archive(config, record=False))
    if main_thread:
        _keep_sigint_handler(spark, caller_sigint)
    interrupted = False
    try:
        yield spark
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        _stop(spark, interrupted)
        if main_thread and caller_sigint is not None:
            signal.signal(signal.SIGINT, caller_sigint)


class SparkStart:
    """A SparkSession being started in a background thread (:func:`spark_session_in_background`)."""

    def __init__(self, config: SparkConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._spark: SparkSession | None = None
        self._created = False
        self._error: BaseException | None = None
        self._abandoned = False
        self._launching = False
        self._children: set[int] = set()
        self._archive: _Archive | None = None
        self._thread = threading.Thread(target=self._run, name="pipeline-spark-start", daemon=True)

    def _run(self) -> None:
        try:
            active = active_session()
            if active is not None:
                log.info("reusing the active SparkSession (master %s)", active.sparkContext.master)
                spark, created = active, False
            else:
                with self._lock:
                    if self._abandoned:  # the caller left before the JVM was launched: launch none
                        return
                    self._launching = True
                    self._children = _spark_submit_children()
                self._archive = _class_archive(self._config, record=True)
                spark, created = _build(self._config, self._archive), True
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc
            if self._archive is not None and self._archive.recording is not None:
                self._archive.recording.unlink(missing_ok=True)
        else:
            with self._lock:
                self._spark, self._created = spark, created
                abandoned = self._abandoned
            if abandoned and created:  # the caller left (an error, Ctrl-C) while Spark started
                with contextlib.suppress(Exception):
                    self.stop(spark, interrupted=True)
        finally:
            self._done.set()

    def stop(self, spark: SparkSession, interrupted: bool) -> None:
        """Stop the session this start created (a recorded class archive goes to its helper)."""
        _stop(spark, interrupted)
        if self._archive is not None and self._archive.recording is not None:
            _hand_over_archive(spark, self._archive)

    def result(self) -> SparkSession:
        """Wait until the session is up and return it (Ctrl-C interrupts the wait).

        Raises:
            PipelineError: Java is missing or too old; anything else Spark's start raised.
        """
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._spark is not None
        if self._created:  # the JVM's active session is per thread: make it this thread's too
            with contextlib.suppress(Exception):
                session_class = type(self._spark)._get_j_spark_session_class(self._spark._jvm)
                session_class.setActiveSession(self._spark._jsparkSession)
        return self._spark

    def _release(self) -> tuple[SparkSession | None, bool]:
        """``(session, created)`` to stop now, or ``(None, False)``: still starting. A JVM this
        start launched is then killed (a JVM left to end with the process can wait minutes in its
        shutdown hooks on a half-made SparkContext, holding the command's stdout/stderr); one
        not launched yet never is."""
        with self._lock:
            if self._spark is None and self._error is None and not self._done.is_set():
                self._abandoned = True
                launching = self._launching
            else:
                return self._spark, self._created
        if launching:
            _kill_unstarted_jvm()  # the starting thread's JVM calls fail; it ends with that error
            for pid in _spark_submit_children() - self._children:  # launched, not yet connected
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        return None, False


@contextmanager
def spark_session_in_background(
    config: SparkConfig | None = None, **overrides: object
) -> Iterator[SparkStart]:
    """Start a SparkSession in a background thread; yield a :class:`SparkStart` to wait for it.

    The JVM's start is another process and most of a short job's fixed cost: the caller lists
    its inputs meanwhile and calls :meth:`SparkStart.result` when it needs Spark. A session
    already running in this process is reused and left running; one started here is stopped on
    exit. PySpark's own SIGINT handler is not installed (it is only from the main thread): the
    caller handles Ctrl-C, as :func:`spark_session` lets the CLI do. If the block ends while
    Spark is still starting (an error, Ctrl-C), it returns at once: a JVM already launched is
    killed, none is launched afterwards, and a session that still comes up is stopped by the
    starting thread.
    """
    from pipeline.quiet import quiet_third_party_warnings

    quiet_third_party_warnings()
    start = SparkStart(_resolved(config, overrides))
    start._thread.start()
    interrupted = False
    try:
        yield start
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        spark, created = start._release()
        if spark is not None and created:
            start.stop(spark, interrupted)


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


def _numpy_check_without_pandas() -> None:
    """Make PySpark's numpy converters for JVM calls stop importing pandas.

    ``NumpyArrayConverter.can_convert`` and ``NumpyScalarConverter.can_convert``
    (``pyspark.sql.types``) run for the arguments of JVM calls and import ``pyspark.testing.utils``
    (and with it pandas: 0.5-0.9 s of a command's start) to learn whether numpy is installed. An
    ``ndarray`` or numpy scalar exists only once numpy is imported, so asking ``sys.modules``
    gives the same answers without the import.
    """
    from py4j import protocol
    from pyspark.sql.types import NumpyArrayConverter, NumpyScalarConverter

    class _Array(NumpyArrayConverter):
        def can_convert(self, obj: object) -> bool:
            numpy = sys.modules.get("numpy")
            return numpy is not None and isinstance(obj, numpy.ndarray) and obj.ndim == 1

    class _Scalar(NumpyScalarConverter):
        def can_convert(self, obj: object) -> bool:
            numpy = sys.modules.get("numpy")
            return numpy is not None and isinstance(obj, numpy.generic)

    for i, converter in enumerate(protocol.INPUT_CONVERTER):
        if type(converter) is NumpyArrayConverter:
            protocol.INPUT_CONVERTER[i] = _Array()
        elif type(converter) is NumpyScalarConverter:
            protocol.INPUT_CONVERTER[i] = _Scalar()


def _driver_java_options(config: SparkConfig, archive: list[str] | None = None) -> str | None:
    """The driver JVM's options unless the settings give their own: ``-Dlog4j2.configurationFile=``
    for ``conf/log4j2.properties``, the C1 JIT for local masters (``quick_jvm``) and ``archive``
    (the class archive's options, :func:`_class_archive`)."""
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
    options.extend(archive or ())
    return " ".join(options) or None


_ARCHIVE_QUIET = ("-Xlog:disable", "-Xlog:all=warning:stderr", "-Xlog:cds*=off:stderr")
"""JVM logging with a class archive: its notes off, other JVM warnings on stderr (not stdout)."""
_ARCHIVE_STALE_S = 1800.0
"""A recording not installed after this long was abandoned (its JVM killed): removed."""


@dataclass(frozen=True)
class _Archive:
    """The class archive of this Java and Spark install: where it is, or is being recorded."""

    final: Path
    recording: Path | None = None
    """Where the JVM lists the classes it loads (``-XX:DumpLoadedClassList``), when this run records."""

    @property
    def options(self) -> list[str]:
        if self.recording is not None:
            return [f"-XX:DumpLoadedClassList={self.recording}"]
        return [f"-XX:SharedArchiveFile={self.final}", *_ARCHIVE_QUIET]


def _archive_key(java: str) -> str:
    """Names the archive of this Java and Spark install (any change makes a new one)."""
    import hashlib

    import pyspark

    real = os.path.realpath(java)
    home = os.environ.get("SPARK_HOME") or os.path.dirname(pyspark.__file__)
    jars = os.path.realpath(os.path.join(home, "jars"))
    facts = (real, os.stat(real).st_mtime_ns, jars, os.stat(jars).st_mtime_ns, pyspark.__version__)
    return hashlib.sha256(repr(facts).encode()).hexdigest()[:16]


def _ok_path(final: Path) -> Path:
    return Path(f"{final}.ok")


def _archive_installed(final: Path) -> bool:
    """Whether ``final`` was put in place by the helper and still has its checked size and time.

    A truncated or damaged archive crashes the JVM that maps it (SIGBUS): nothing else is used.
    """
    try:
        info = final.stat()
        return _ok_path(final).read_text().split() == [str(info.st_size), str(info.st_mtime_ns)]
    except (OSError, ValueError):
        return False


def _class_archive(config: SparkConfig, *, record: bool) -> _Archive | None:
    """The archive to use (installed), or to record now (``record``: none yet, nobody recording)."""
    java = _java_executable()
    if not config.class_archive or java is None:
        return None
    folder = Path(config.class_archive).expanduser()
    try:
        final = folder / f"spark-{_archive_key(java)}.jsa"
        if _archive_installed(final):
            return _Archive(final)
        if not record:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        pending = False
        for other in folder.glob(f"{final.name}.*.tmp*"):
            if time.time() - other.stat().st_mtime > _ARCHIVE_STALE_S:
                other.unlink(missing_ok=True)
            else:
                pending = True  # another command records (or its helper checks) this archive
        if pending:
            return None
        recording = folder / f"{final.name}.{os.getpid()}.tmp"
        recording.touch()  # marks the recording; the JVM writes the class list into it
        return _Archive(final, recording)
    except OSError:  # no cache folder (read-only home...): start without
        return None


def _hand_over_archive(spark: SparkSession, archive: _Archive) -> None:
    """After a recording session stopped: start the detached helper that waits for its JVM to end
    (when this process does: the JVM reads its stdin until then), then makes, checks and puts in
    place the archive of the classes that JVM loaded (:func:`_install_archive`)."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None)
    java = _java_executable()
    if proc is None or java is None:
        return
    try:
        with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
            args = fh.read().decode(errors="replace").split("\0")
        classpath = args[args.index("-cp") + 1]
    except (OSError, ValueError, IndexError):
        return  # not Linux, or not the JVM itself: the recording is removed as stale later
    log.info(
        "making a class archive of Spark's JVM in the background, once per Java/Spark install, so "
        "that later commands start faster (%s; class_archive: null in conf/spark.yaml turns it off)",
        archive.final.parent,
    )
    # the helper forks at once and its first process exits: waited for here, no child left behind
    code = (
        "import os; os.fork() and os._exit(0); import sys; "
        "from pipeline.spark import _install_archive as f; f(*sys.argv[1:])"
    )
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                str(proc.pid),
                str(archive.recording),
                str(archive.final),
                java,
                classpath,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            timeout=30,
        )


def _install_archive(pid: str, recording: str, final: str, java: str, classpath: str) -> None:
    """The detached helper (niced): wait for the JVM ``pid`` to exit (its class list is then
    complete), dump the archive of the listed classes (``-Xshare:dump``, with the classpath of
    that JVM), check it by starting a JVM with it (``-Xshare:on``: an unusable archive is an
    error), then put it in place with its ``.ok`` record (size and time). Anything wrong: nothing
    is installed, and the list and the dump are removed."""
    with contextlib.suppress(OSError):
        os.nice(10)
    classes, target = Path(recording), Path(final)
    dump = Path(f"{recording}.jsa")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except OSError:
            break  # gone
        time.sleep(0.5)
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    shared = ["-Xlog:disable", "-cp", classpath]
    ok = False
    try:
        if classes.stat().st_size > 0:
            made = subprocess.run(
                [
                    java,
                    "-Xshare:dump",
                    f"-XX:SharedClassListFile={classes}",
                    f"-XX:SharedArchiveFile={dump}",
                    *shared,
                ],
                timeout=3600,
                **quiet,
            )
            if made.returncode == 0:
                check = [java, "-Xshare:on", f"-XX:SharedArchiveFile={dump}", *shared, "-version"]
                ok = subprocess.run(check, timeout=300, **quiet).returncode == 0
        if ok:
            os.replace(dump, target)
            info = target.stat()
            marker = Path(f"{target}.ok.{os.getpid()}")
            marker.write_text(f"{info.st_size} {info.st_mtime_ns}\n")
            os.replace(marker, _ok_path(target))
    except (OSError, subprocess.SubprocessError):
        ok = False
    for leftover in (classes, dump):  # the list, and a dump that failed its check
        with contextlib.suppress(OSError):
            leftover.unlink()


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
