"""The training jobs: 2 CPU ranks through TorchDistributor, resume, metrics files, the text LM."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import subprocess
import sys
from dataclasses import fields

import pytest
import torch

from pipeline.config import load_config
from pipeline.demo.sample_data import write_digits_folder, write_sample_corpus
from pipeline.errors import PipelineError
from pipeline.train.distributed import DistributedConfig
from pipeline.train.image_classifier import ImageTrainConfig, run_image_training, train_images
from pipeline.train.metrics import RunningSums, plot_loss_curve, write_metrics
from pipeline.train.models import SmallCNN, images_to_float
from pipeline.train.run import absolute_paths, cosine_lr, derive_seed
from pipeline.train.text_lm import TextTrainConfig, train_text
from tests.conftest import REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits(spark, tmp_path_factory):
    """500 real digits, converted by `pipeline convert images` into train (400) and held-out (100)."""
    from pipeline.convert.common import ConvertConfig
    from pipeline.convert.images import convert_images

    root = tmp_path_factory.mktemp("digits")
    folder = write_digits_folder(root / "images", limit=500)
    urls = {}
    for split in ("train", "heldout"):
        result = convert_images(spark, folder[split], str(root / split), settings=ConvertConfig(partitions=2))
        urls[split] = result.output
    return urls


@pytest.fixture(scope="module")
def corpus(spark, tmp_path_factory):
    """A tiny regular-English corpus packed into 64-token rows by `pipeline convert text`."""
    from pipeline.convert.common import ConvertConfig
    from pipeline.convert.text import TextOptions, convert_text

    root = tmp_path_factory.mktemp("corpus")
    src = write_sample_corpus(root / "txt", documents=24)
    result = convert_text(
        spark, str(src), str(root / "tokens"), TextOptions(seq_len=64), settings=ConvertConfig(partitions=2)
    )
    return result.output


def image_config(digits, run_dir, **changes) -> ImageTrainConfig:
    base = ImageTrainConfig(
        train_url=digits["train"],
        eval_url=digits["heldout"],
        run_dir=str(run_dir),
        epochs=2,
        batch_size=32,
        width=16,
        workers=1,
        distributed=DistributedConfig(num_processes=2, use_gpu=False),
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.spark
@pytest.mark.slow
def test_image_job_trains_on_two_cpu_ranks_in_local_mode(spark, digits, tmp_path):
    result = run_image_training(image_config(digits, tmp_path / "run", epochs=3))
    assert (result["world_size"], result["backend"], result["device"]) == (2, "gloo", "cpu")
    history = result["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    # 400 rows, 2 ranks, batches of 32: 200 rows per rank in 7 steps (the last of 8 rows): every sample
    assert all(row["train_samples"] == 400 for row in history)
    assert all(0 <= row["data_wait_fraction"] <= 1 and row["data_samples_per_s"] > 0 for row in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["eval_samples"] == 100
    assert history[-1]["eval_accuracy"] > 0.25  # 10 classes: chance is 0.1; 18 steps in all
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    assert metrics["epochs"] == history
    assert (tmp_path / "run" / "loss_curve.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def history_without_timing(history):
    return [
        {
            k: v
            for k, v in row.items()
            if k not in ("seconds", "eval_seconds", "epochs") and not k.startswith("data")
        }
        for row in history
    ]


@pytest.mark.spark
def test_resume_trains_only_the_missing_epochs_and_matches_an_uninterrupted_run(digits, tmp_path):
    """In one process (no launcher): 2 epochs straight == 1 epoch, stop, resume to 2."""
    straight = train_images(absolute_paths(image_config(digits, tmp_path / "straight", epochs=2, workers=2)))
    first = train_images(absolute_paths(image_config(digits, tmp_path / "resumed", epochs=1)))
    assert first["epochs_trained"] == 1
    resumed = train_images(absolute_paths(image_config(digits, tmp_path / "resumed", epochs=2)))
    assert (resumed["resumed_from_epoch"], resumed["epochs_trained"]) == (1, 1)
    assert resumed["history"][0] == first["history"][0]
    got, want = history_without_timing(resumed["history"]), history_without_timing(straight["history"])
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key in g:
            assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-6), key


@pytest.mark.spark
def test_resume_refuses_a_checkpoint_of_another_model(digits, tmp_path):
    train_images(absolute_paths(image_config(digits, tmp_path / "run", epochs=1)))
    with pytest.raises(PipelineError, match=r"was trained with width=16, this run has width=8"):
        train_images(absolute_paths(image_config(digits, tmp_path / "run", epochs=2, width=8)))


@pytest.mark.spark
def test_text_job_loss_falls_on_a_tiny_corpus(corpus, tmp_path):
    config = TextTrainConfig(
        train_url=corpus,
        eval_url=corpus,
        run_dir=str(tmp_path / "run"),
        epochs=3,
        batch_size=8,
        d_model=32,
        n_layers=1,
        n_heads=2,
        max_len=64,
        workers=1,
    )
    result = train_text(absolute_paths(config))
    losses = [row["train_loss"] for row in result["history"]]
    assert len(losses) == 3
    assert losses[-1] < 0.75 * losses[0], losses
    assert result["history"][-1]["eval_loss"] < result["history"][0]["eval_loss"]
    assert result["history"][-1]["train_accuracy"] > result["history"][0]["train_accuracy"]
    assert (tmp_path / "run" / "loss_curve.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    ("cls", "name"), [(ImageTrainConfig, "train_images.yaml"), (TextTrainConfig, "train_text.yaml")]
)
def test_shipped_conf_files_match_the_documented_defaults(cls, name):
    path = REPO / "conf" / name
    assert load_config(cls, path) == cls()
    keys = {line.split(":")[0] for line in path.read_text().splitlines() if line and line[0].isalpha()}
    assert {f.name for f in fields(cls)} <= keys


def test_derived_seeds_do_not_collide_like_sums():
    assert derive_seed(1, 2) != derive_seed(2, 1)
    assert derive_seed(0, 0) == derive_seed(0, 0)
    assert len({derive_seed(s, e) for s in range(20) for e in range(20)}) == 400


def test_cosine_schedule_warms_up_then_decays():
    lrs = [cosine_lr(1.0, e, 10) for e in range(10)]
    assert lrs[0] == 0.5 and lrs[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))
    assert lrs[-1] >= 0.05


def test_metrics_json_and_loss_curve(tmp_path):
    history = [
        {"epoch": e, "train_loss": 1 / e, "eval_loss": 1.5 / e, "eval_accuracy": 0.5} for e in (1, 2, 3)
    ]
    path = write_metrics(tmp_path / "m" / "metrics.json", history, status="finished")
    assert json.loads(path.read_text()) == {"status": "finished", "epochs": history}
    png = plot_loss_curve(tmp_path / "m" / "curve.png", history)
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000


def test_running_sums_without_a_process_group():
    sums = RunningSums(torch.device("cpu"))
    sums.add(loss=torch.tensor(2.0), n=4)
    sums.add(loss=1.0, n=2)
    assert sums.reduce() == {"loss": 3.0, "n": 6.0}


def test_images_to_float_and_the_cnn_shapes():
    batch = torch.randint(0, 256, (5, 8, 8, 3), dtype=torch.uint8)
    x = images_to_float(batch)
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.float32 and float(x.max()) <= 1.0
    assert SmallCNN(10, width=8)(x).shape == (5, 10)
    with pytest.raises(ValueError, match="images must be uint8"):
        images_to_float(batch.float())


def test_bad_config_values_are_named(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("epochs: 0\n")
    with pytest.raises(PipelineError, match="epochs must be >= 1, got 0"):
        load_config(ImageTrainConfig, path)
    path.write_text("distributed: {num_processes: 0}\n")
    with pytest.raises(PipelineError, match="num_processes must be >= 1"):
        load_config(TextTrainConfig, path)


@pytest.mark.cluster
@pytest.mark.slow
def test_the_same_job_runs_unchanged_on_a_standalone_cluster(digits, tmp_path):
    """jobs/train_images.py --cluster: 2 barrier tasks on a real master + 2 workers (local_mode=False);
    then a job whose ranks fail on the executors reports the rank's error and hint in the driver."""
    from tests.cluster import cluster_env, standalone_cluster

    run_dir = tmp_path / "run"
    with standalone_cluster(tmp_path / "cluster") as master:
        cmd = [
            sys.executable, str(REPO / "jobs" / "train_images.py"),
            "--master", master, "--cluster", "--num-processes", "2", "--no-gpu",
            "--train-url", digits["train"], "--eval-url", digits["heldout"], "--run-dir", str(run_dir),
            "--epochs", "1", "--batch-size", "32", "--workers", "1", "--json",
        ]  # fmt: skip
        proc = subprocess.run(cmd, env=cluster_env(), capture_output=True, text=True, timeout=240)
        # Ranks that fail on the executors (a local path is left to them with --cluster): the error
        # reaches the driver through its report inbox.
        bad = [
            *cmd[: cmd.index("--train-url") + 1],
            str(tmp_path / "missing"),
            "--run-dir",
            str(tmp_path / "bad"),
        ]
        failed = subprocess.run(bad, env=cluster_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-4000:]
    assert failed.returncode == 2, failed.stderr[-4000:]
    message = " ".join(failed.stderr[failed.stderr.rindex("error: ") :].split())
    assert re.match(
        r"error: rank [01]: file://\S*/missing does not exist( \(ranks \[[01]\] failed too\))? -- HINT",
        message,
    ), message
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["world_size"], summary["backend"], summary["epochs_trained"]) == (2, "gloo", 1)
    assert summary["final"]["train_samples"] == 400
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "finished"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_image_job_trains_on_the_gpus_with_nccl(digits, tmp_path):
    """jobs/train_images.py --gpu: one rank per GPU, batches pinned and copied non-blocking by the loader."""
    from pipeline.train.distributed import gpu_count

    cmd = [
        sys.executable, str(REPO / "jobs" / "train_images.py"), "--gpu", "--master", "local[2]",
        "--train-url", digits["train"], "--eval-url", digits["heldout"], "--run-dir", str(tmp_path / "run"),
        "--epochs", "3", "--json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == gpu_count()
    assert summary["backend"] == "nccl" and summary["device"].startswith("cuda")
    assert summary["final"]["eval_accuracy"] > 0.25


def test_job_flags_override_the_config_file_and_merge_distribution(tmp_path):
    from pipeline.cli import build_parser
    from pipeline.cli.train import config_from_args

    path = tmp_path / "t.yaml"  # --config: sections laid over conf/ (here `train:` over train_images.yaml)
    path.write_text("train:\n  epochs: 7\n  lr: 0.01\n  distributed: {num_processes: 3, use_gpu: false}\n")
    args = build_parser().parse_args(
        [
            "train",
            "images",
            "--config",
            str(path),
            "--epochs",
            "2",
            "--cluster",
            "--no-resume",
            "--train-url",
            "x",
        ]
    )
    config = config_from_args("images", args)
    assert (config.epochs, config.lr, config.resume, config.train_url) == (2, 0.01, False, "x")
    assert config.distributed == DistributedConfig(num_processes=3, use_gpu=False, local_mode=False)
    defaults = config_from_args("text", build_parser().parse_args(["train", "text"]))
    assert defaults == TextTrainConfig()


def test_text_targets_shift_by_one_and_ignore_padding():
    from pipeline.train.text_lm import _inputs_and_targets

    batch = {
        "tokens": torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]], dtype=torch.int32),
        "tokens_lengths": torch.tensor([3, 5]),
    }
    inputs, targets = _inputs_and_targets(batch, torch.device("cpu"))
    assert inputs.tolist() == [[1, 2, 3, 0], [4, 5, 6, 7]]
    assert targets.tolist() == [[2, 3, -100, -100], [5, 6, 7, 8]]
    packed_inputs, packed_targets = _inputs_and_targets({"tokens": batch["tokens"][1:]}, torch.device("cpu"))
    assert packed_targets.tolist() == [[5, 6, 7, 8]] and packed_inputs.dtype == torch.int64


