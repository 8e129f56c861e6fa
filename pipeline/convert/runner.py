"""Run a conversion from parsed arguments: shared by ``pipeline convert <kind>`` and ``jobs/``.

The flow is the same everywhere: parse (common flags + the kind's flags), load settings and
options, check DEST *before* starting Spark, open a session (reusing a notebook's or
spark-submit's), call ``convert_<kind>``, print the summary.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
import textwrap
from collections.abc import Sequence
from types import FrameType, ModuleType
from typing import Any

from pipeline.convert.common import add_common_arguments, load_options, load_settings
from pipeline.convert.staging import check_destination
from pipeline.errors import PipelineError

__all__ = [
    "build_kind_parser",
    "configure_parser",
    "job_main",
    "kind_module",
    "raise_interrupt",
    "run_from_args",
    "spark_config_from_args",
]

log = logging.getLogger(__name__)


def kind_module(kind: str) -> ModuleType:
    """Import ``pipeline.convert.<kind>`` (it must define ``add_arguments``,
    ``options_from_args`` and ``convert_<kind>``)."""
    return importlib.import_module(f"pipeline.convert.{kind}")


def configure_parser(parser: argparse.ArgumentParser, kind: str) -> argparse.ArgumentParser:
    """Add SRC, DEST, the common flags and the kind's flags to ``parser``."""
    add_common_arguments(parser)
    kind_module(kind).add_arguments(parser.add_argument_group(f"{kind} options"))
    return parser


def build_kind_parser(kind: str, prog: str | None = None) -> argparse.ArgumentParser:
    """A stand-alone parser for ``jobs/convert_<kind>.py`` (same flags as ``pipeline convert``)."""
    module = kind_module(kind)
    parser = argparse.ArgumentParser(
        prog=prog or f"convert_{kind}.py",
        description=(module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None,
    )
    return configure_parser(parser, kind)


def spark_config_from_args(args: argparse.Namespace) -> Any:
    """``conf/spark.yaml`` < ``spark:`` section of ``--config`` < ``--master`` (or spark-submit's)."""
    from pipeline.spark import SparkConfig, submitted_master

    master = args.master or submitted_master()
    return load_options(
        SparkConfig, "spark.yaml", config_path=args.config, section="spark", overrides={"master": master}
    )


def run_from_args(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one conversion for parsed arguments; prints the summary, returns the ``--json`` dict."""
    from pipeline.spark import spark_session

    module = kind_module(kind)
    settings = load_settings(args)
    options = module.options_from_args(args)
    check_destination(args.dest, overwrite=settings.overwrite, source=args.src)  # before any work starts
    convert = getattr(module, f"convert_{kind}")
    with spark_session(spark_config_from_args(args)) as spark:
        result = convert(spark, args.src, args.dest, options, settings=settings)
    if not getattr(args, "json", False):
        print(result.summary())
    return result.to_dict()


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """Signal handler: turn SIGTERM into KeyboardInterrupt so that staging is cleaned up."""
    raise KeyboardInterrupt(f"signal {signum}")


def job_main(kind: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jobs/convert_<kind>.py``; exit codes as the CLI (0, 2 user error, 130)."""
    parser = build_kind_parser(kind)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "petastorm", "pyspark"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, raise_interrupt)  # clean up the staging folder on `kill`
    try:
        result = run_from_args(kind, args)
    except PipelineError as exc:
        print(f"error: {textwrap.fill(str(exc), width=100)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, default=str, sort_keys=True))
    return 0
