"""``spark-submit jobs/convert_images.py`` on a real standalone cluster gives the local-mode dataset."""

from __future__ import annotations

import json
import subprocess

import pytest

from pipeline.convert.common import ConvertConfig
from pipeline.convert.images import ImageOptions, convert_images
from pipeline.dataset import read_provenance, read_unischema
from tests.cluster import cluster_env, spark_bin, standalone_cluster
from tests.conftest import REPO
from tests.test_convert_images import tree_digest, write_sample_tree

pytestmark = [pytest.mark.cluster, pytest.mark.spark, pytest.mark.slow]


def test_spark_submit_on_a_standalone_cluster_matches_local_mode(spark, tmp_path):
    src = tmp_path / "src"
    made = write_sample_tree(src)
    (src / "bad").mkdir()
    (src / "bad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    flags = ["--size", "20x24", "--fit", "pad", "--on-error", "skip", "--partitions", "3"]

    local = convert_images(
        spark,
        str(src),
        str(tmp_path / "local"),
        ImageOptions(size=(20, 24), fit="pad"),
        settings=ConvertConfig(on_error="skip", partitions=3),
    )

    with standalone_cluster(tmp_path / "cluster") as master:
        cmd = [spark_bin("spark-submit"), "--master", master, "--conf", "spark.driver.host=127.0.0.1",
               "jobs/convert_images.py", str(src), str(tmp_path / "remote"), *flags, "--json"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, env=cluster_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["rows"], result["skipped"]) == (len(made), 1) == (local.rows, local.skipped)
    assert result["output"] == "file://" + str(tmp_path / "remote")

    assert tree_digest(result["output"]) == tree_digest(local.output)
    assert str(read_unischema(result["output"])) == str(read_unischema(local.output))
    remote_meta, local_meta = read_provenance(result["output"]), read_provenance(local.output)
    assert (remote_meta["spark_master"], local_meta["spark_master"]) == (master, "local[2]")
    for key in ("class_names", "counts", "options", "settings", "encoding", "layout"):
        assert remote_meta[key] == local_meta[key], key
    skipped = (tmp_path / "remote" / "_skipped.jsonl").read_text()
    assert skipped == (tmp_path / "local" / "_skipped.jsonl").read_text()
