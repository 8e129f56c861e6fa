"""``pipeline convert <kind> SRC DEST``: raw files or a Spark table -> a dataset, with Spark.

Each kind has its flags and their mapping onto the kind's options dataclass in
:mod:`pipeline.cli.convert_kinds`; the library call is ``pipeline.convert.<kind>.convert_<kind>``. Layers, each
over the one before: ``conf/convert.yaml`` and ``conf/convert_<kind>.yaml``; the ``convert:`` and
``<kind>:`` sections of ``--config FILE``; the flags. Before Spark starts, SRC, DEST and Java are
checked and every problem found is reported in one paragraph. Spark then starts in a background
thread while the kind's ``prepare`` step (images: listing SRC) runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import importlib
import os
from typing import Any

from pipeline.cli.app import add_json_flag
from pipeline.cli.convert_kinds import HELP, KINDS
from pipeline.cli.flags import ConfDefaults, add_config_flag, add_master_flag
from pipeline.errors import InputError, PipelineError

__all__ = [
    "KINDS",
    "configure_parser",
    "options_from_args",
    "register",
    "run_conversion",
    "settings_from_args",
]


def _common_flags(parser: argparse.ArgumentParser, d: ConfDefaults) -> None:
    g = parser.add_argument_group("common conversion options")
    g.add_argument(
        "--overwrite", action="store_true", default=None, help=d.help("replace an existing DEST", "overwrite")
    )
    g.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default=None,
        help=d.help("bad input: fail names the file; skip lists it in DEST/_skipped.jsonl", "on_error"),
    )
    g.add_argument(
        "--row-group-mb", type=int, default=None, help=d.help("Parquet row-group size in MB", "row_group_mb")
    )
    g.add_argument(
        "--compression",
        choices=("auto", "none", "snappy", "gzip", "zstd"),
        default=None,
        help=d.help("Parquet codec", "compression"),
    )
    g.add_argument(
        "--partitions",
        type=int,
        default=None,
        help=d.help("Spark tasks / output files (none: auto)", "partitions"),
    )
    add_master_flag(g)
    add_config_flag(g, "convert, spark and " + "/".join(KINDS))
    add_json_flag(g)


def configure_parser(parser: argparse.ArgumentParser, kind: str) -> argparse.ArgumentParser:
    """Add SRC, DEST, the common flags and the kind's flags (defaults shown from ``conf/``)."""
    spec = KINDS[kind]
    parser.add_argument("src", metavar="SRC", help=spec.src_help)
    parser.add_argument("dest", metavar="DEST", help="output dataset folder, file:// or s3:// URL")
    _common_flags(parser, ConfDefaults("pipeline.convert.common:ConvertConfig", "convert.yaml"))
    spec.add_flags(parser.add_argument_group(f"{kind} options"), ConfDefaults(spec.options, spec.conf))
    return parser


def _check_source(src: str) -> str | None:
    from pipeline.storage import is_remote

    if is_remote(src) or ("://" in src and not src.startswith("file://")):
        return None  # listed (and reported) by the conversion itself
    path = src[len("file://") :] if src.startswith("file://") else src
    path = os.path.expanduser(path)
    if glob.has_magic(path):
        return None if glob.glob(path, recursive=True) else f"SRC {src!r} matches no file"
    return None if os.path.exists(path) else f"SRC {src!r} does not exist"


def preflight(args: argparse.Namespace, kind: str, overwrite: bool) -> None:
    """SRC, DEST and Java, checked before Spark starts; all problems in one paragraph.

    Raises:
        PipelineError: At least one check failed.
    """
    from pipeline.convert.staging import check_destination
    from pipeline.spark import check_java

    problems: list[str] = []
    hints: list[str] = []
    if KINDS[kind].src_is_path(args):
        missing = _check_source(args.src)
        if missing:
            problems.append(missing)
            hints.append("check the path (a glob needs quotes in the shell)")
    source = args.src if KINDS[kind].src_is_path(args) else None
    for check in (
        lambda: check_destination(args.dest, overwrite=overwrite, source=source),
        lambda: None if os.environ.get("PYSPARK_GATEWAY_PORT") else check_java(),
    ):
        try:
            check()
        except PipelineError as exc:
            problems.append(exc.message)
            if exc.hint:
                hints.append(exc.hint)
    if problems:
        raise InputError("; ".join(problems), hint="; ".join(hints) or None)


def settings_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~pipeline.convert.common.ConvertConfig`: conf/convert.yaml < ``convert:`` of ``--config`` < flags."""
    from pipeline.config import load_options
    from pipeline.convert.common import ConvertConfig

    return load_options(
        ConvertConfig,
        "convert.yaml",
        config_path=args.config,
        section="convert",
        overrides={
            "overwrite": args.overwrite,
            "on_error": args.on_error,
            "row_group_mb": args.row_group_mb,
            "compression": args.compression,
            "partitions": args.partitions,
        },
    )


def options_from_args(kind: str, args: argparse.Namespace) -> Any:
    """The kind's options: conf/convert_<kind>.yaml < ``<kind>:`` of ``--config`` < flags."""
    from pipeline.config import load_options

    spec = KINDS[kind]
    return load_options(
        spec.options_class(), spec.conf, config_path=args.config, section=kind, overrides=spec.overrides(args)
    )


def run_conversion(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Check, start Spark, convert; prints the summary unless ``--json``; returns the JSON dict."""
    from pipeline.spark import load_spark_config, spark_session_in_background

    settings = settings_from_args(args)
    options = options_from_args(kind, args)
    preflight(args, kind, settings.overwrite)
    spark_config = load_spark_config(args.config, master=args.master)
    if kind == "table":  # the work runs in the JVM: it wants the full JIT (quick_jvm slows it 2-3x)
        spark_config = dataclasses.replace(spark_config, quick_jvm=False)
    # Spark (a JVM: seconds) starts in a thread while this one imports the kind and lists SRC
    with spark_session_in_background(spark_config) as starting:
        convert = getattr(importlib.import_module(f"pipeline.convert.{kind}"), f"convert_{kind}")
        prepare = KINDS[kind].prepare
        prepared = prepare(args) if prepare is not None else {}
        result = convert(starting.result(), args.src, args.dest, options, settings=settings, **prepared)
    if not args.json:
        print(result.summary())
    return result.to_dict()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert images, text, HDF5 or a Spark table into a dataset with Spark",
        description="Convert raw files or a Spark table into a dataset (Parquet + schema) with Spark. "
        "DEST appears only when the whole job succeeded.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind in KINDS:
        sub = kinds.add_parser(
            kind,
            help=HELP[kind],
            description=HELP[kind] + ". Defaults shown come from conf/.",
        )
        configure_parser(sub, kind)
        sub.set_defaults(handler=functools.partial(run_conversion, kind))
