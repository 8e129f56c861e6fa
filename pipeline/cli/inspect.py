"""``pipeline inspect URL``: rows, row groups, files, bytes, fields and provenance of a dataset."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from pipeline.cli.app import add_json_flag
from pipeline.units import human_bytes

if TYPE_CHECKING:
    from pipeline.inspect import DatasetInfo

__all__ = ["format_info", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="describe a Petastorm or Parquet dataset",
        description="Print rows, row groups, files, bytes on disk and each field's dtype, shape, "
        "codec and nullability; for datasets written by `pipeline convert`, also their provenance.",
    )
    p.add_argument("url", metavar="URL", help="dataset folder or URL (file://, hdfs://, s3://...)")
    add_json_flag(p)
    p.set_defaults(handler=_run)


def format_info(info: DatasetInfo) -> str:
    """The human-readable report printed by ``pipeline inspect``."""
    lines = [
        f"dataset     {info.url}",
        f"kind        {info.kind}",
        f"rows        {info.rows:,}",
        f"row groups  {info.row_groups:,}",
        f"files       {info.files:,}",
        f"size        {human_bytes(info.bytes)}",
        "fields:",
    ]
    width = max((len(n) for n in info.fields), default=4)
    for name, f in info.fields.items():
        shape = (
            "("
            + ", ".join("?" if d is None else str(d) for d in f.shape)
            + ("," if len(f.shape) == 1 else "")
            + ")"
        )
        codec = f.codec or "-"
        null = "nullable" if f.nullable else "not null"
        lines.append(f"  {name:<{width}}  {f.dtype:<8} {shape:<14} {codec:<10} {null}")
    if info.metadata:
        lines.append("metadata:")
        for key, value in info.metadata.items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            lines.append(f"  {key}: {text}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.inspect import inspect_dataset

    info = inspect_dataset(args.url)
    if not args.json:
        print(format_info(info))
    return info.to_dict()
