"""The command line of ``jobs/train_images.py`` and ``jobs/train_text.py``: flags, session, report.

Both jobs share one flow: ``conf/train_<kind>.yaml`` < ``--config FILE`` < flags; open a Spark
session (reusing spark-submit's or a notebook's; with GPUs in local mode, one that knows the
driver's GPUs); run the training through ``TorchDistributor``; print a report (``--json``: one
JSON object as the last line). Exit status: 0, 1 when a rank failed, 2 for a user error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import textwrap
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


def report(result: dict[str, Any]) -> str:
    """A short human-readable summary of a training result."""
    final = result.get("final", {})
    lines = [
        f"trained {result['epochs_trained']} epoch(s) on {result['world_size']} rank(s) "
        f"({result['backend']}, {result['device']}) in {result['train_seconds']:.1f} s"
        + (f", resumed after epoch {result['resumed_from_epoch']}" if result["resumed_from_epoch"] else ""),
    ]
    for key in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "eval_perplexity"):
        if key in final:
            lines.append(f"  {key:16s} {final[key]:.4f}")
    lines.append(f"  metrics          {result['metrics']}")
    lines.append(f"  loss curve       {result['loss_curve']}")
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
    try:
        config = config_from_args(cls, f"train_{kind}.yaml", args)
        with spark_session(_spark_config(args, config)) as spark:
            result = train(config, spark=spark)
    except PipelineError as exc:
        print(f"error: {textwrap.fill(str(exc), width=100)}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(report(result))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "history"}, default=str, sort_keys=True))
    return 0
