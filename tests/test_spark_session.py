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


@pytest.mark.spark
def test_a_background_start_reuses_the_running_session_and_leaves_it_running(spark):
    from pipeline.spark import spark_session_in_background

    with spark_session_in_background() as starting:
        session = starting.result()
        assert session.sparkContext is spark.sparkContext
    with pytest.raises(ValueError, match="listing failed"), spark_session_in_background():
        raise ValueError("listing failed")  # the caller leaves before asking for the session
    assert not spark.sparkContext._jsc.sc().isStopped()
    assert spark.range(3).count() == 3


def _fresh(code: str) -> str:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_numpy_converters_answer_as_pysparks_without_importing_pandas():
    code = """
import sys
import numpy as np
from py4j import protocol
from pyspark.sql.types import NumpyArrayConverter, NumpyScalarConverter
from pipeline.spark import _numpy_check_without_pandas
values = [np.arange(3), np.zeros((2, 2)), np.int64(3), np.float32(1.5), [1, 2], "x", 4, None]
before = [[c.can_convert(v) for v in values] for c in (NumpyArrayConverter(), NumpyScalarConverter())]
sys.modules.pop("pandas", None)
_numpy_check_without_pandas()
ours = [c for c in protocol.INPUT_CONVERTER if isinstance(c, (NumpyArrayConverter, NumpyScalarConverter))]
assert [type(c).__bases__[0] for c in ours] == [NumpyArrayConverter, NumpyScalarConverter], ours
print([[c.can_convert(v) for v in values] for c in ours] == before, "pandas" in sys.modules)
"""
    assert _fresh(code) == "True False"


def test_the_worker_daemon_imports_pyspark_from_the_package_not_its_zip(tmp_path):
    import os
    import sys

    import pyspark

    from pipeline import spark_daemon

    lib = os.path.join(os.path.dirname(pyspark.__file__), "python", "lib")
    other = str(tmp_path / "spark-home" / "python" / "lib" / "pyspark.zip")  # another Spark's zip
    zips = [os.path.join(lib, "pyspark.zip"), os.path.join(lib, "py4j-0.0.0-src.zip")]
    saved = list(sys.path)
    try:
        sys.path[:] = [*zips, other, *saved]
        spark_daemon._prefer_installed_pyspark()
        moved = sys.path[:]
    finally:
        sys.path[:] = saved
    # this package's zip goes last; py4j of another version and another Spark's zip keep their places
    assert moved == [zips[1], other, *saved, zips[0]]


def _archive_config(tmp_path):
    from pipeline.spark import SparkConfig

    return SparkConfig(class_archive=str(tmp_path / "jvm"))


def test_a_class_archive_is_recorded_once_and_used_only_when_checked(tmp_path):
    import os
    import time

    from pipeline.spark import SparkConfig, _class_archive, _ok_path

    assert _class_archive(SparkConfig(class_archive=None), record=True) is None
    config = _archive_config(tmp_path)
    assert _class_archive(config, record=False) is None  # nothing installed: never records here
    first = _class_archive(config, record=True)
    assert first is not None and first.recording is not None and first.recording.exists()
    assert first.options == [f"-XX:DumpLoadedClassList={first.recording}"]  # a list: no slower
    assert _class_archive(config, record=True) is None  # another command records it: start without
    old = time.time() - 7200
    os.utime(first.recording, (old, old))  # abandoned (its JVM was killed): removed, recorded anew
    again = _class_archive(config, record=True)
    assert again is not None and again.recording is not None
    assert time.time() - again.recording.stat().st_mtime < 600
    again.recording.unlink()
    # an archive is used only with its .ok record of size and time: a truncated one never (it crashes the JVM)
    first.final.write_bytes(b"x" * 100)
    info = first.final.stat()
    _ok_path(first.final).write_text(f"{info.st_size} {info.st_mtime_ns}\n")
    used = _class_archive(config, record=False)
    assert used is not None and used.recording is None
    assert used.options[0] == f"-XX:SharedArchiveFile={first.final}"
    assert "-Xlog:disable" in used.options  # no JVM notes about the archive on stdout
    first.final.write_bytes(b"x" * 50)
    assert _class_archive(config, record=False) is None
    assert _class_archive(config, record=True) is not None  # recorded anew


def test_the_archive_helper_installs_nothing_when_a_step_fails(tmp_path):
    from pipeline.spark import _archive_installed, _install_archive

    final = tmp_path / "a.jsa"
    for java, listed in (("/bin/false", b"java/lang/Object\n"), ("/bin/true", b"")):
        classes = tmp_path / "a.jsa.1.tmp"
        classes.write_bytes(listed)  # an empty list: the JVM was killed before it loaded anything
        (tmp_path / "a.jsa.1.tmp.jsa").write_bytes(b"\x00" * 64)  # a dump cut short
        # pid 99999999 does not exist: its JVM has ended
        _install_archive("99999999", str(classes), str(final), java, str(tmp_path))
        assert not _archive_installed(final) and list(tmp_path.iterdir()) == []


@pytest.mark.spark
def test_leaving_a_background_start_kills_the_jvm_it_launched():
    """An error or Ctrl-C while Spark starts (the CLI lists SRC meanwhile): no JVM outlives it."""
    code = """
import time
from pyspark import SparkContext
from pipeline.spark import SparkConfig, spark_session_in_background
try:
    with spark_session_in_background(SparkConfig(master="local[1]", class_archive=None)):
        deadline = time.monotonic() + 120
        while SparkContext._gateway is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the JVM is launched; the SparkContext is being made
        proc = SparkContext._gateway.proc
        raise ValueError("listing failed")
except ValueError:
    pass
print(proc.wait(timeout=30) is not None, SparkContext._gateway is None)
"""
    assert _fresh(code) == "True True"


@pytest.mark.parametrize(("value", "expected"), [("off", None), ("0", None), ("/x/jvm", "/x/jvm")])
def test_the_class_archive_setting_can_come_from_the_environment(monkeypatch, value, expected):
    from pipeline.spark import CLASS_ARCHIVE_ENV, load_spark_config

    monkeypatch.delenv(CLASS_ARCHIVE_ENV, raising=False)
    assert load_spark_config().class_archive == "~/.cache/pipeline/jvm"  # conf/spark.yaml
    monkeypatch.setenv(CLASS_ARCHIVE_ENV, value)
    assert load_spark_config().class_archive == expected
