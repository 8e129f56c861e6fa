"""The command line of ``jobs/train_images.py`` and ``jobs/train_text.py``: flags, session, report.

Both jobs share one flow: ``conf/train_<kind>.yaml`` < ``--config FILE`` < flags; open a Spark
session (reusing spark-submit's or a notebook's; with GPUs in local mode, one that knows the
driver's GPUs); run the training through ``TorchDistributor``; print a report (``--json``: one
JSON object as the last line). Exit status: 0, 1 when a rank failed, 2 for a user error.

Preemption: SIGTERM to the driver is passed on to the ranks (the processes ``torchrun``
started), which finish their step, save a checkpoint and stop; the driver waits for them, prints
how to resume and exits 0. A SIGTERM sent to the whole process group ends the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shlex
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.errors import PipelineError
from pipeline.train.distributed import TrainingError, gpu_spark_settings, resolve_use_gpu

__all__ = ["build_parser", "config_from_args", "job_main", "report"]

log = logging.getLogger(__name__)

_FLAGS = {  # flag -> (config field, type, help)
    "--train-url": ("train_url", str, "training dataset (path or URL)"),
    "--eval-url": ("eval_url", str, "held-out dataset evaluated after every epoch"),
    "--run-dir": ("run_dir", str, "folder for checkpoint.pt, metrics.json, loss_curve.png"),
    "--epochs": ("epochs", int, "epochs in total (a resumed run trains the missing ones)"),
    "--batch-size": ("batch_size", int, "rows per batch on each rank"),
    "--lr": ("lr", float, "peak learning rate"),
    "--seed": ("seed", int, "seed of weights, data order and dropout"),
    "--workers": ("workers", int, "loader threads per rank"),
    "--checkpoint-every": (
        "checkpoint_every",
        int,
        "also checkpoint every N steps (default: after each epoch)",
    ),
}


def build_parser(kind: str) -> argparse.ArgumentParser:
    """The flags of ``jobs/train_<kind>.py``; defaults come from ``conf/train_<kind>.yaml``."""
    parser = argparse.ArgumentParser(
        prog=f"train_{kind}.py",
        description=f"Train the {kind} model through TorchDistributor (defaults: conf/train_{kind}.yaml).",
    )
    parser.add_argument("--config", default=None, help=f"YAML file instead of conf/train_{kind}.yaml")
    for flag, (_, type_, help_) in _FLAGS.items():
        parser.add_argument(flag, type=type_, default=None, help=help_)
    parser.add_argument(
        "--resume", action=argparse.BooleanOptionalAction, default=None, help="continue from run_dir"
    )
    dist = parser.add_argument_group("distribution")
    dist.add_argument("--num-processes", type=int, default=None, help="ranks (default: one per GPU, else 2)")
    dist.add_argument(
        "--gpu", dest="use_gpu", action=argparse.BooleanOptionalAction, default=None, help="train on GPUs"
    )
    dist.add_argument(
        "--cluster",
        dest="local_mode",
        action="store_false",
        default=None,
        help="run the ranks as Spark tasks on the cluster's executors (local_mode=False)",
    )
    dist.add_argument("--master", default=None, help="Spark master URL (default conf/spark.yaml)")
    parser.add_argument(
        "--tensorboard",
        metavar="DIR",
        default=None,
        help="also write each epoch's metrics as TensorBoard events",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    return parser


def config_from_args(cls: type, default_file: str, args: argparse.Namespace) -> Any:
    """``default_file`` (or ``--config``) with the given flags on top, ``distributed`` merged field by field."""
    from pipeline.config import load_config

    overrides = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in _FLAGS.items()}
    overrides["resume"] = args.resume
    config = load_config(cls, args.config or default_file, overrides=overrides)
    dist_changes = {
        k: v
        for k, v in {
            "num_processes": args.num_processes,
            "use_gpu": args.use_gpu,
            "local_mode": args.local_mode,
        }.items()
        if v is not None
    }
    if dist_changes:
        config = dataclasses.replace(
            config, distributed=dataclasses.replace(config.distributed, **dist_changes)
        )
    return config


def _spark_config(args: argparse.Namespace, config: Any) -> Any:
    from pipeline.convert.runner import spark_config_from_args

    spark_config = spark_config_from_args(argparse.Namespace(master=args.master, config=None))
    local = spark_config.master.startswith("local")
    if config.distributed.local_mode and resolve_use_gpu(config.distributed.use_gpu, local_mode=True):
        extra = {**spark_config.extra, **gpu_spark_settings(config.run_dir)}
        spark_config = dataclasses.replace(spark_config, extra=extra)
    if not config.distributed.local_mode and local:
        log.warning("--cluster with a local master: the ranks run as local Spark tasks")
    return spark_config


class _Preemption:
    """Driver side of SIGTERM: pass it on to the ranks, then let :func:`job_main` wait for them."""

    def __init__(self) -> None:
        self.received = False
        self._ranks: list[int] = []
        self._previous: Any = None

    def __enter__(self) -> _Preemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received:
            return
        self.received = True
        self._ranks = _rank_processes()
        log.warning("SIGTERM: asking %d rank(s) to save a checkpoint and stop", len(self._ranks))
        for pid in self._ranks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def wait_for_ranks(self, timeout_s: float = 300.0) -> None:
        """Wait until the ranks that got the signal have exited (they save first)."""
        deadline = time.monotonic() + timeout_s
        while self._ranks and time.monotonic() < deadline:
            self._ranks = [pid for pid in self._ranks if _alive(pid)]
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _rank_processes() -> list[int]:
    """PIDs of this process's descendants started by ``torchrun`` (Linux ``/proc``; else none)."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                commands[int(entry)] = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue

    def descends(pid: int) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            if pid == os.getpid():
                return True
            pid, seen = parents.get(pid, 0), seen + 1
        return False

    return sorted(
        pid
        for pid, parent in parents.items()
        if "torch.distributed.run" in commands.get(parent, "") and descends(pid)
    )


