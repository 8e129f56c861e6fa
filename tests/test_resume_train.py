"""Kill a 2-rank CPU training mid-epoch (SIGKILL, SIGTERM), resume it: same weights and metrics.

The ranks are plain processes started here with torchrun's environment (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``...), each running :func:`pipeline.train.loop.fit` -- the loop
both training jobs use -- on a tiny image dataset; each step sleeps 30 ms so that a signal
lands in the middle of an epoch. Run as ``python -m tests.test_resume_train CONFIG.json`` it is
one such rank.

The whole command too: ``jobs/train_images.py`` (= ``pipeline train images``) gets SIGTERM on its
driver process in the middle of epoch 2, passes it on to the ranks ``TorchDistributor`` started,
exits 0 with the command that resumes, and that command ends where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import REPO

STEP_SLEEP_S = 0.03
TIMING = (
    "seconds",
    "eval_seconds",
    "epochs",
    "data",
    "data_samples_per_s",
    "data_wait_fraction",
    "data_bound_by",
)


def write_images(path: Path, rows: int = 200, row_group_rows: int = 16) -> str:
    """A plain Parquet dataset: ``image`` uint8 8x8x3 (fixed-size lists), ``label`` int64 in 0..3."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, rows)
    images = rng.integers(0, 64, (rows, 8, 8, 3), dtype=np.uint8) + (labels * 48)[:, None, None, None].astype(
        np.uint8
    )
    flat = pa.array(images.reshape(-1))
    image = pa.FixedSizeListArray.from_arrays(
        pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, 3), 8), 8
    )
    table = pa.table({"image": image, "label": pa.array(labels, pa.int64())})
    pq.write_table(table.slice(0, rows // 2), path / "part-0.parquet", row_group_size=row_group_rows)
    pq.write_table(table.slice(rows // 2), path / "part-1.parquet", row_group_size=row_group_rows)
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("train") / "images")


def settings(images: str, run_dir: Path, **changes) -> dict:
    return {
        "train_url": images,
        "run_dir": str(run_dir),
        "epochs": 2,
        "batch_size": 8,  # 100 rows per rank: 13 steps per epoch, the last one of 4 rows
        "lr": 0.01,
        "weight_decay": 0.0,
        "seed": 1,
        "workers": 2,
        "checkpoint_every": 4,
        **changes,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: dict, tmp_path: Path, world: int = 2) -> list[subprocess.Popen]:
    path = tmp_path / f"config-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(config))
    port = free_port()
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "PIPELINE_USE_GPU": "0",
            "OMP_NUM_THREADS": "1",
        }
        cmd = [sys.executable, "-m", "tests.test_resume_train", str(path)]
        procs.append(
            subprocess.Popen(
                cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    return procs


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=180)
        out.append((proc.returncode, stdout, stderr))
    return out


def train(config: dict, tmp_path: Path) -> dict:
    results = finish(launch(config, tmp_path))
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    return json.loads(results[0][1].strip().splitlines()[-1])


def wait_for_checkpoint(run_dir: Path, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (run_dir / "checkpoint.pt").exists():
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.02)


def final_state(run_dir: Path) -> tuple[dict, list]:
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    history = json.loads((run_dir / "metrics.json").read_text())["epochs"]
    rows = [{k: v for k, v in row.items() if k not in TIMING} for row in history]
    return state["model"], rows


def assert_same_run(a: Path, b: Path) -> None:
    weights_a, rows_a = final_state(a)
    weights_b, rows_b = final_state(b)
    assert rows_a == rows_b
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name


def reference_run(images: str, tmp_path: Path) -> Path:
    run_dir = tmp_path / "reference"
    summary = train(settings(images, run_dir), tmp_path)
    assert (summary["status"], summary["global_step"]) == ("finished", 26)
    return run_dir


def checkpoint_position(run_dir: Path) -> tuple[int, int, int]:
    saved = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    return saved["epoch"], saved["step"], saved["global_step"]


@pytest.mark.slow
def test_sigkill_then_sigterm_mid_epoch_and_resume_equal_the_uninterrupted_run(images, tmp_path):
    """One run killed twice: SIGKILL (no warning; resumes from the last periodic checkpoint), then
    SIGTERM (saves at the step it is in, exits 0); the resumed run ends where the reference ends."""
    reference = reference_run(images, tmp_path)
    run_dir = tmp_path / "run"
    config = settings(images, run_dir)

    procs = launch(config, tmp_path)
    wait_for_checkpoint(run_dir, procs)  # every 4 steps: the first one is mid-epoch 1
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    finish(procs)
    killed = checkpoint_position(run_dir)
    assert killed[:2] != (2, 0), "the run ended before it was killed"

    procs = launch(
        {**config, "workers": 1, "checkpoint_every": None}, tmp_path
    )  # other workers: same batches
    while checkpoint_position(run_dir) == killed:  # wait for the end of the epoch in progress
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
        time.sleep(0.05)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    results = finish(procs)
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-3000:]
    summary = json.loads(results[0][1].strip().splitlines()[-1])
    assert (summary["status"], summary["resumed_from_epoch"], summary["resumed_from_step"]) == (
        "preempted",
        killed[0],
        killed[1],
    )
    assert "run the same command again to resume" in results[0][2]
    saved = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 1 and 0 < saved["step"] < 13, (saved["epoch"], saved["step"])  # mid-epoch 2
    assert len(saved["ranks"]) == 2 and saved["ranks"][1]["loader"]["rank"] == 1
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "preempted"

    resumed = train(config, tmp_path)
    assert (resumed["status"], resumed["resumed_from_epoch"], resumed["resumed_from_step"]) == (
        "finished",
        1,
        saved["step"],
    )
    assert_same_run(run_dir, reference)


def test_a_mid_epoch_checkpoint_refuses_another_world_size(images, tmp_path):
    from pipeline.errors import PipelineError
    from pipeline.train.checkpoint import save_checkpoint
    from pipeline.train.models import SmallCNN

    run_dir = tmp_path / "run"
    config = settings(images, run_dir)
    model = SmallCNN(4, width=8)
    optimizer = torch.optim.AdamW(model.parameters())
    ranks = [{"loader": {}, "rng": {}, "sums": {}}] * 2
    save_checkpoint(
        run_dir / "checkpoint.pt",
        model=model,
        optimizer=optimizer,
        epoch=0,
        step=3,
        history=[],
        config=config,
        ranks=ranks,
    )
    with pytest.raises(PipelineError, match=r"saved in the middle of epoch 1 by 2 ranks; this run has 1"):
        _rank_main_config(config)


JOB_EPOCHS, JOB_STEPS = 3, 50  # 800 rows, 2 ranks, batches of 8


@pytest.fixture(scope="module")
def job_images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("job") / "images", rows=800, row_group_rows=40)


def job_args(images: str, run_dir: Path, config: Path) -> list[str]:
    """``pipeline train images`` flags: 2 CPU ranks, no held-out set, a checkpoint every 10 steps."""
    return [
        "--config", str(config), "--train-url", images, "--run-dir", str(run_dir),
        "--epochs", str(JOB_EPOCHS), "--batch-size", "8", "--workers", "2", "--checkpoint-every", "10",
        "--num-processes", "2", "--no-gpu", "--master", "local[2]",
    ]  # fmt: skip


def run_job(cmd: list[str], cwd: Path, *, own_group: bool = False) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PIPELINE_PROGRESS", None)
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=own_group,
    )


