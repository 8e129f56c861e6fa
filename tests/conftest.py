"""Shared fixtures: one local[2] SparkSession for the run, tiny datasets, and a leak check."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
# No JVM class archive for the commands the tests run: the first would leave its detached helper
# (about 30 CPU-seconds) to the leak checks below. tests/test_spark_session.py tests the archive.
os.environ.setdefault("PIPELINE_CLASS_ARCHIVE", "off")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def _is_long_lived(thread: threading.Thread) -> bool:
    """Threads that py4j and Spark keep for the life of the process once started."""
    target = getattr(thread, "_target", None)
    owner = getattr(target, "__self__", None)
    module = type(owner).__module__ if owner is not None else getattr(target, "__module__", "") or ""
    return module.startswith(("py4j", "pyspark", "socketserver")) or thread.name.startswith(
        ("py4j", "pydevd")
    )


def _become_subreaper() -> None:
    """Linux: orphaned descendants (a rank whose launcher died) are re-parented to this process
    instead of init, so the leak check below still sees them."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_child_subreaper = 36
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


_become_subreaper()


_MP_SERVICES = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
"""multiprocessing's helper processes, started once per process (shared memory, forkserver)."""

_SPARK_WORKERS = ("-m pipeline.spark_daemon", "-m pyspark.daemon", "-m pyspark.worker")
"""Spark's Python daemon and the workers it forks. A worker whose task failed was once seen
alive, reparented to this process (the subreaper), more than 10 s after its test: such
processes get 60 s to end; one that never does is still reported."""
_SPARK_WORKER_WAIT_S = 60


def _walk(proc: psutil.Process, found: set[int]) -> None:
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return
        cmdline = " ".join(proc.cmdline())
        if any(m in cmdline for m in _MP_SERVICES):  # lives as long as this process
            return
        found.add(proc.pid)
        if proc.name() == "java":  # Spark's JVMs run and reuse their own Python workers
            return
        for child in proc.children():
            _walk(child, found)
    except psutil.Error:
        pass


def _children() -> set[int]:
    """Every live descendant of this process (torchrun's ranks, notebook kernels, ...), except
    the Python workers that a Spark JVM starts and keeps for itself."""
    found: set[int] = set()
    try:
        for child in psutil.Process().children():
            _walk(child, found)
    except psutil.Error:
        pass
    return found


def _all_spark_workers(pids: set[int]) -> bool:
    """Whether every process in ``pids`` is Spark's Python daemon or one of its workers."""
    for pid in pids:
        try:
            cmdline = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue  # gone meanwhile
        if not any(m in cmdline for m in _SPARK_WORKERS):
            return False
    return True


def _leaked_process_group() -> bool:
    """Whether a test left a ``torch.distributed`` process group initialized (and destroy it)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return False
    dist.destroy_process_group()
    return True


def _shm_segments() -> set[str]:
    """This process's shared-memory segments (``pipeline.reader.shm`` names them ``pipeline_<pid>_*``)."""
    return {p.name for p in Path("/dev/shm").glob(f"pipeline_{os.getpid()}_*")}


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a thread, a child or grandchild process, a shared-memory segment
    of the reader, or a torch.distributed process group behind (waits up to 10 s for threads
    and processes to end, 60 s when all that is left is Spark's Python workers)."""
    threads_before = set(threading.enumerate())
    children_before = _children()
    shm_before = _shm_segments()
    yield
    started = time.monotonic()
    while True:
        threads = [
            t
            for t in threading.enumerate()
            if t not in threads_before and t.is_alive() and not _is_long_lived(t)
        ]
        children = _children() - children_before
        segments = _shm_segments() - shm_before
        if not threads and not children and not segments:
            break
        spark_only = not threads and not segments and _all_spark_workers(children)
        if time.monotonic() - started > (_SPARK_WORKER_WAIT_S if spark_only else 10):
            break
        time.sleep(0.05)
    problems = []
    if threads:
        problems.append("threads " + ", ".join(sorted(t.name for t in threads)))
    if children:
        names = []
        for pid in sorted(children):
            try:
                names.append(f"{pid} {' '.join(psutil.Process(pid).cmdline()[:3])}")
            except psutil.Error:
                names.append(str(pid))
        problems.append("child processes " + "; ".join(names))
    if segments:
        problems.append("shared-memory segments /dev/shm/" + ", /dev/shm/".join(sorted(segments)))
    if _leaked_process_group():
        problems.append("an initialized torch.distributed process group")
    if problems:
        pytest.fail(f"test left running: {' and '.join(problems)}", pytrace=False)


def _spark_alive() -> bool | None:
    """``None`` without a SparkContext in this process, else whether its JVM still answers."""
    sc_class = sys.modules.get("pyspark") and sys.modules["pyspark"].SparkContext
    sc = getattr(sc_class, "_active_spark_context", None) if sc_class else None
    if sc is None:
        return None
    try:
        return not sc._jsc.sc().isStopped()
    except Exception:
        return False


@pytest.fixture(autouse=True, scope="module")
def keeps_spark_alive_in_module() -> Iterator[None]:
    """The same for module-scoped fixtures (set up before any test's own fixtures)."""
    before = _spark_alive()
    yield
    if before and not _spark_alive():
        pytest.fail("a module-scoped fixture stopped the shared SparkSession", pytrace=False)


@pytest.fixture(autouse=True)
def keeps_spark_alive() -> Iterator[None]:
    """Fail the test that stops or kills the shared SparkSession (instead of the tests after it)."""
    before = _spark_alive()
    yield
    if before and not _spark_alive():
        pytest.fail("test stopped the shared SparkSession (or its JVM died)", pytrace=False)


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One local[2] SparkSession for the whole run, UI off, always stopped."""
    from pipeline.spark import SparkConfig, spark_session

    config = SparkConfig(
        master="local[2]", app_name="pipeline-tests", driver_memory="2g", shuffle_partitions=4
    )
    with spark_session(config) as session:
        yield session
