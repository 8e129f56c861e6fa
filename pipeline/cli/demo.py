"""``pipeline demo`` (what ``make demo`` runs): real digits -> Spark conversion -> training -> accuracy.

Everything is written under data/demo and runs/demo (both git-ignored); a second run reuses the
image folder and the converted datasets when they are still valid. Defaults: ``conf/demo.yaml``
< the ``demo:`` (and ``spark:``) sections of ``--config FILE`` < flags. Exit status 0 when
held-out accuracy reaches ``min_accuracy``, 1 when it does not or a rank failed, 2 for a user
error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from pipeline.cli.app import CommandFailed, add_json_flag
from pipeline.cli.flags import ConfDefaults, add_config_flag
from pipeline.cli.train import add_distribution_flags, training_spark_config, with_distribution_flags

__all__ = ["register", "run_demo_command"]

_CONFIG = "pipeline.demo.run:DemoConfig"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the end-to-end demo (make demo): digits -> Spark conversion -> training -> accuracy",
        description="Write scikit-learn's digits as an image folder, convert it with Spark, train a small "
        "CNN through TorchDistributor (stopped midway as by SIGTERM, then resumed) and report the held-out "
        "accuracy and the loader's figures. Defaults shown come from conf/.",
    )
    d = ConfDefaults(_CONFIG, "demo.yaml")
    p.add_argument("--epochs", type=int, default=None, help=d.help("training epochs", "epochs"))
    p.add_argument("--data-dir", default=None, help=d.help("where the images and datasets go", "data_dir"))
    p.add_argument("--run-dir", default=None, help=d.help("where the training run goes", "run_dir"))
    p.add_argument("--limit", type=int, default=None, help=d.help("use only this many digits", "limit"))
    p.add_argument(
        "--min-accuracy",
        type=float,
        default=None,
        help=d.help("fail below this held-out accuracy", "min_accuracy"),
    )
    add_config_flag(p, "demo, spark")
    add_json_flag(p)
    add_distribution_flags(p, d)
    p.set_defaults(handler=run_demo_command, local_mode=None)


def run_demo_command(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.config import load_options
    from pipeline.demo.run import AccuracyTooLow, DemoConfig, run_demo
    from pipeline.spark import spark_session
    from pipeline.train.distributed import TrainingError
    from pipeline.train.monitor import PROGRESS_ENV

    if sys.stderr.isatty() and not args.json:
        os.environ[PROGRESS_ENV] = "1"  # the ranks' progress lines, piped through this process
    started = time.perf_counter()
    overrides = {
        "epochs": args.epochs,
        "data_dir": args.data_dir,
        "run_dir": args.run_dir,
        "limit": args.limit,
        "min_accuracy": args.min_accuracy,
    }
    config = load_options(
        DemoConfig, "demo.yaml", config_path=args.config, section="demo", overrides=overrides
    )
    config = with_distribution_flags(config, args)
    spark_config = training_spark_config(args.config, args.master, config.distributed, config.run_dir)
    t0 = time.perf_counter()
    try:
        with spark_session(spark_config) as spark:
            spark_seconds = time.perf_counter() - t0
            result = run_demo(spark, config)
    except AccuracyTooLow as exc:
        raise CommandFailed(str(exc)) from None
    except TrainingError as exc:
        raise CommandFailed(str(exc)) from None
    stages = {"spark start": spark_seconds, **result.stages}
    if not args.json:
        _print_report(result, stages, time.perf_counter() - started)
    return {**result.to_dict(), "stages": stages}


def _print_report(result: Any, stages: dict[str, float], total: float) -> None:
    from pipeline.train.loop import loader_line

    training, stopped = result.training, result.preempted
    history = training.get("history") or []
    print()
    print("== demo: sklearn digits -> Spark conversion -> TorchDistributor training ==")
    print(f"images: {result.counts['train']} train, {result.counts['heldout']} held out (8x8, 10 classes)")
    epochs = len(history)
    print(
        f"trained on {training['world_size']} {training['device']} process(es) ({training['backend']}), {epochs} epochs"
    )
    for name, seconds in stages.items():
        note = " (reused)" if result.reused.get(name) else ""
        print(f"  {name:12s} {seconds:7.1f} s{note}")
    print(f"  {'total':12s} {total:7.1f} s")
    resumed_in = None
    if stopped:
        epoch, step = training["resumed_from_epoch"], training["resumed_from_step"]
        resumed_in = epoch + 1 if step else None
        print(f"preemption drill: {stopped['resume']}; the ranks exited 0")
        print(
            f"resume: the same training launched again continued at epoch {epoch + 1}, step {step + 1}/"
            f"{training['steps_per_epoch']} (model, optimizer, LR schedule, RNG and loader position from "
            f"the checkpoint) and trained to epoch {epochs}"
        )
    print(f"held-out accuracy: {result.accuracy:.4f}")
    if history and "data_samples_per_s" in history[-1]:  # rank 0's loader.stats(), per epoch
        print("epoch  train_loss  eval_accuracy  samples/s  data wait  bound by")
        for row in history:
            mark = "*" if row["epoch"] == resumed_in else " "
            print(
                f"{row['epoch']:5d}{mark} {row['train_loss']:10.4f}  {row.get('eval_accuracy', float('nan')):13.4f}"
                f"  {row['data_samples_per_s']:9,.0f}  {row['data_wait_fraction']:9.1%}  {row['data_bound_by']}"
            )
        if resumed_in:
            print(
                "  * stopped in this epoch and resumed: its samples/s and data wait are those of the resumed part"
            )
        totals = {
            name: sum(row["data"]["stages"].get(name, 0.0) for row in history)
            for name in history[-1]["data"]["stages"]
        }
        print(
            f"loader stages, rank 0, all {epochs} epochs: "
            + "  ".join(f"{name} {seconds:.3f} s" for name, seconds in totals.items())
        )
        print(f"loader, rank 0, last epoch: {loader_line(history[-1]['data'])}")
    print(
        f"metrics: {training['metrics']}\nloss curve: {training['loss_curve']} (loss, and data wait beside it)"
    )
