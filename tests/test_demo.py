"""The demo's flow on a few digits: every stage runs, the drill stops and resumes the training, a second run reuses images and datasets."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

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
def test_demo_stages_resume_and_reuse(spark, tmp_path):
    """The demo stops its training midway (the drill), resumes it, and ends where an uninterrupted run ends."""
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
    assert set(first.stages) == {"images", "convert", "train", "resume", "evaluate"}
    assert first.training["world_size"] == 2
    # 120 rows per rank in batches of 32: 4 steps per epoch; the drill stops in the middle of
    # epoch 2 (global step 6), the resumed launch continues at its step 3 and trains to the end.
    stopped = first.preempted
    assert (stopped["status"], stopped["global_step"], stopped["steps_per_epoch"]) == ("preempted", 6, 4)
    assert stopped["resume"].startswith("preempted at epoch 2/2, step 2/4: checkpoint saved in ")
    assert [row["epoch"] for row in stopped["history"]] == [1]
    training = first.training
    assert (training["status"], training["resumed_from_epoch"], training["resumed_from_step"]) == (
        "finished",
        1,
        2,
    )
    assert (training["global_step"], [row["epoch"] for row in training["history"]]) == (8, [1, 2])
    assert all(
        row["train_samples"] == 240 for row in training["history"]
    )  # the resumed epoch counts every row
    # the driver's evaluation of the saved checkpoint agrees with rank 0's after the last epoch
    assert first.accuracy == pytest.approx(first.training["final"]["eval_accuracy"])
    provenance = read_provenance(tmp_path / "data" / "datasets" / "train")
    assert provenance["counts"]["rows"] == 240 and provenance["class_names"] == [str(d) for d in range(10)]
    json.dumps(first.to_dict())
    resumed_weights = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=False)[
        "model"
    ]

    # Again without the drill: images and datasets reused, one uninterrupted training, the same model.
    with pytest.raises(AccuracyTooLow, match=r"below min_accuracy 1\.0") as info:
        run_demo(spark, dataclasses.replace(config, min_accuracy=1.0), interrupt=False)
    second = info.value.result
    assert second.reused == {"images": True, "convert": True}
    assert set(second.stages) == {"images", "convert", "train", "evaluate"} and not second.preempted
    assert second.training["resumed_from_epoch"] == 0 and second.training["global_step"] == 8
    weights = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    assert weights.keys() == resumed_weights.keys()
    for name in weights:
        assert torch.equal(weights[name], resumed_weights[name]), name
    assert second.accuracy == first.accuracy
    assert without_timing(second.training["history"]) == without_timing(training["history"])


def without_timing(history: list[dict]) -> list[dict]:
    return [
        {k: v for k, v in row.items() if k not in ("seconds", "eval_seconds") and not k.startswith("data")}
        for row in history
    ]
