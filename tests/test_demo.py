"""The demo's flow on a few digits: every stage runs, a second run reuses images and datasets."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipeline.config import load_config
from pipeline.dataset import read_provenance
from pipeline.demo.run import AccuracyTooLow, DemoConfig, run_demo
from pipeline.train.distributed import DistributedConfig
from tests.conftest import REPO


def test_conf_demo_yaml_matches_the_documented_defaults():
    path = REPO / "conf" / "demo.yaml"
    assert load_config(DemoConfig, path) == DemoConfig()
    keys = {line.split(":")[0] for line in path.read_text().splitlines() if line and line[0].isalpha()}
    assert {f.name for f in dataclasses.fields(DemoConfig)} <= keys


@pytest.mark.spark
@pytest.mark.slow
def test_demo_stages_and_reuse(spark, tmp_path):
    config = DemoConfig(
        data_dir=str(tmp_path / "data"),
        run_dir=str(tmp_path / "run"),
        limit=300,
        epochs=2,
        partitions=2,
        min_accuracy=0.0,
        distributed=DistributedConfig(num_processes=2, use_gpu=False),
    )
    first = run_demo(spark, config)
    assert first.counts == {"heldout": 60, "train": 240}
    assert first.reused == {"images": False, "convert": False}
    assert set(first.stages) == {"images", "convert", "train", "evaluate"}
    assert first.training["world_size"] == 2
    # the driver's evaluation of the saved checkpoint agrees with rank 0's after the last epoch
    assert first.accuracy == pytest.approx(first.training["final"]["eval_accuracy"])
    provenance = read_provenance(tmp_path / "data" / "datasets" / "train")
    assert provenance["counts"]["rows"] == 240 and provenance["class_names"] == [str(d) for d in range(10)]
    json.dumps(first.to_dict())

    with pytest.raises(AccuracyTooLow, match=r"below min_accuracy 1\.0") as info:
        run_demo(spark, dataclasses.replace(config, min_accuracy=1.0))
    second = info.value.result
    assert second.reused == {"images": True, "convert": True}
    assert second.accuracy == pytest.approx(first.accuracy)  # same seed, same data: same model
