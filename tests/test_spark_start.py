"""A Spark start interrupted by Ctrl-C or SIGTERM leaves no JVM behind (pipeline.spark._build)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.spark


def test_an_interrupted_spark_start_kills_the_jvm_it_launched(monkeypatch):
    """Before, the JVM lived on after the command, holding its stdout/stderr, for minutes."""
    from pyspark import SparkContext, conf

    from pipeline.spark import SparkConfig, _build, active_session

    if active_session() is not None:
        pytest.skip("a SparkSession runs in this process; this test starts its own JVM")
    launched = []
    real = conf.SparkConf.__init__

    def interrupted(self, *args, **kwargs):  # once the JVM runs, as SparkContext makes its conf
        if SparkContext._gateway is None:
            return real(self, *args, **kwargs)
        launched.append(SparkContext._gateway.proc)
        raise KeyboardInterrupt

    monkeypatch.setattr(conf.SparkConf, "__init__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _build(SparkConfig(master="local[1]", class_archive=None))
    assert launched, "the start never launched a JVM"
    assert launched[0].wait(timeout=30) is not None  # killed, not left to its shutdown hooks
    assert SparkContext._gateway is None and SparkContext._active_spark_context is None
