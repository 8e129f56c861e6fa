"""The conversion kinds of ``pipeline convert``: each one's options class, conf file and flags."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.cli.flags import ConfDefaults, comma_names, size

__all__ = ["HELP", "KINDS", "Kind"]


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
    prepare: Callable[[argparse.Namespace], dict[str, Any]] | None = None
    """Work that needs no Spark (listing SRC), done while Spark starts; its result is passed to
    ``convert_<kind>`` as keyword arguments."""

    def options_class(self) -> type:
        module, name = self.options.split(":")
        return getattr(importlib.import_module(module), name)


FITS = ("center-crop", "resize", "pad")
"""``--fit`` / ``--image-fit`` (``pipeline.convert.imaging.FITS``; not imported here: it loads Pillow)."""


def _choice(
    p: argparse._ActionsContainer, d: ConfDefaults, flag: str, choices: tuple[str, ...], text: str, field: str
) -> None:
    p.add_argument(flag, choices=choices, default=None, help=d.help(text, field))


def _images_flags(p: argparse._ActionsContainer, d: ConfDefaults) -> None:
    p.add_argument("--size", type=size, default=None, metavar="HxW", help=d.help("fixed output size", "size"))
    _choice(p, d, "--fit", FITS, "how to fit --size", "fit")
    _choice(p, d, "--encoding", ("auto", "png", "jpeg"), "stored encoding", "encoding")
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
    _choice(p, d, "--split", ("file", "lines"), ".txt: one document per file or per line", "split")
    p.add_argument("--text-field", default=None, help=d.help("text key of .jsonl records", "text_field"))
    _choice(p, d, "--errors", ("strict", "replace"), "invalid UTF-8: bad input or U+FFFD", "errors")


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
    _choice(p, d, "--image-fit", FITS, "how to fit --image-size", "image_fit")
    _choice(p, d, "--decimal", ("float64", "error"), "decimals: store as double or refuse", "decimal")
    _choice(p, d, "--null-floats", ("error", "nan"), "null float scalars: bad input or NaN", "null_floats")


def _list_images(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.convert.image_sources import find_images

    return {"source": find_images(args.src)}


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
        prepare=_list_images,
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

HELP = {
    "images": "images (folder, flat folder or manifest) -> dataset of RGB images",
    "text": ".txt / .jsonl corpus -> dataset of token ids",
    "hdf5": "HDF5 file(s) -> dataset, one row per first-axis index",
    "table": "Spark table, SQL query or Parquet -> dataset",
}
