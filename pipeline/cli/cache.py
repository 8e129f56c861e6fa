"""``pipeline cache list|clear``: the DataFrames that ``pipeline.spark_dataset`` converted and kept."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from pipeline.cli.app import add_json_flag
from pipeline.units import human_bytes

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cache",
        help="list or clear the datasets cached by pipeline.spark_dataset",
        description="List or remove the converted DataFrames kept by `pipeline.spark_dataset`. The "
        "folder is --cache-dir, else `cache_dir` of conf/cache.yaml.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("list", "show the cached datasets"), ("clear", "remove cached datasets")):
        sub = actions.add_parser(name, help=text, description=text)
        if name == "clear":
            sub.add_argument("keys", nargs="*", metavar="KEY", help="keys to remove (default: all)")
        sub.add_argument(
            "--cache-dir", default=None, metavar="DIR", help="cache folder (default conf/cache.yaml)"
        )
        add_json_flag(sub)
        sub.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.convert.handle import cache_entries, clear_cache, resolve_cache_dir

    root = resolve_cache_dir(args.cache_dir)
    if args.action == "clear":
        removed = clear_cache(root, args.keys or None)
        if not args.json:
            print(f"removed {len(removed)} cached dataset(s) from {root}")
        return {"cache_dir": str(root), "removed": removed}
    entries = cache_entries(root)
    if not args.json:
        print(f"cache {root}: {len(entries)} dataset(s), {human_bytes(sum(e.bytes for e in entries))}")
        for e in entries:
            rows = "?" if e.rows is None else f"{e.rows:,}"
            print(
                f"  {e.key}  {rows:>12} rows  {human_bytes(e.bytes):>10}  {e.created or '?'}  {e.source or '?'}"
            )
    return {
        "cache_dir": str(root),
        "entries": [dataclasses.asdict(e) for e in entries],
        "bytes": sum(e.bytes for e in entries),
    }
