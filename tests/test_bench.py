"""pipeline bench (CLI, --json) and the measurement library."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.bench import batch_rows, measure, tensor_bytes
from pipeline.cli import main
from tests.datasets import write_parquet_dataset


@pytest.fixture
def url(tmp_path):
    return write_parquet_dataset(tmp_path / "ds", rows=40, files=2, row_group_rows=5)


def test_bench_cli_json(url, capsys):
    assert main(["bench", url, "--batch-size", "8", "--workers", "2", "--epochs", "3", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["rows"] == 120 and result["batches"] == 15 and result["epochs"] == 3
    assert result["samples_per_s"] == pytest.approx(120 / result["seconds"], rel=0.01)
    for key in ("mb_per_s", "disk_mb_per_s", "wait_p50_ms", "wait_p99_ms", "peak_rss_mb"):
        assert result[key] >= 0
    assert result["wait_p99_ms"] >= result["wait_p50_ms"]


def test_bench_cli_human_output_and_batch_limit(url, capsys):
    assert main(["bench", url, "--batch-size", "4", "--batches", "3", "--no-shuffle"]) == 0
    out = capsys.readouterr().out
    assert "read      12 rows in 3 batches" in out and "samples/s" in out and "peak RSS" in out


def test_bench_cli_missing_dataset_is_a_user_error(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_measure_counts_rows_and_bytes_of_any_iterable():
    batches = [{"x": torch.zeros(4, 2), "names": ["a"] * 4}, {"x": torch.zeros(3, 2), "names": ["b"] * 3}]
    result = measure(lambda: iter(batches))
    assert (result.rows, result.batches) == (7, 2)
    assert batch_rows((torch.zeros(5), torch.zeros(5))) == 5
    assert tensor_bytes(batches[0]) == 4 * 2 * 4
    assert measure(lambda: iter(batches), max_batches=1).rows == 4