def epochs_done(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / "metrics.json").read_text())["epochs"])
    except (OSError, ValueError, KeyError):
        return 0


def stop_job(images: str, tmp_path: Path, *, whole_group: bool) -> tuple[int, int, str]:
    """Run ``jobs/train_images.py -q``, SIGTERM it once epoch 1 is done, check how it stopped.

    Returns:
        Finished epochs and steps of the next one in the checkpoint, and the resume command it printed.
    """
    config = tmp_path / "job.yaml"
    config.write_text("train:\n  num_classes: 4\n  width: 8\n")  # a plain Parquet dataset: no class names
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "jobs" / "train_images.py"), "-q", *job_args(images, run_dir, config)]
    proc = run_job(cmd, tmp_path, own_group=whole_group)
    deadline = time.monotonic() + 240
    while epochs_done(run_dir) < 1:  # epoch 1 done: the signal lands in epoch 2
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "epoch 1 did not finish"
        time.sleep(0.02)
    if whole_group:  # the driver, Spark's JVM, TorchDistributor's wrapper, torchrun and the ranks
        os.killpg(proc.pid, signal.SIGTERM)
    else:  # the driver only, as `kill -TERM <pid>`
        proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-4000:] + stdout[-4000:]
    assert "Traceback" not in stdout + stderr, stderr[-4000:] + stdout[-4000:]
    epoch, step, global_step = checkpoint_position(run_dir)
    assert (epoch, step) < (JOB_EPOCHS, 0) and global_step == epoch * JOB_STEPS + step, (epoch, step)
    stopped = re.search(
        rf"^preempted at epoch (\d+)/{JOB_EPOCHS}, step (\d+)/{JOB_STEPS}: checkpoint saved in (\S+); "
        r"run the same command again to resume from there.*\nresume with: (.+)$",
        stdout,
        re.M,
    )
    assert stopped, stdout[-4000:]
    assert (int(stopped[1]), int(stopped[2]), stopped[3]) == (epoch + 1, step, str(run_dir / "checkpoint.pt"))
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "preempted"
    return epoch, step, stopped[4]


