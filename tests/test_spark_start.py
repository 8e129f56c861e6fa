"""A Spark start interrupted by Ctrl-C or SIGTERM leaves no JVM behind (pipeline.spark._build).

Run in a fresh interpreter: the suite's own SparkSession would otherwise be the one reused.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.spark

_SCRIPT = textwrap.dedent(
    """
    from pyspark import SparkContext, conf
    from pipeline.spark import SparkConfig, _build

    launched = []
    real = conf.SparkConf.__init__

    def interrupted(self, *args, **kwargs):  # once the JVM runs, as SparkContext makes its conf
        if SparkContext._gateway is None:
            return real(self, *args, **kwargs)
        launched.append(SparkContext._gateway.proc)
        raise KeyboardInterrupt

    conf.SparkConf.__init__ = interrupted
    try:
        _build(SparkConfig(master="local[1]", class_archive=None))
    except KeyboardInterrupt:
        pass
    else:
        raise SystemExit("the start was not interrupted")
    assert launched, "the start never launched a JVM"
    assert launched[0].wait(timeout=30) is not None  # killed, not left to its shutdown hooks
    assert SparkContext._gateway is None and SparkContext._active_spark_context is None
    print("ok", launched[0].returncode)
    """
)


def test_an_interrupted_spark_start_kills_the_jvm_it_launched():
    """Before, the JVM lived on after the command, holding its stdout/stderr, for minutes."""
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok "), proc.stdout + proc.stderr[-3000:]


_STOP_SCRIPT = textwrap.dedent(
    """
    import threading
    from pipeline.spark import SparkConfig, spark_session

    for round in range(2):  # a second session in the same process works as the first
        with spark_session(SparkConfig(master="local[1]", class_archive=None)) as spark:
            sc = spark.sparkContext
            total = sc.accumulator(0)
            sc.parallelize(range(10), 2).foreach(lambda x: total.add(x))
            assert total.value == 45, total.value
            server = sc._accumulatorServer
        assert sc._jsc is None  # the context is stopped when the block ends
        waiting = [t for t in threading.enumerate() if t.name == "pipeline-spark-accumulators"]
        assert len(waiting) <= 1 and all(t.daemon for t in waiting), waiting
        for t in waiting:
            t.join(timeout=10)
            assert not t.is_alive()
        assert server.socket.fileno() == -1  # shut down and closed, in the background
    print("ok")
    """
)


def test_stopping_spark_leaves_the_accumulator_server_to_a_daemon_thread_that_ends():
    """pyspark's stop waits ~0.9 s for its accumulator server's polls; the session's stop does
    not, and the server still shuts down; the values arrived before the jobs ended."""
    proc = subprocess.run([sys.executable, "-c", _STOP_SCRIPT], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr[-3000:]