def _preempted_exit(config: Any) -> int:
    """After SIGTERM: the ranks' checkpoint says how to resume (exit 0), or nothing was saved (1)."""
    metrics = os.path.join(os.path.expanduser(config.run_dir), "metrics.json")
    try:
        with open(metrics, encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        saved = {}
    if saved.get("status") in ("preempted", "finished"):
        line = saved.get("resume") or f"finished before the signal took effect; see {metrics}"
        print(f"{line}\nresume with: {shlex.join([sys.executable, *sys.argv])}")
        return 0
    print(f"error: SIGTERM before any checkpoint was saved in {config.run_dir}", file=sys.stderr)
    return 1


def report(result: dict[str, Any]) -> str:
    """A short human-readable summary of a training result."""
    final = result.get("final", {})
    lines = [
        f"trained {result['epochs_trained']} epoch(s) on {result['world_size']} rank(s) "
        f"({result['backend']}, {result['device']}) in {result['train_seconds']:.1f} s"
        + (f", resumed after epoch {result['resumed_from_epoch']}" if result["resumed_from_epoch"] else "")
        + (f" at step {result['resumed_from_step']}" if result.get("resumed_from_step") else ""),
    ]
    for key in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "eval_perplexity"):
        if key in final:
            lines.append(f"  {key:16s} {final[key]:.4f}")
    lines.append(f"  metrics          {result['metrics']}")
    lines.append(f"  loss curve       {result['loss_curve']}")
    if result.get("resume"):
        lines.append(result["resume"])
    return "\n".join(lines)


def job_main(
    kind: str, cls: type, train: Callable[..., dict[str, Any]], argv: Sequence[str] | None = None
) -> int:
    """Entry point of ``jobs/train_<kind>.py``: 0 on success, 1 when a rank failed, 2 for a user error."""
    from pipeline.spark import spark_session

    args = build_parser(kind).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "petastorm", "pyspark", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from pipeline.train.monitor import PROGRESS_ENV, TENSORBOARD_ENV

    if sys.stderr.isatty() and not args.json:
        os.environ[PROGRESS_ENV] = "1"  # the ranks' output is piped through this process
    if args.tensorboard:
        os.environ[TENSORBOARD_ENV] = os.path.abspath(args.tensorboard)
    config = None
    with _Preemption() as preemption:
        try:
            config = config_from_args(cls, f"train_{kind}.yaml", args)
            with spark_session(_spark_config(args, config)) as spark:
                result = train(config, spark=spark)
        except PipelineError as exc:
            print(f"error: {textwrap.fill(str(exc), width=100)}", file=sys.stderr)
            return 2
        except Exception as exc:  # TrainingError, or Spark going down with the signal
            if not preemption.received:
                if isinstance(exc, TrainingError):
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
                raise
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        if preemption.received and config is not None:
            preemption.wait_for_ranks()
            return _preempted_exit(config)
    print(report(result))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "history"}, default=str, sort_keys=True))
    return 0