@pytest.mark.spark
@pytest.mark.slow
def test_sigterm_to_the_train_command_mid_epoch_exits_0_and_its_resume_command_ends_as_uninterrupted(
    spark, job_images, tmp_path
):
    from pipeline.cli import build_parser
    from pipeline.cli.train import config_from_args
    from pipeline.train.image_classifier import run_image_training

    epoch, step, command = stop_job(job_images, tmp_path, whole_group=False)
    run_dir, config = tmp_path / "run", tmp_path / "job.yaml"

    resume = run_job([*shlex.split(command), "--resume"], tmp_path)  # the command it printed
    stdout, stderr = resume.communicate(timeout=240)
    assert resume.returncode == 0, stderr[-4000:] + stdout[-4000:]
    assert "Traceback" not in stdout + stderr, stderr[-4000:]
    assert f"resumed after epoch {epoch}" + (f" at step {step}" if step else "") in stdout, stdout[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["resumed_from_epoch"], metrics["resumed_from_step"]) == (
        "finished",
        epoch,
        step,
    )

    # The reference: the same settings (parsed by the same code), never interrupted, in this process.
    reference = tmp_path / "reference"
    args = build_parser().parse_args(["train", "images", *job_args(job_images, reference, config)])
    summary = run_image_training(config_from_args("images", args), spark=spark)
    assert (summary["status"], summary["global_step"]) == ("finished", JOB_EPOCHS * JOB_STEPS)
    assert_same_run(run_dir, reference)


@pytest.mark.spark
@pytest.mark.slow
def test_sigterm_to_the_train_commands_process_group_also_exits_0_after_a_checkpoint(job_images, tmp_path):
    """As when a scheduler signals the whole group: TorchDistributor's wrapper then kills torchrun at
    once, the ranks get the signal themselves and from the driver, and still save and stop."""
    stop_job(job_images, tmp_path, whole_group=True)


def _slow_step(ddp, batch):
    from pipeline.train.image_classifier import _image_step

    time.sleep(STEP_SLEEP_S)
    return _image_step(ddp, batch)


def _rank_main_config(values: dict) -> dict:
    from pipeline.train.loop import Task, fit
    from pipeline.train.models import SmallCNN
    from pipeline.train.process_group import setup

    config = SimpleNamespace(**values)
    with setup(use_gpu=False) as ctx:
        torch.manual_seed(config.seed)
        model = SmallCNN(4, width=8, dropout=0.2)
        task = Task("resume test", ["image", "label"], _slow_step, None)
        return fit(ctx, config, model, task, must_match=("train_url", "seed"))


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s [rank %(process)d] %(name)s: %(message)s")
    result = _rank_main_config(json.loads(Path(sys.argv[1]).read_text()))
    keys = ("status", "global_step", "resumed_from_epoch", "resumed_from_step", "epochs_trained")
    print(json.dumps({k: result[k] for k in keys}))


@pytest.mark.spark
@pytest.mark.parametrize("after_s", [1.0, 6.0])
def test_sigterm_before_any_rank_runs_stops_the_train_command_with_143(job_images, tmp_path, after_s):
    """Nothing to save yet (Spark or torchrun starting): one line, exit 143, no training left running.

    Before, the signal found no rank to pass on to and was dropped: the training ran to its end.
    """
    config = tmp_path / "job.yaml"
    config.write_text("train:\n  num_classes: 4\n  width: 8\n")
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "-q",
        "train",
        "images",
        *job_args(job_images, run_dir, config),
    ]
    proc = run_job(cmd, tmp_path, own_group=True)
    try:
        time.sleep(after_s)
        if proc.poll() is None and epochs_done(run_dir) == 0 and not (run_dir / "checkpoint.pt").exists():
            proc.send_signal(signal.SIGTERM)
        else:
            pytest.skip("the run got past its start before the signal")
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            tree = subprocess.run(
                ["ps", "-e", "-o", "pid,ppid,pgid,stat,args"], capture_output=True, text=True
            )
            mine = [line for line in tree.stdout.splitlines() if f" {proc.pid} " in line]
            raise AssertionError(f"still running 120 s after SIGTERM: {mine}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Traceback" not in stdout + stderr, stderr[-4000:]
    if proc.returncode == 143:
        assert stderr.strip().splitlines()[-1] == "stopped by SIGTERM: stopped and cleaned up", stderr[-4000:]
        assert epochs_done(run_dir) < JOB_EPOCHS  # it did not train to the end
    else:  # the ranks had started and saved a checkpoint mid-run: the preemption path
        assert proc.returncode == 0, stderr[-4000:]
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "preempted", stdout[-4000:]
    # Nothing of the command's process group is left running (the JVM ends when its stdin closes,
    # torchrun when its wrapper did); zombies handed to this test process, a subreaper, are not.
    deadline = time.monotonic() + 30
    while True:
        tree = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,stat=,args="], capture_output=True, text=True)
        left = [
            ln
            for ln in tree.stdout.splitlines()
            if ln.split()[1] == str(proc.pid) and "Z" not in ln.split()[2]
        ]
        if not left:
            return
        assert time.monotonic() < deadline, f"left running: {left}"
        time.sleep(0.2)
