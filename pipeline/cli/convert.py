"""``pipeline convert <kind> SRC DEST``: raw files or a Spark table -> a dataset, with Spark.

Each kind has its flags and their mapping onto the kind's options dataclass here
(:data:`KINDS`); the library call is ``pipeline.convert.<kind>.convert_<kind>``. Layers, each
over the one before: ``conf/convert.yaml`` and ``conf/convert_<kind>.yaml``; the ``convert:`` and
``<kind>:`` sections of ``--config FILE``; the flags. Before Spark starts, SRC, DEST and Java are
checked and every problem found is reported in one paragraph.
"""

from __future__ import annotations

import argparse
import functools
import glob
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.cli.app import add_json_flag
from pipeline.cli.flags import ConfDefaults, add_config_flag, add_master_flag, comma_names, size
from pipeline.errors import InputError, PipelineError

__all__ = [
    "KINDS",
    "configure_parser",
    "options_from_args",
    "register",
    "run_conversion",
    "settings_from_args",
]


@dataclass(frozen=True)
class Kind:
    """One conversion kind: its options class, conf file, ``--config`` section and flags."""

    options: str
    """``module:Class`` of the options dataclass."""
    conf: str
    add_flags: Callable[[argparse._ActionsContainer, ConfDefaults], None]
    overrides: Callable[[argparse.Namespace], dict[str, Any]]
    src_help: str
    src_is_path: Callable[[argparse.Namespace], bool] = lambda args: True

    def options_class(self) -> type:
        module, name = self.options.split(":")
        return getattr(importlib.import_module(module), name)


def _images_flags(p: argparse._ActionsContainer, d: ConfDefaults) -> None:
    p.add_argument("--size", type=size, default=None, metavar="HxW", help=d.help("fixed output size", "size"))
    p.add_argument(
        "--fit",
        choices=("center-crop", "resize", "pad"),
        default=None,
        help=d.help("how to fit --size", "fit"),
    )
    p.add_argument(
        "--encoding",
        choices=("auto", "png", "jpeg"),
        default=None,
        help=d.help("stored encoding", "encoding"),
    )
    p.add_argument("--quality", type=int, default=None, help=d.help("JPEG quality 1-100", "jpeg_quality"))
    p.add_argument(
        "--jpeg-draft",
        action="store_true",
        default=None,
        help=d.help(
            "decode big JPEGs at 1/2-1/8 scale before resizing (faster, pixels differ slightly)", "jpeg_draft"
        ),
    )
    p.add_argument(
        "--split",
        default=None,
        metavar="NAME=FRACTION,...",
        help=d.help(
            "one dataset per split under DEST, stratified by class, e.g. train=0.8,heldout=0.2", "split"
        ),
    )
    p.add_argument("--seed", type=int, default=None, help=d.help("seed of --split's random order", "seed"))


def _text_flags(p: argparse._ActionsContainer, d: ConfDefaults) -> None:
    p.add_argument(
        "--seq-len", type=int, default=None, metavar="N", help=d.help("pack into rows of N tokens", "seq_len")
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        metavar="bytes|PATH",
        help=d.help("bytes or a tokenizer.json file", "tokenizer"),
    )
    p.add_argument(
        "--eod-token", default=None, help=d.help("end-of-document token of a tokenizer file", "eod_token")
    )
    p.add_argument(
        "--split",
        choices=("file", "lines"),
        default=None,
        help=d.help(".txt: one document per file or per line", "split"),
    )
    p.add_argument("--text-field", default=None, help=d.help("text key of .jsonl records", "text_field"))
    p.add_argument(
        "--errors",
        choices=("strict", "replace"),
        default=None,
        help=d.help("invalid UTF-8: bad input or U+FFFD", "errors"),
    )


def _hdf5_flags(p: argparse._ActionsContainer, d: ConfDefaults) -> None:
    p.add_argument(
        "--datasets",
        type=comma_names,
        default=None,
        metavar="A,B",
        help=d.help(
            "datasets to convert, e.g. /images,/meta/label (none: all of equal first-axis length)", "datasets"
        ),
    )
    p.add_argument(
        "--slice-mb", type=float, default=None, help=d.help("MB per HDF5 read in a task", "slice_mb")
    )


