"""``pipeline convert table`` on a real standalone cluster gives the local-mode dataset."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import pipeline
from pipeline.dataset import read_provenance, read_unischema
from tests.cluster import cluster_env, standalone_cluster
from tests.conftest import REPO
from tests.test_convert_table import read_all

pytestmark = [pytest.mark.cluster, pytest.mark.spark, pytest.mark.slow]


def test_convert_table_on_a_standalone_cluster_matches_local_mode(spark, tmp_path):
    table = tmp_path / "table"
    spark.sql(
        "SELECT id, CAST(id % 3 AS INT) AS label, id * 0.25D AS x, array(CAST(id AS FLOAT), 1.0F) AS pair, "
        "IF(id % 4 = 0, NULL, CAST(id AS STRING)) AS name, DATE'2020-01-01' + CAST(id AS INT) AS day FROM range(30)"
    ).coalesce(1).write.parquet(str(table))
    local = pipeline.convert_dataframe(
        spark.read.parquet(str(table)), str(tmp_path / "local"), float32=True, partitions=3
    )

    with standalone_cluster(tmp_path / "cluster") as master:
        cmd = [sys.executable, "-m", "pipeline.cli", "convert", "table", "--parquet", str(table),
               str(tmp_path / "remote"), "--float32", "--partitions", "3", "--master", master, "--json"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, env=cluster_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["rows"], result["files"]) == (30, local["files"])
    assert str(read_unischema(result["output"])) == str(read_unischema(local["output"]))
    remote, here = read_all(result["output"]), read_all(local["output"])
    order = np.argsort(remote["id"].numpy())
    assert np.array_equal(order, np.argsort(here["id"].numpy()))
    for name in ("id", "label", "x", "pair", "day"):
        assert remote[name].tolist() == here[name].tolist(), name
    assert remote["name"] == here["name"] and remote["x"].numpy().dtype == np.float32
    meta = read_provenance(result["output"])
    assert (
        meta["spark_master"] == master
        and meta["plan_fingerprint"] == read_provenance(local["output"])["plan_fingerprint"]
    )