class _FakeMlflowRun:
    def __init__(self, run_id: str) -> None:
        self.info = type("RunInfo", (), {"run_id": run_id})()


def test_ranks_log_into_the_drivers_active_mlflow_run_and_leave_it_open(monkeypatch):
    """The ranks are other processes: the driver's active run reaches them as MLFLOW_RUN_ID."""
    import os
    import sys
    import types

    from pipeline.train.monitor import MLFLOW_RUN_ENV, Trackers, mlflow_run_for_ranks

    calls: list[tuple] = []

    class Client:
        def log_param(self, run_id, key, value):
            calls.append(("param", run_id, key, value))

        def log_metric(self, run_id, key, value, step):
            calls.append(("metric", run_id, key, value, step))

    fake = types.SimpleNamespace(
        active=_FakeMlflowRun("run-42"),
        tracking=types.SimpleNamespace(MlflowClient=Client),
        get_tracking_uri=lambda: "databricks",
        end_run=lambda: calls.append(("end_run",)),
        start_run=lambda **kw: calls.append(("start_run", kw)),
    )
    fake.active_run = lambda: fake.active
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.delenv(MLFLOW_RUN_ENV, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///before")
    with mlflow_run_for_ranks() as run_id:  # the driver
        assert run_id == "run-42"
        assert (os.environ[MLFLOW_RUN_ENV], os.environ["MLFLOW_TRACKING_URI"]) == ("run-42", "databricks")
        fake.active = None  # a rank: its own process, no active run
        trackers = Trackers()
        trackers.log_params({"lr": 0.1, "distributed": {"num_processes": 2}})
        trackers.log_epoch({"train_loss": 0.5, "data_bound_by": "read"}, 2)
        trackers.close()
    assert calls == [("param", "run-42", "lr", 0.1), ("metric", "run-42", "train_loss", 0.5, 2)]
    assert MLFLOW_RUN_ENV not in os.environ and os.environ["MLFLOW_TRACKING_URI"] == "file:///before"
    with mlflow_run_for_ranks() as run_id:  # no active run in the driver: nothing changes
        assert run_id is None and MLFLOW_RUN_ENV not in os.environ
