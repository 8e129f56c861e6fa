"""spark_session reuses a running SparkContext and never stops one it did not start."""

from __future__ import annotations

import threading

import pytest


@pytest.mark.spark
def test_a_session_seen_from_another_thread_is_reused_and_left_running(spark):
    from pipeline.spark import spark_session

    seen = {}

    def other_thread() -> None:  # the JVM's "active session" mark is per thread: not set here
        with spark_session() as session:
            seen["same"] = session.sparkContext is spark.sparkContext

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert seen == {"same": True}
    assert not spark.sparkContext._jsc.sc().isStopped()
    assert spark.range(3).count() == 3
