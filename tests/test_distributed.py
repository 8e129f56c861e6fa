"""The TorchDistributor helper: 2 CPU ranks in local mode, a failing rank, the rank-side setup."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import DatasetError, PipelineError
from pipeline.train.distributed import TrainingError, _rank_failure, run_distributed, setup
from tests.conftest import REPO


def fit_line(steps: int = 30) -> dict:
    """A tiny DDP regression: every rank sees its own data; DDP keeps the weights identical."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with setup() as ctx:
        gen = torch.Generator().manual_seed(ctx.rank)
        x = torch.randn(64, 3, generator=gen).to(ctx.device)  # NCCL groups need tensors on the GPU
        y = x @ torch.tensor([1.0, -2.0, 0.5], device=ctx.device) + 0.25
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        model = DistributedDataParallel(torch.nn.Linear(3, 1).to(ctx.device), device_ids=device_ids)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        weights = [torch.zeros(4, device=ctx.device) for _ in range(ctx.world_size)]
        flat = torch.cat([p.detach().flatten() for p in model.module.parameters()])
        dist.all_gather(weights, flat)
        return {
            "rank": ctx.rank,
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "device": str(ctx.device),
            "first_loss": losses[0],
            "last_loss": losses[-1],
            "weights_agree": all(torch.allclose(w, weights[0]) for w in weights),
            "initialized_inside": dist.is_initialized(),
        }


def fail_on_rank_one() -> None:
    import torch.distributed as dist

    with setup() as ctx:
        dist.barrier()
        if ctx.rank == 1:
            raise ValueError("bad batch shape on rank one")
        dist.barrier()


def missing_dataset() -> None:
    with setup():
        raise DatasetError("file:///nowhere does not exist", hint="check the path")


@pytest.fixture
def importable_tests(monkeypatch):
    """torchrun's processes unpickle these test functions by reference: make `tests` importable."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))


def test_setup_without_launcher_is_a_one_process_group_and_is_torn_down():
    import torch.distributed as dist

    with setup(use_gpu=False) as ctx:
        assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main) == (0, 1, "gloo", True)
        assert ctx.device == torch.device("cpu")
        assert dist.is_initialized()
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="boom"), setup(use_gpu=False):
        raise RuntimeError("boom")
    assert not dist.is_initialized()


def test_setup_asking_for_a_missing_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(PipelineError, match="sees no CUDA device"), setup(use_gpu=True):
        pass


def test_rank_error_is_recovered_from_the_task_output_alone():
    """On a cluster only the task's output reaches the driver: the marked line is enough."""
    line = (
        'PIPELINE_RANK_ERROR {"rank": 1, "time": 1.0, "host": "w1", "module": "builtins", '
        '"type": "KeyError", "message": "\'label\'", "hint": null, "traceback": "Traceback ...\\nKeyError"}'
    )
    err = _rank_failure(RuntimeError(f"Command failed with return code 1: ...\n{line}\n..."), None)
    assert isinstance(err, TrainingError)
    assert err.rank == 1
    assert "rank 1 failed on w1: KeyError" in str(err)
    assert "Traceback from rank 1" in str(err)
    streamed = _rank_failure(
        RuntimeError("TorchDistributor failed during training."), None, f"[rank1]: x\n{line}"
    )
    assert streamed.rank == 1 and "KeyError" in str(streamed)
    silent = _rank_failure(RuntimeError("killed"), None)
    assert silent.rank is None and "no rank recorded" in str(silent)


@pytest.mark.spark
def test_two_cpu_ranks_train_in_local_mode(spark, importable_tests):
    result = run_distributed(fit_line, num_processes=2, use_gpu=False)
    assert result["rank"] == 0
    assert result["world_size"] == 2
    assert (result["backend"], result["device"]) == ("gloo", "cpu")
    assert result["weights_agree"]
    assert result["last_loss"] < result["first_loss"] / 10
    assert result["initialized_inside"]


@pytest.mark.spark
def test_a_failing_rank_surfaces_its_traceback_in_the_driver(spark, importable_tests):
    with pytest.raises(TrainingError) as info:
        run_distributed(fail_on_rank_one, num_processes=2, use_gpu=False)
    err = info.value
    assert err.rank == 1
    assert "ValueError: bad batch shape on rank one" in str(err)
    assert "in fail_on_rank_one" in err.remote_traceback
    assert err.launcher_output  # what TorchDistributor itself said, kept for debugging


def test_a_user_error_in_a_rank_keeps_its_class_and_hint(tmp_path):
    """A rank's DatasetError (recorded in the exchange folder) is re-raised as a DatasetError."""
    from pipeline.train.distributed import _RankCall

    with pytest.raises(DatasetError):
        _RankCall(missing_dataset, False, str(tmp_path), 20)()
    err = _rank_failure(RuntimeError("TorchDistributor failed during training."), str(tmp_path))
    assert isinstance(err, DatasetError)
    assert str(err).startswith("rank 0: file:///nowhere does not exist")
    assert err.hint == "check the path"


def test_gpu_discovery_script_lists_nvidia_smi_indices(tmp_path):
    """The script Spark runs to find the driver's GPUs, fed by a stand-in nvidia-smi."""
    import json
    import os
    import subprocess

    from pipeline.train.distributed import gpu_spark_settings

    assert gpu_spark_settings(tmp_path, count=0) == {}
    settings = gpu_spark_settings(tmp_path / "conf", count=2)
    assert settings["spark.driver.resource.gpu.amount"] == "2"
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "0\\n1\\n"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{fake.parent}:{os.environ['PATH']}"

    def discover(**extra: str) -> dict:
        script = settings["spark.driver.resource.gpu.discoveryScript"]
        out = subprocess.run([script], env={**env, **extra}, capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    assert discover() == {"name": "gpu", "addresses": ["0", "1"]}
    # only the GPUs this process may use, not every GPU nvidia-smi sees
    assert discover(CUDA_VISIBLE_DEVICES="2,3") == {"name": "gpu", "addresses": ["2", "3"]}


def test_num_processes_is_validated(spark):
    with pytest.raises(ValueError, match="num_processes must be a positive integer, got 0"):
        run_distributed(fit_line, num_processes=0, use_gpu=False)


GPU_SCRIPT = """
import json
from pipeline.spark import SparkConfig, spark_session
from pipeline.train.distributed import gpu_spark_settings, run_distributed
from tests.test_distributed import fit_line

with spark_session(SparkConfig(master="local[2]", extra=gpu_spark_settings({workdir!r}))):
    print(json.dumps(run_distributed(fit_line, use_gpu=True)))
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_ranks_use_nccl_one_per_gpu(tmp_path, importable_tests):
    """Own process: the session must be built knowing the driver's GPUs (gpu_spark_settings)."""
    import json
    import subprocess
    import sys

    from pipeline.train.distributed import gpu_count

    script = GPU_SCRIPT.format(workdir=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["world_size"] == gpu_count()
    assert result["backend"] == "nccl" and result["device"].startswith("cuda")
    assert result["weights_agree"]


def _disagree(value_by_rank: list) -> None:
    with setup() as ctx:
        ctx.ensure_agreed(value_by_rank[ctx.rank], what="the resume epoch", hint="share run_dir")


def test_ranks_that_disagree_fail_instead_of_hanging(spark, importable_tests):
    run_distributed(_disagree, [3, 3], num_processes=2, use_gpu=False)  # agreeing ranks pass
    with pytest.raises(PipelineError, match=r"ranks disagree on the resume epoch.*HINT: share run_dir"):
        run_distributed(_disagree, [0, 3], num_processes=2, use_gpu=False)
