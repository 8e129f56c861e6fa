"""The ``pipeline`` command line: ``pipeline [-v|-q] <command> ... [--json]``.

Each command lives in its own module with a ``register(subparsers)`` function that adds its
parser and sets ``handler`` (``args -> dict``, the ``--json`` result; it prints its
human-readable report itself unless ``--json``). :func:`main` parses, sets up logging and hands
the handler to the one runner, :func:`pipeline.cli.app.run`: signals, exit codes and output are
the same for every command and for the ``jobs/*.py`` scripts, which call :func:`main` too.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pipeline import __version__
from pipeline.cli.app import add_verbosity_flags, configure_logging, run
from pipeline.cli.flags import HelpFormatter
from pipeline.quiet import quiet_third_party_warnings

__all__ = ["COMMANDS", "build_parser", "main"]

# Command modules under pipeline.cli, in the order `pipeline --help` lists them.
COMMANDS = ("convert", "train", "demo", "inspect", "bench", "cache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Spark -> Parquet -> PyTorch: convert raw data to datasets with Spark, inspect and "
        "read them, train on them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_verbosity_flags(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"pipeline.cli.{name}").register(subparsers)
    for leaf in leaf_parsers(parser):
        add_verbosity_flags(leaf, default=argparse.SUPPRESS)  # `pipeline convert images ... -q` too
        leaf.set_defaults(parser=leaf)
        leaf.formatter_class = HelpFormatter  # flags show their conf/ defaults
    return parser


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that run a command (``pipeline convert images``, ``pipeline inspect``, ...)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [
        leaf
        for action in subs
        for child in dict.fromkeys(action.choices.values())
        for leaf in leaf_parsers(child)
    ]


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; an unknown flag is reported with the usage of the sub-command it was given to."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        leaf = getattr(args, "parser", None) or parser
        leaf.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (also the console script's entry point)."""
    quiet_third_party_warnings()  # the named ones, from the start; -v/-q decide about the rest
    args = _parse(build_parser(), argv)
    configure_logging(args.verbose, args.quiet)
    return run(args.handler, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
