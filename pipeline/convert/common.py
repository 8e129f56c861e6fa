"""What every conversion shares: settings, flags, the bad-input policy and the result.

Each kind lives in ``pipeline/convert/<kind>.py`` and follows one protocol, so that
``pipeline convert <kind>``, ``jobs/convert_<kind>.py`` and notebooks behave the same:

* ``add_arguments(parser)`` adds the kind's own flags. ``SRC``, ``DEST`` and the common flags
  (:func:`add_common_arguments`) are added by the framework, never by the kind.
* ``options_from_args(args)`` maps parsed flags to the kind's frozen options dataclass,
  usually with :func:`load_options` (``conf/convert_<kind>.yaml`` < ``--config`` < flags).
* ``convert_<kind>(spark, src, dest, options=None, *, settings=None) -> ConversionResult`` is the
  library call; ``settings`` is a :class:`ConvertConfig` (``conf/convert.yaml``). It plans the
  work and hands it to :func:`pipeline.convert.writer.write_petastorm`.

Bad input is handled inside Spark tasks through :class:`RecordErrors`: a kind calls
``errors.bad(source, reason, record=...)`` for each bad file or record and carries on; with
``on_error="skip"`` it is counted and listed in ``DEST/_skipped.jsonl``. With ``"fail"`` that call
raises :class:`BadInput`, which the framework catches in the task (a kind must let it propagate:
never call ``errors.bad`` inside a ``try`` that catches ``Exception``); the task ends without an
exception into Spark (no JVM stack trace, no retries), other tasks stop at their next batch,
and the driver raises one clean :class:`~pipeline.errors.InputError` naming the input.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from pipeline.config import from_mapping, load_config
from pipeline.errors import ConfigError
from pipeline.units import human_bytes

__all__ = [
    "COMPRESSIONS",
    "BadInput",
    "ConversionResult",
    "ConvertConfig",
    "RecordErrors",
    "SkippedRecord",
    "add_common_arguments",
    "load_options",
    "load_settings",
    "parse_size",
]

T = TypeVar("T")

COMPRESSIONS = ("auto", "none", "snappy", "gzip", "zstd")
"""Parquet compression codecs that Spark writes and pyarrow, petastorm and DuckDB read; ``auto``
lets the kind choose (``none`` for already-compressed images, ``snappy`` otherwise)."""


@dataclass(frozen=True)
class ConvertConfig:
    """Settings shared by every conversion (``conf/convert.yaml``)."""

    row_group_mb: int = 16
    """Target Parquet row-group size in MB: the unit a reader fetches and shuffles. Defaults to ``16``."""
    compression: Literal["auto", "none", "snappy", "gzip", "zstd"] = "auto"
    """Parquet compression codec; ``auto`` = the kind's choice (images: ``none``, since JPEG/PNG
    bytes do not compress further; others: ``snappy``). Defaults to ``"auto"``."""
    on_error: Literal["fail", "skip"] = "fail"
    """Bad input: ``fail`` stops naming the file, ``skip`` skips and lists it. Defaults to ``"fail"``."""
    overwrite: bool = False
    """Replace an existing DEST (only once the new dataset is complete). Defaults to ``False``."""
    file_mb: int = 256
    """Input MB per Spark task and output file when ``partitions`` is not set. Defaults to ``256``."""
    partitions: int | None = None
    """Exact number of Spark tasks (= at most that many output files). Defaults to ``None``
    (auto: input bytes / ``file_mb``, at least Spark's default parallelism)."""

    def __post_init__(self) -> None:
        if self.row_group_mb < 1:
            raise ConfigError(f"row_group_mb must be >= 1, got {self.row_group_mb}")
        if self.file_mb < 1:
            raise ConfigError(f"file_mb must be >= 1, got {self.file_mb}")
        if self.partitions is not None and self.partitions < 1:
            raise ConfigError(f"partitions must be >= 1, got {self.partitions}")


@dataclass(frozen=True)
class SkippedRecord:
    """One bad input: the file (and record inside it, if any) and why it was rejected."""

    source: str
    reason: str
    record: str | int | None = None

    def describe(self) -> str:
        where = self.source if self.record is None else f"{self.source} (record {self.record})"
        return f"{where}: {self.reason}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class BadInput(Exception):
    """Raised inside a Spark task by :meth:`RecordErrors.bad` when ``on_error`` is ``fail``."""

    def __init__(self, record: SkippedRecord) -> None:
        super().__init__(record.describe())
        self.record = record


class RecordErrors:
    """The bad-input policy as seen by a kind's partition function (runs in executors).

    Args:
        on_error: ``"fail"`` or ``"skip"``.
    """

    def __init__(self, on_error: str) -> None:
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped: list[SkippedRecord] = []

    def bad(self, source: str, reason: str, record: str | int | None = None) -> None:
        """Report one bad file or record: raises :class:`BadInput` (fail) or records it (skip)."""
        item = SkippedRecord(str(source), str(reason), record)
        if self.on_error == "fail":
            raise BadInput(item)
        self.skipped.append(item)


@dataclass(frozen=True)
class ConversionResult:
    """What a conversion wrote; ``to_dict()`` is the ``--json`` output."""

    kind: str
    source: str
    output: str
    """URL of the dataset (``file:///...``)."""
    rows: int
    skipped: int
    input_bytes: int
    output_bytes: int
    files: int
    row_groups: int
    seconds: float
    skipped_report: str | None = None
    """Path of ``_skipped.jsonl`` inside the dataset, when records were skipped."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Kind-specific facts (class names, tokenizer, dropped tail tokens, ...)."""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows_per_s"] = round(self.rows_per_s, 1)
        out["seconds"] = round(self.seconds, 3)
        return out

    def summary(self) -> str:
        """A few human-readable lines, printed by the CLI and logged by the library."""
        lines = [
            f"converted {self.kind} {self.source} -> {self.output}",
            f"  rows {self.rows:,}  skipped {self.skipped:,}  in {self.seconds:.1f} s "
            f"({self.rows_per_s:,.0f} rows/s)",
            f"  input {human_bytes(self.input_bytes)}  output {human_bytes(self.output_bytes)} in "
            f"{self.files} file(s), {self.row_groups} row group(s)",
        ]
        facts = {
            k: v
            for k, v in self.extra.items()
            if isinstance(v, (int, float, str)) and not isinstance(v, bool)
        }
        if facts:
            lines.append(
                "  " + "  ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in facts.items())
            )
        if self.skipped_report:
            lines.append(f"  skipped records listed in {self.skipped_report}")
        return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"HxW"`` (or a single ``"N"`` for a square) into ``(height, width)``."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = (values[0], values[0])
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"size must be HxW with positive integers, e.g. 224x224; got {text!r}"
        )
    return values  # type: ignore[return-value]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``SRC``, ``DEST`` and the flags every kind shares (CLI and ``jobs/`` alike).

    Flags left out are ``None`` so that config files keep their values (see :func:`load_settings`).
    """
    parser.add_argument("src", metavar="SRC", help="input file, folder, glob or manifest")
    parser.add_argument("dest", metavar="DEST", help="output dataset folder or file:// URL")
    g = parser.add_argument_group("common conversion options")
    g.add_argument("--overwrite", action="store_true", default=None, help="replace an existing DEST")
    g.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default=None,
        help="bad input: fail (default) stops naming the file; skip lists it in DEST/_skipped.jsonl",
    )
    g.add_argument("--master", default=None, help="Spark master URL (default: conf/spark.yaml, local[*])")
    g.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="YAML with optional sections `convert`, `spark` and one per kind; overrides conf/*.yaml",
    )
    g.add_argument("--row-group-mb", type=int, default=None, help="Parquet row-group size in MB (default 16)")
    g.add_argument("--compression", choices=COMPRESSIONS, default=None, help="Parquet codec (default auto)")
    g.add_argument(
        "--partitions", type=int, default=None, help="number of Spark tasks / output files (default auto)"
    )
    g.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")


def _config_file_section(config_path: str | None, section: str) -> tuple[dict[str, Any], str]:
    if not config_path:
        return {}, ""
    path = Path(config_path)
    if not path.is_file():
        raise ConfigError(f"config file {config_path!r} does not exist", hint="check the --config path")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path}: expected a mapping with sections such as `convert:`")
    values = raw.get(section) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{config_path}: section {section!r} must be a mapping")
    return values, f"{config_path}: section {section!r}"


def load_options(
    cls: type[T],
    default_file: str,
    *,
    config_path: str | os.PathLike[str] | None = None,
    section: str,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from ``conf/<default_file>``, then ``section`` of ``--config``, then flags.

    Args:
        cls: A frozen dataclass (the kind's options or :class:`ConvertConfig`).
        default_file: Bare file name in ``conf/``, e.g. ``"convert_images.yaml"``.
        config_path: The ``--config`` file, if any. Defaults to ``None``.
        section: Section of the ``--config`` file for ``cls``, e.g. ``"images"``.
        overrides: Parsed flags; ``None`` values mean "not given". Defaults to ``None``.

    Raises:
        ConfigError: A file or key is invalid; the message names the file and key.
    """
    values, where = _config_file_section(os.fspath(config_path) if config_path else None, section)
    if values:
        from_mapping(cls, values, source=where)  # validate here so errors name the --config file
    merged = {**values, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return load_config(cls, default_file, overrides=merged)


def load_settings(args: argparse.Namespace) -> ConvertConfig:
    """The :class:`ConvertConfig` for parsed common flags (``conf/convert.yaml`` < ``--config`` < flags)."""
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
