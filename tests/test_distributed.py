"""The TorchDistributor helper: 2 CPU ranks in local mode, a failing rank, the rank-side setup."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import DatasetError, PipelineError
from pipeline.train.distributed import (
    TrainingError,
    _error_records,
    _rank_failure,
    _RankCall,
    run_distributed,
    setup,
)
from pipeline.train.process_group import USE_GPU_ENV
from pipeline.train.rank_reports import InboxAddress, ReportInbox, send_report
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


def fail_on_rank_one_after_rank_zero_returned() -> int:
    """Rank 0 returns (and TorchDistributor gets its output file) before rank 1 fails."""
    import time

    with setup() as ctx:
        rank = ctx.rank
    if rank == 1:
        time.sleep(1.0)
        raise ValueError("rank one failed after rank zero returned")
    return rank


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


def _record(rank: int, time: float, type_: str, message: str) -> dict:
    return {
        "rank": rank, "time": time, "host": f"w{rank}", "module": "builtins", "type": type_,
        "message": message, "hint": None, "traceback": f"Traceback ...\n{type_}: {message}",
    }  # fmt: skip


def test_the_root_cause_is_the_earliest_failure_that_is_not_a_peer_going_away():
    peer = _record(0, 1.0, "RuntimeError", "[gloo] Connection closed by peer")
    cause = _record(1, 2.0, "KeyError", "'label'")
    err = _rank_failure({0: peer, 1: cause}, "TorchDistributor failed during training.")
    assert isinstance(err, TrainingError)
    assert err.rank == 1
    assert "rank 1 failed on w1: KeyError: 'label' (ranks [0] failed too)" in str(err)
    assert "Traceback from rank 1" in str(err) and err.remote_traceback == cause["traceback"]
    assert err.launcher_output == "TorchDistributor failed during training."
    earlier = _record(1, 0.5, "ValueError", "bad shape")
    assert _rank_failure({0: _record(0, 1.0, "KeyError", "x"), 1: earlier}, "").rank == 1
    silent = _rank_failure({}, "killed")
    assert silent.rank is None and "no rank reported" in str(silent)


def test_a_rank_reports_its_value_or_its_error_to_the_inbox(monkeypatch):
    """In this process, no launcher: what _RankCall sends is what the driver turns into a result
    or an error; a PipelineError keeps its class and hint; a report without the token is refused."""
    from pyspark import cloudpickle

    monkeypatch.setenv(USE_GPU_ENV, "0")  # _RankCall sets it; monkeypatch puts it back
    monkeypatch.delenv("RANK", raising=False)
    with ReportInbox() as inbox:
        assert _RankCall(lambda: {"loss": 0.5}, False, 20, inbox.address)() is None
        with pytest.raises(DatasetError):
            _RankCall(missing_dataset, False, 20, inbox.address)()
        forged = InboxAddress(inbox.address.host, inbox.address.port, b"x" * 16)
        with pytest.raises(ConnectionError, match=r"(did not confirm|cannot send) .*result report"):
            send_report(forged, "result", 0, cloudpickle.dumps("forged"))
    assert cloudpickle.loads(inbox.results[0]) == {"loss": 0.5}
    err = _rank_failure(_error_records(inbox.errors), "TorchDistributor failed during training.")
    assert isinstance(err, DatasetError)
    assert str(err).startswith("rank 0: file:///nowhere does not exist")
    assert err.hint == "check the path"
    with pytest.raises(RuntimeError, match="not open"):
        _ = inbox.address


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


@pytest.mark.spark
def test_a_rank_failing_after_rank_zero_returned_fails_the_run(spark, importable_tests):
    """TorchDistributor returns normally here (rank 0 wrote its output file; pyspark's torchrun
    wrapper exits 0 whatever torchrun says): the failure still reaches the driver."""
    with pytest.raises(TrainingError) as info:
        run_distributed(fail_on_rank_one_after_rank_zero_returned, num_processes=2, use_gpu=False)
    assert info.value.rank == 1
    assert "ValueError: rank one failed after rank zero returned" in str(info.value)


@pytest.fixture
def shipped_by_value():
    """Barrier tasks run in Spark's Python workers, which do not see this test's PYTHONPATH:
    ship this module's functions by value, as a notebook's would be."""
    import sys

    from pyspark import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


@pytest.mark.spark
def test_cluster_mode_returns_rank_zeros_value_and_reports_a_failing_rank(spark, shipped_by_value):
    """local_mode=False: the ranks run as barrier tasks (here on the local master's executor)
    and report to the driver the same way."""
    result = run_distributed(fit_line, num_processes=2, use_gpu=False, local_mode=False)
    assert (result["rank"], result["world_size"], result["weights_agree"]) == (0, 2, True)
    with pytest.raises(TrainingError) as info:
        run_distributed(fail_on_rank_one, num_processes=2, use_gpu=False, local_mode=False)
    assert info.value.rank == 1
    assert "in fail_on_rank_one" in info.value.remote_traceback


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
