"""loader.stats(): present, plausible, and the wait fraction says when the data is the bottleneck."""

from __future__ import annotations

import io
import json
import time

import pytest

import pipeline
from pipeline.loader.stats import STAGES, bound_by
from tests.datasets import write_parquet_dataset


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    return write_parquet_dataset(tmp_path_factory.mktemp("stats") / "ds", rows=96, files=2, row_group_rows=12)


def run(url, *, step_s=0.0, transform=None, **kw):
    with pipeline.open_loader(
        url, config=None, batch_size=8, shuffle_buffer=16, workers=2, num_epochs=2, transform=transform, **kw
    ) as loader:
        for _ in loader:
            time.sleep(step_s)  # the "training step"
        return loader.stats()


def slow_transform(batch):
    time.sleep(0.02)
    return batch


def test_stats_are_present_and_add_up(url):
    stats = run(url)
    assert json.loads(json.dumps(stats)) == stats
    assert (stats["batches"], stats["samples"]) == (24, 192)
    assert stats["samples_per_s"] > 0 and 0 <= stats["wait_fraction"] <= 1
    assert set(stats["stages"]) == set(STAGES)
    assert stats["stages"]["read"] > 0 and stats["stages"]["collate"] > 0 and stats["stages"]["h2d"] == 0
    assert stats["rss_bytes"] > 10 * 2**20 and stats["cpu_percent"] > 0
    assert set(stats["queues"]) == {"prefetched", "prefetch_capacity", "reading", "buffered_rows"}
    epoch = stats["epoch"]
    assert (epoch["epoch"], epoch["batches"], epoch["samples"]) == (1, 12, 96)
    assert epoch["seconds"] <= stats["seconds"]


def test_wait_fraction_rises_when_the_loader_is_slow_and_falls_when_the_step_is(url):
    slow_data = run(url, transform=slow_transform)
    slow_step = run(url, step_s=0.02)
    assert slow_data["wait_fraction"] > 0.7, slow_data
    assert slow_step["wait_fraction"] < 0.3, slow_step
    assert slow_data["bound_by"] == "transform"
    assert slow_data["stages"]["transform"] >= 24 * 0.02
    assert slow_step["bound_by"] == "consumer"


def test_bound_by_divides_the_reader_stages_by_its_threads():
    stages = dict.fromkeys(STAGES, 0.0) | {"decode": 4.0, "collate": 1.5}
    assert bound_by(stages, 0.5, workers=2) == "decode"
    assert bound_by(stages, 0.5, workers=4) == "collate"
    assert bound_by(stages, 0.05, workers=1) == "consumer"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_on_a_terminal_and_silence_elsewhere(monkeypatch):
    from pipeline.train.monitor import PROGRESS_ENV, Progress

    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    figures = {"epoch": {"samples_per_s": 312.4, "wait_fraction": 0.12}}
    terminal = _Terminal()
    progress = Progress(stream=terminal)
    progress.update(epoch=1, epochs=5, step=40, steps=40, stats=lambda: figures)
    progress.close()
    assert terminal.getvalue().strip() == "epoch 2/5  step 40/40  312 samples/s  data wait 12%"
    piped = io.StringIO()
    Progress(stream=piped).update(epoch=1, epochs=5, step=40, steps=40, stats=lambda: figures)
    assert piped.getvalue() == ""  # a log file: nothing
    monkeypatch.setenv(PROGRESS_ENV, "1")  # the job's driver is on a terminal: plain lines
    Progress(stream=piped).update(epoch=1, epochs=5, step=40, steps=40, stats=lambda: figures)
    assert piped.getvalue().endswith("data wait 12%\n")


def test_loss_curve_draws_the_data_wait_beside_the_loss(tmp_path):
    from pipeline.train.metrics import plot_loss_curve

    history = [
        {"epoch": e, "train_loss": 1 / e, "data_wait_fraction": 0.1 * e, "data_samples_per_s": 100.0 * e}
        for e in (1, 2, 3)
    ]
    with_data = plot_loss_curve(tmp_path / "with.png", history)
    without = plot_loss_curve(tmp_path / "without.png", [{"epoch": 1, "train_loss": 1.0}])
    width = int.from_bytes(with_data.read_bytes()[16:20], "big")  # PNG IHDR width
    assert width == 1100 and int.from_bytes(without.read_bytes()[16:20], "big") == 600


def test_trackers_without_mlflow_or_tensorboard_do_nothing(monkeypatch):
    from pipeline.train.monitor import TENSORBOARD_ENV, Trackers

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(TENSORBOARD_ENV, raising=False)
    trackers = Trackers()
    trackers.log_params({"lr": 0.1})
    trackers.log_epoch({"train_loss": 0.5, "data_bound_by": "read"}, 1)
    trackers.close()


class _FakeMlflow:
    """Stands in for the optional ``mlflow`` package: records the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.run = None

    def active_run(self):
        return self.run

    def start_run(self, run_name=None):
        self.run = run_name
        self.calls.append(("start_run", run_name))

    def end_run(self):
        self.calls.append(("end_run",))
        self.run = None

    def log_params(self, params):
        self.calls.append(("log_params", params))

    def log_metrics(self, metrics, step):
        self.calls.append(("log_metrics", metrics, step))


def test_trackers_send_epochs_to_mlflow_when_a_tracking_uri_is_set(monkeypatch):
    import sys

    from pipeline.train.monitor import Trackers

    fake = _FakeMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "databricks")
    trackers = Trackers(run_name="images")
    trackers.log_params({"lr": 0.1, "distributed": {"num_processes": 2}})
    trackers.log_epoch({"train_loss": 0.5, "data_wait_fraction": 0.25, "data_bound_by": "read"}, 3)
    trackers.close()
    assert fake.calls == [
        ("start_run", "images"),
        ("log_params", {"lr": 0.1}),
        ("log_metrics", {"train_loss": 0.5, "data_wait_fraction": 0.25}, 3),
        ("end_run",),
    ]
