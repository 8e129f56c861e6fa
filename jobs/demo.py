"""`make demo`: real digits -> Spark conversion -> TorchDistributor training -> held-out accuracy.

    .venv/bin/python jobs/demo.py            # what `make demo` runs
    .venv/bin/python jobs/demo.py --epochs 20 --json

Everything is written under data/demo and runs/demo (both git-ignored); a second run reuses the
image folder and the converted datasets when they are still valid. Exit status 0 when held-out
accuracy reaches min_accuracy (conf/demo.yaml), 1 when it does not or a rank failed, 2 for a
user error.
"""

import argparse
import dataclasses
import json
import logging
import sys
import textwrap
import time

from pipeline.errors import PipelineError
from pipeline.spark import load_spark_config, spark_session
from pipeline.train.demo import AccuracyTooLow, load_demo_config, run_demo
from pipeline.train.distributed import TrainingError, gpu_spark_settings, resolve_use_gpu


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="demo.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="YAML file instead of conf/demo.yaml")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs")
    parser.add_argument("--data-dir", default=None, help="where images and datasets go")
    parser.add_argument("--run-dir", default=None, help="where the training run goes")
    parser.add_argument(
        "--master", default="local[2]", help="Spark master for the conversion (default local[2])"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "petastorm", "pyspark", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.perf_counter()
    try:
        config = load_demo_config(
            args.config, epochs=args.epochs, data_dir=args.data_dir, run_dir=args.run_dir
        )
        spark_config = load_spark_config(master=args.master)
        if resolve_use_gpu(config.distributed.use_gpu, local_mode=True):
            extra = {**spark_config.extra, **gpu_spark_settings(config.run_dir)}
            spark_config = dataclasses.replace(spark_config, extra=extra)  # TorchDistributor sees the GPUs
        t0 = time.perf_counter()
        with spark_session(spark_config) as spark:
            spark_seconds = time.perf_counter() - t0
            result = run_demo(spark, config)
    except PipelineError as exc:
        print(f"error: {textwrap.fill(str(exc), width=100)}", file=sys.stderr)
        return 1 if isinstance(exc, AccuracyTooLow) else 2
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    training = result.training
    stages = {"spark start": spark_seconds, **result.stages}
    print()
    print("== demo: sklearn digits -> Spark conversion -> TorchDistributor training ==")
    print(f"images: {result.counts['train']} train, {result.counts['heldout']} held out (8x8, 10 classes)")
    print(
        f"trained on {training['world_size']} {training['device']} process(es) ({training['backend']}), "
        f"{training['epochs_trained']} epochs"
    )
    for name, seconds in stages.items():
        note = " (reused)" if result.reused.get(name) else ""
        print(f"  {name:12s} {seconds:7.1f} s{note}")
    print(f"  {'total':12s} {time.perf_counter() - started:7.1f} s")
    print(f"held-out accuracy: {result.accuracy:.4f}")
    print(f"metrics: {training['metrics']}\nloss curve: {training['loss_curve']}")
    if args.json:
        print(json.dumps({**result.to_dict(), "stages": stages}, default=str, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
