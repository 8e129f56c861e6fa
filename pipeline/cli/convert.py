"""``pipeline convert <kind> SRC DEST``: raw files -> Petastorm dataset with Spark.

One sub-command per module in :data:`KINDS`; each module ``pipeline.convert.<kind>`` supplies its
flags and its library call (see :mod:`pipeline.convert.common`), the common flags and the run
itself come from :mod:`pipeline.convert.runner`, exactly as for ``jobs/convert_<kind>.py``.
"""

from __future__ import annotations

import argparse
import functools
import signal
import threading
from typing import Any

from pipeline.convert.runner import configure_parser, kind_module, raise_interrupt, run_from_args

__all__ = ["KINDS", "register"]

# Conversion kinds, in the order `pipeline convert --help` lists them.
KINDS = ("images", "text", "hdf5", "table")


def _handler(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    # `kill PID` becomes KeyboardInterrupt, so the staging folder is removed and DEST never appears.
    if threading.current_thread() is not threading.main_thread():
        return run_from_args(kind, args)
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        return run_from_args(kind, args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert images, text or HDF5 into a Petastorm dataset with Spark",
        description="Convert raw files into a Petastorm dataset (Parquet + Unischema) with Spark. "
        "DEST appears only when the whole job succeeded.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind in KINDS:
        module = kind_module(kind)
        doc = (module.__doc__ or kind).strip().splitlines()[0]
        sub = kinds.add_parser(kind, help=doc, description=doc)
        configure_parser(sub, kind)
        sub.set_defaults(handler=functools.partial(_handler, kind))
