from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.errors import DatasetError
from pipeline.inspect import inspect_dataset
from tests.datasets import write_parquet_dataset, write_petastorm_dataset


@pytest.fixture(scope="session")
def petastorm_url(spark, tmp_path_factory):
    return write_petastorm_dataset(spark, tmp_path_factory.mktemp("ds") / "petastorm", rows=100, files=4)


@pytest.mark.spark
def test_petastorm_dataset(petastorm_url):
    info = inspect_dataset(petastorm_url)
    assert info.kind == "petastorm"
    assert info.rows == 100
    assert info.files == 4
    assert info.row_groups >= 4
    assert info.bytes > 0
    assert info.fields["image"].dtype == "uint8"
    assert info.fields["image"].shape == (8, 8, 3)
    assert info.fields["image"].codec == "png"
    assert info.fields["vector"].codec == "ndarray"
    assert info.fields["vector"].shape == (4,)
    assert info.fields["name"].dtype == "str"
    assert info.fields["id"].dtype == "int64"
    assert info.fields["id"].codec == "scalar"
    assert info.fields["id"].nullable is False


def test_plain_parquet_dataset(tmp_path):
    url = write_parquet_dataset(tmp_path / "plain", rows=95, files=3, row_group_rows=10)
    info = inspect_dataset(url)
    assert info.kind == "parquet"
    assert info.rows == 95
    assert info.files == 3
    assert info.row_groups == 4 + 4 + 4  # 32, 32 and 31 rows in groups of 10
    assert info.fields["id"].dtype == "int64"
    assert info.fields["x"].dtype == "float32"
    assert info.fields["name"].dtype == "str"
    assert info.fields["tokens"].shape == (None,)
    assert info.fields["tokens"].codec is None
    assert info.metadata is None


@pytest.mark.spark
def test_cli_json_last_line(petastorm_url, capsys):
    assert main(["inspect", petastorm_url, "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    data = json.loads(out[-1])
    assert data["rows"] == 100
    assert data["fields"]["image"] == {
        "dtype": "uint8",
        "shape": [8, 8, 3],
        "codec": "png",
        "nullable": False,
    }
    assert {"rows", "row_groups", "fields", "files", "bytes"} <= data.keys()


def test_cli_human_report(tmp_path, capsys):
    url = write_parquet_dataset(tmp_path / "plain", rows=10, files=1)
    assert main(["inspect", url]) == 0
    out = capsys.readouterr().out
    assert "rows        10" in out
    assert "tokens" in out


@pytest.mark.parametrize("make", ["missing", "empty", "text_file", "not_parquet"])
def test_not_a_dataset_fails_cleanly(tmp_path, make):
    target = tmp_path / "thing"
    if make == "empty":
        target.mkdir()
    elif make == "text_file":
        target.write_text("hello")
    elif make == "not_parquet":
        target.mkdir()
        (target / "a.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError):
        inspect_dataset(target)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "inspect", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")
    assert "HINT" in proc.stderr or "not a readable Parquet" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(target) in proc.stderr


def test_version_and_help():
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("pipeline ")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "inspect", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--json" in proc.stdout
