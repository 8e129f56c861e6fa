"""``pipeline train images|text``: train a model on a converted dataset through TorchDistributor.

Layers, each over the one before: ``conf/train_<kind>.yaml``; the ``train:`` section of
``--config FILE`` (and its ``spark:`` section for the session); the flags. With GPUs in local
mode the session is told about the driver's GPUs (:func:`training_spark_config`, shared with
``pipeline demo``).

Exit status: 0 (also after SIGTERM once the ranks saved a checkpoint: the report says how to
resume), 1 when a rank failed or SIGTERM came before any checkpoint, 2 for a user error, 130
after Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import os
import shlex
import signal
import sys
from typing import Any

from pipeline.cli.app import CommandFailed, Interrupted, add_json_flag, signal_received
from pipeline.cli.flags import ConfDefaults, add_config_flag, add_master_flag

__all__ = ["KINDS", "register", "run_training", "training_spark_config"]

KINDS = {  # kind -> (config class, training function, what it trains)
    "images": (
        "pipeline.train.image_classifier:ImageTrainConfig",
        "pipeline.train.image_classifier:run_image_training",
        "the image classifier (SmallCNN) on a dataset from `pipeline convert images`",
    ),
    "text": (
        "pipeline.train.text_lm:TextTrainConfig",
        "pipeline.train.text_lm:run_text_training",
        "the tiny causal language model on a dataset from `pipeline convert text`",
    ),
}

_FLAGS = {  # flag -> (config field, type, help)
    "--train-url": ("train_url", str, "training dataset (path or URL)"),
    "--eval-url": ("eval_url", str, "held-out dataset evaluated after every epoch"),
    "--run-dir": ("run_dir", str, "folder for checkpoint.pt, metrics.json, loss_curve.png"),
    "--epochs": ("epochs", int, "epochs in total (a resumed run trains the missing ones)"),
    "--batch-size": ("batch_size", int, "rows per batch on each rank"),
    "--lr": ("lr", float, "peak learning rate"),
    "--seed": ("seed", int, "seed of weights, data order and dropout"),
    "--workers": ("workers", int, "loader threads per rank"),
    "--checkpoint-every": ("checkpoint_every", int, "also checkpoint every N steps (none: after each epoch)"),
}


def _load(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def add_distribution_flags(parser: argparse.ArgumentParser, d: ConfDefaults) -> None:
    """``--num-processes``, ``--gpu/--no-gpu`` (training and the demo)."""
    dist = parser.add_argument_group("distribution")
    dist.add_argument(
        "--num-processes",
        type=int,
        default=None,
        help=d.help("ranks (none: one per GPU, else 2)", "distributed.num_processes"),
    )
    dist.add_argument(
        "--gpu",
        dest="use_gpu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=d.help("train on GPUs (none: when there are any)", "distributed.use_gpu"),
    )
    add_master_flag(dist)


def configure_parser(parser: argparse.ArgumentParser, kind: str) -> argparse.ArgumentParser:
    d = ConfDefaults(KINDS[kind][0], f"train_{kind}.yaml")
    for flag, (field, type_, text) in _FLAGS.items():
        parser.add_argument(flag, type=type_, default=None, help=d.help(text, field))
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=d.help("continue from RUN_DIR/checkpoint.pt when it exists", "resume"),
    )
    parser.add_argument(
        "--tensorboard",
        metavar="DIR",
        default=None,
        help="also write each epoch's metrics as TensorBoard events",
    )
    add_config_flag(parser, "train, spark")
    add_json_flag(parser)
    add_distribution_flags(parser, d)
    parser.add_argument(
        "--cluster",
        dest="local_mode",
        action="store_false",
        default=None,
        help="run the ranks as Spark tasks on the cluster's executors (default: processes on the driver)",
    )
    return parser


def config_from_args(kind: str, args: argparse.Namespace) -> Any:
    """``conf/train_<kind>.yaml`` < ``train:`` of ``--config`` < flags; ``distributed`` merged field by field."""
    from pipeline.config import load_options

    overrides = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in _FLAGS.items()}
    overrides["resume"] = args.resume
    config = load_options(
        _load(KINDS[kind][0]),
        f"train_{kind}.yaml",
        config_path=args.config,
        section="train",
        overrides=overrides,
    )
    return with_distribution_flags(config, args)


def check_datasets(config: Any) -> None:
    """The training and held-out datasets exist and are datasets, checked before Spark starts.

    Raises:
        DatasetError: one paragraph naming the URL, as a rank would (``pipeline.dataset``).

    On a cluster (``--cluster``) a local path only the executors see is left to them.
    """
    from pipeline.dataset import list_dataset_files
    from pipeline.storage import is_remote

    for url in (config.train_url, getattr(config, "eval_url", None)):
        if url and (config.distributed.local_mode or is_remote(url)):
            list_dataset_files(os.path.abspath(url) if "://" not in url else url)


def with_distribution_flags(config: Any, args: argparse.Namespace) -> Any:
    """``config`` with ``--num-processes``, ``--gpu`` and ``--cluster`` applied to ``config.distributed``."""
    changes = {
        k: v for k in ("num_processes", "use_gpu", "local_mode") if (v := getattr(args, k, None)) is not None
    }
    if not changes:
        return config
    return dataclasses.replace(config, distributed=dataclasses.replace(config.distributed, **changes))


def training_spark_config(config_path: str | None, master: str | None, distributed: Any, run_dir: str) -> Any:
    """The session of a training job or the demo: with GPUs in local mode, one that sees them."""
    import logging

    from pipeline.spark import load_spark_config
    from pipeline.train.distributed import gpu_spark_settings, resolve_use_gpu

    gpus = distributed.local_mode and resolve_use_gpu(distributed.use_gpu, local_mode=True)
    spark_config = load_spark_config(
        config_path, master=master, extra=gpu_spark_settings(run_dir) if gpus else None
    )
    if not distributed.local_mode and spark_config.master.startswith("local"):
        logging.getLogger(__name__).warning(
            "--cluster with a local master: the ranks run as local Spark tasks"
        )
    return spark_config


def run_training(kind: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """Train; prints the report unless ``--json``; returns the ``--json`` dict."""
    from pipeline.spark import spark_session
    from pipeline.train.distributed import TrainingError
    from pipeline.train.jobs import DriverPreemption, report
    from pipeline.train.monitor import PROGRESS_ENV, TENSORBOARD_ENV, mlflow_run_for_ranks

    if sys.stderr.isatty() and not args.json:
        os.environ[PROGRESS_ENV] = "1"  # the ranks' output is piped through this process
    if args.tensorboard:
        os.environ[TENSORBOARD_ENV] = os.path.abspath(args.tensorboard)
    config = config_from_args(kind, args)
    check_datasets(config)
    train = _load(KINDS[kind][1])
    with DriverPreemption() as preemption, mlflow_run_for_ranks():
        if signal_received():  # arrived before this handler, and its exception was lost
            raise Interrupted(signal_received() or signal.SIGTERM)
        try:
            spark_config = training_spark_config(args.config, args.master, config.distributed, config.run_dir)
            with spark_session(spark_config) as spark:
                result = train(config, spark=spark)
        except Exception as exc:  # TrainingError, or Spark going down with the signal
            if not preemption.received:
                if isinstance(exc, TrainingError):
                    raise CommandFailed(str(exc)) from None
                raise
        if preemption.received:
            preemption.wait_for_ranks()
            return _preempted(config.run_dir, args)
    if not args.json:
        print(report(result))
    return {k: v for k, v in result.items() if k != "history"}


def _preempted(run_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.train.jobs import saved_state

    saved = saved_state(run_dir)
    if saved.get("status") not in ("preempted", "finished"):  # the ranks were still starting
        raise Interrupted(signal.SIGTERM)
    command = shlex.join([sys.executable, *sys.argv])
    line = saved.get("resume") or f"finished before the signal took effect; see {run_dir}/metrics.json"
    if not args.json:
        print(f"{line}\nresume with: {command}")
    return {"status": saved["status"], "resume": line, "resume_command": command, "run_dir": run_dir}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model on a converted dataset through TorchDistributor",
        description="Train on a dataset through Spark's TorchDistributor: one rank per GPU, else 2 CPU "
        "ranks. Writes RUN_DIR/checkpoint.pt, metrics.json and loss_curve.png; running again on the same "
        "RUN_DIR resumes (--no-resume starts over). SIGTERM saves a checkpoint and exits 0.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, (_, _, text) in KINDS.items():
        sub = kinds.add_parser(
            kind, help=f"train {text}", description=f"Train {text}. Defaults shown come from conf/."
        )
        configure_parser(sub, kind)
        sub.set_defaults(handler=functools.partial(run_training, kind))
