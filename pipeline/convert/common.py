"""What every conversion shares: settings, the bad-input policy and the result.

Each kind lives in ``pipeline/convert/<kind>.py`` and offers one library call,
``convert_<kind>(spark, src, dest, options=None, *, settings=None) -> ConversionResult``, where
``options`` is the kind's frozen options dataclass (``conf/convert_<kind>.yaml``) and ``settings``
a :class:`ConvertConfig` (``conf/convert.yaml``). It plans the work and hands it to
:func:`pipeline.convert.writer.write_petastorm`. The command line over these calls (flags,
``--config``, the checks before Spark starts) is :mod:`pipeline.cli.convert`.

Bad input is handled inside Spark tasks through :class:`RecordErrors`: a kind calls
``errors.bad(source, reason, record=...)`` for each bad file or record and carries on; with
``on_error="skip"`` it is counted and listed in ``DEST/_skipped.jsonl``. With ``"fail"`` that call
raises :class:`BadInput`, which the framework catches in the task (a kind must let it propagate:
never call ``errors.bad`` inside a ``try`` that catches ``Exception``); the task then fails with
:class:`~pipeline.convert.tasks.TaskFailure`, whose message carries the record, Spark stops the
job's other tasks, and the driver raises one clean :class:`~pipeline.errors.InputError` naming
the input (Spark's own report of the failed task is turned off meanwhile: no JVM stack trace).
Skipped records travel back to the driver in the tasks' result rows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pipeline.config import load_options
from pipeline.errors import ConfigError
from pipeline.units import human_bytes

__all__ = [
    "COMPRESSIONS",
    "BadInput",
    "ConversionResult",
    "ConvertConfig",
    "RecordErrors",
    "SkippedRecord",
    "load_options",
    "parse_size",
]

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
    """Parse ``"HxW"`` (or a single ``"N"`` for a square) into ``(height, width)``.

    Raises:
        ConfigError: ``text`` is not two positive integers.
    """
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = (values[0], values[0])
    if len(values) != 2 or min(values) < 1:
        raise ConfigError(f"size must be HxW with positive integers, e.g. 224x224; got {text!r}")
    return values  # type: ignore[return-value]
