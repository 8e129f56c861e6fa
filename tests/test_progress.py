"""Conversion progress: the line's arithmetic, when it is drawn, and a real Spark job group."""

from __future__ import annotations

import io
import logging

import pytest

from pipeline.convert.progress import ConversionProgress, format_progress, progress_enabled


def test_line_shows_tasks_bytes_rate_and_eta():
    line = format_progress("images", 2, 8, 8 * 1024 * 1024, 1.0)
    assert line == "converting images: 2/8 tasks, 2.0 MiB/8.0 MiB, 2.0 MiB/s, ETA 3 s"
    assert format_progress("text", 0, 4, 0, 0.5) == "converting text: 0/4 tasks"
    assert format_progress("hdf5", 5, 4, 100, 1.0).startswith("converting hdf5: 4/4 tasks")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_drawn_only_on_a_terminal_at_info_level_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv("PIPELINE_PROGRESS", raising=False)
    logger = logging.getLogger("pipeline")
    previous = logger.level
    try:
        logger.setLevel(logging.INFO)
        assert progress_enabled(_Tty()) and not progress_enabled(io.StringIO())
        logger.setLevel(logging.WARNING)  # `pipeline -q`
        assert not progress_enabled(_Tty())
        monkeypatch.setenv("PIPELINE_PROGRESS", "1")
        assert progress_enabled(io.StringIO())
        monkeypatch.setenv("PIPELINE_PROGRESS", "0")  # what the CLI sets under --json
        logger.setLevel(logging.INFO)
        assert not progress_enabled(_Tty())
    finally:
        logger.setLevel(previous)


def test_disabled_progress_writes_nothing_and_starts_no_thread():
    out = _Tty()
    with ConversionProgress(
        None, "g", what="images", total_tasks=3, total_bytes=10, stream=out, enabled=False
    ):
        pass
    assert out.getvalue() == ""


@pytest.mark.spark
def test_progress_follows_a_real_job_group_to_the_end(spark):
    out = io.StringIO()
    group = "pipeline-progress-test"
    sc = spark.sparkContext
    sc.setJobGroup(group, "progress test")
    try:
        with ConversionProgress(
            spark,
            group,
            what="images",
            total_tasks=4,
            total_bytes=4096,
            stream=out,
            interval=0.05,
            enabled=True,
        ) as progress:
            sc.parallelize(range(4), 4).map(lambda x: x * 2).collect()
            assert progress.completed_tasks() == 4
    finally:
        sc._jsc.clearJobGroup()
    lines = out.getvalue().split("\r")
    assert lines[-1].startswith("converting images: 4/4 tasks, 4.0 KiB/4.0 KiB")
    assert out.getvalue().endswith("\n")


@pytest.mark.spark
def test_convert_draws_progress_unless_json(spark, tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image

    from pipeline.cli import main as cli_main

    src = tmp_path / "src"
    for i in range(6):
        (src / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), i * 30, np.uint8)).save(src / f"c{i % 2}" / f"{i}.png")
    monkeypatch.setenv("PIPELINE_PROGRESS", "1")
    assert cli_main(["convert", "images", str(src), str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "\rconverting images: " in err and " tasks, " in err
    assert cli_main(["convert", "images", str(src), str(tmp_path / "b"), "--json"]) == 0
    captured = capsys.readouterr()
    assert "converting images" not in captured.err
    assert captured.out.count("\n") == 1  # --json: the result line only
