"""Flags and argument types shared by the commands, and ``--help`` defaults read from ``conf/``."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

__all__ = ["ConfDefaults", "HelpFormatter", "add_config_flag", "add_master_flag", "comma_names", "size"]


class ConfDefaults:
    """The defaults of one options dataclass as ``conf/<file>`` sets them, for ``--help`` texts.

    Args:
        cls: ``"module:Class"`` of the dataclass (imported on first use).
        conf_file: Its file in ``conf/``, e.g. ``"convert.yaml"``.
    """

    def __init__(self, cls: str, conf_file: str) -> None:
        self.cls = cls
        self.conf_file = conf_file
        self._values: Any = None

    def value(self, field: str) -> Any:
        if self._values is None:
            from pipeline.config import load_config

            module, name = self.cls.split(":")
            self._values = load_config(getattr(importlib.import_module(module), name), self.conf_file)
        value = self._values
        for part in field.split("."):
            value = getattr(value, part)
        return value

    def help(self, text: str, field: str) -> str:
        """``text``; ``--help`` (:class:`HelpFormatter`) adds the ``conf/`` default of ``field``.

        The default is read when help is printed, so that building the parser imports nothing.
        """
        return _ConfHelp(text, self, field)

    def describe(self, field: str) -> str:
        """`` (default: X, conf/FILE)`` for ``field``."""
        value = self.value(field)
        if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
            shown = f"{value[0]}x{value[1]}"
        elif isinstance(value, tuple):
            shown = ",".join(map(str, value))
        elif isinstance(value, bool):
            shown = str(value).lower()
        else:
            shown = "none" if value is None else str(value)
        return f" (default: {shown.replace('%', '%%')}, conf/{self.conf_file})"


class _ConfHelp(str):
    """A help text that knows which ``conf/`` default to show after it."""

    def __new__(cls, text: str, defaults: ConfDefaults, field: str) -> _ConfHelp:
        self = super().__new__(cls, text)
        self.defaults = defaults
        self.field = field
        return self


class HelpFormatter(argparse.HelpFormatter):
    """Shows each flag's default from ``conf/`` (read when ``--help`` is printed)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if isinstance(text, _ConfHelp):
            return str(text) + text.defaults.describe(text.field)
        return text


def add_master_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--master",
        default=None,
        metavar="URL",
        help="Spark master URL (default: spark-submit's --master, else master of conf/spark.yaml)",
    )


def add_config_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, sections: str) -> None:
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help=f"YAML laid over conf/*.yaml, one section per file it changes ({sections}); flags win",
    )


def size(text: str) -> tuple[int, int]:
    """``--size HxW`` (or ``N`` for a square)."""
    from pipeline.convert.common import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def comma_names(text: str) -> tuple[str, ...]:
    """``A,B`` -> ``("A", "B")``."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names
