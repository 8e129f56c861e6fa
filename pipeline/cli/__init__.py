"""The ``pipeline`` command line: ``pipeline <command> ... [--json]``.

Each sub-command lives in its own module with a ``register(subparsers)`` function that adds
its parser and sets ``handler``: a callable taking the parsed arguments and returning the
result as a JSON-able ``dict``. The handler prints its human-readable report itself; with
``--json`` this module prints the result as the last line of stdout.

User errors (:class:`~pipeline.errors.PipelineError`) become one paragraph on stderr and exit
status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import textwrap
from collections.abc import Sequence

from pipeline import __version__
from pipeline.errors import PipelineError
from pipeline.quiet import quiet_third_party_warnings

__all__ = ["build_parser", "main"]

# Sub-command modules under pipeline.cli, in the order `pipeline --help` lists them.
COMMANDS = ("inspect", "convert", "bench", "cache")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Spark -> Petastorm -> PyTorch: convert raw data to datasets, inspect and read them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"pipeline.cli.{name}").register(subparsers)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if verbose < 2:
        for noisy in ("py4j", "petastorm", "pyspark", "matplotlib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (also the console script's entry point)."""
    quiet_third_party_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        result = args.handler(args)
    except PipelineError as exc:
        print(f"error: {textwrap.fill(str(exc), width=100)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if getattr(args, "json", False):
        print(json.dumps(result, default=str, sort_keys=True))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