def _table_flags(p: argparse._ActionsContainer, d: ConfDefaults) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument("--sql", action="store_true", help="SRC is a SQL query")
    source.add_argument("--parquet", action="store_true", help="SRC is a Parquet file or folder")
    p.add_argument(
        "--float32", action="store_true", default=None, help=d.help("store doubles as float32", "float32")
    )
    p.add_argument(
        "--image-column",
        default=None,
        metavar="COL",
        help=d.help("binary column of JPEG/PNG images", "image_column"),
    )
    p.add_argument(
        "--image-size", type=size, default=None, metavar="HxW", help=d.help("fixed image size", "image_size")
    )
    p.add_argument(
        "--image-fit",
        choices=("center-crop", "resize", "pad"),
        default=None,
        help=d.help("how to fit --image-size", "image_fit"),
    )
    p.add_argument(
        "--decimal",
        choices=("float64", "error"),
        default=None,
        help=d.help("decimals: store as double or refuse", "decimal"),
    )
    p.add_argument(
        "--null-floats",
        choices=("error", "nan"),
        default=None,
        help=d.help("null float scalars: bad input or NaN", "null_floats"),
    )


KINDS: dict[str, Kind] = {
    "images": Kind(
        "pipeline.convert.images:ImageOptions",
        "convert_images.yaml",
        _images_flags,
        lambda a: {
            "size": a.size,
            "fit": a.fit,
            "encoding": a.encoding,
            "jpeg_quality": a.quality,
            "jpeg_draft": a.jpeg_draft,
            "split": a.split,
            "seed": a.seed,
        },
        "image folder (sub-folders = classes), flat folder, or .csv/.jsonl manifest",
    ),
    "text": Kind(
        "pipeline.convert.text:TextOptions",
        "convert_text.yaml",
        _text_flags,
        lambda a: {
            "seq_len": a.seq_len,
            "tokenizer": a.tokenizer,
            "eod_token": a.eod_token,
            "split": a.split,
            "text_field": a.text_field,
            "errors": a.errors,
        },
        "folder or glob of .txt / .jsonl files",
    ),
    "hdf5": Kind(
        "pipeline.convert.hdf5:Hdf5Options",
        "convert_hdf5.yaml",
        _hdf5_flags,
        lambda a: {"datasets": a.datasets, "slice_mb": a.slice_mb},
        "HDF5 file, folder or glob",
    ),
    "table": Kind(
        "pipeline.convert.table:TableOptions",
        "convert_table.yaml",
        _table_flags,
        lambda a: {
            "float32": a.float32,
            "image_column": a.image_column,
            "image_size": a.image_size,
            "image_fit": a.image_fit,
            "decimal": a.decimal,
            "null_floats": a.null_floats,
            "read_as": "sql" if a.sql else "parquet" if a.parquet else None,
        },
        "table name, SQL query (--sql) or Parquet path (--parquet)",
        src_is_path=lambda a: a.parquet,
    ),
}
"""Conversion kinds, in the order ``pipeline convert --help`` lists them."""

_HELP = {
    "images": "images (folder, flat folder or manifest) -> dataset of RGB images",
    "text": ".txt / .jsonl corpus -> dataset of token ids",
    "hdf5": "HDF5 file(s) -> dataset, one row per first-axis index",
    "table": "Spark table, SQL query or Parquet -> dataset",
}


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
    from pipeline.spark import load_spark_config, spark_session

    settings = settings_from_args(args)
    options = options_from_args(kind, args)
    preflight(args, kind, settings.overwrite)
    convert = getattr(importlib.import_module(f"pipeline.convert.{kind}"), f"convert_{kind}")
    with spark_session(load_spark_config(args.config, master=args.master)) as spark:
        result = convert(spark, args.src, args.dest, options, settings=settings)
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
            help=_HELP[kind],
            description=_HELP[kind] + ". Defaults shown come from conf/.",
        )
        configure_parser(sub, kind)
        sub.set_defaults(handler=functools.partial(run_conversion, kind))
