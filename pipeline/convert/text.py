"""Text corpora (.txt, .jsonl) -> a Petastorm dataset of token ids, tokenized in Spark tasks.

Field ``tokens``: int32, 1-D, stored as a native Parquet ``list<int32>`` (petastorm
``ScalarCodec(ArrayType(IntegerType()))``), so ``make_reader`` returns an int32 array and Spark,
pyarrow and DuckDB read a plain list column.

* Without ``--seq-len``: one row per document, its tokens only (no end-of-document token).
* With ``--seq-len N``: language-model packing. Each Spark task joins the documents of its
  partition (files in sorted path order, documents in file order) with the end-of-document
  token and cuts the stream into rows of exactly ``N`` tokens. The tail of each partition
  (fewer than ``N`` tokens) is dropped; the exact count is in the summary and provenance
  (``dropped_tail_tokens``). Packing per partition keeps tasks independent and parallel and
  bounds the loss to ``partitions * (N - 1)`` tokens; partitions are megabytes of text, so this
  is a tiny fraction (use ``--partitions 1`` for exact global packing of a small corpus).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pipeline.convert.common import ConversionResult, ConvertConfig, RecordErrors
from pipeline.convert.listing import list_source_files
from pipeline.convert.text_columns import TokenColumn
from pipeline.convert.text_docs import TEXT_SUFFIXES, BadDocument, TextPiece, iter_documents, plan_pieces
from pipeline.convert.tokenize import Tokenizer, iter_packed, load_tokenizer
from pipeline.errors import ConfigError
from pipeline.storage import open_input

__all__ = ["TextOptions", "convert_text", "text_schema"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextOptions:
    """Options of text conversion (``conf/convert_text.yaml``, section ``text`` of ``--config``)."""

    seq_len: int | None = None
    """Tokens per row with LM packing; ``None`` = one row per document. Defaults to ``None``."""
    tokenizer: str = "bytes"
    """``"bytes"`` (UTF-8 byte ids, EOD 256) or a Hugging Face tokenizer.json path. Defaults to ``"bytes"``."""
    eod_token: str | None = None
    """End-of-document token of a tokenizer file; ``None`` = first known one. Defaults to ``None``."""
    split: Literal["file", "lines"] = "file"
    """``.txt`` documents: the whole ``file`` or each of its ``lines``. Defaults to ``"file"``."""
    text_field: str = "text"
    """Key of the text in ``.jsonl`` records. Defaults to ``"text"``."""
    errors: Literal["strict", "replace"] = "strict"
    """Invalid UTF-8: ``strict`` = bad input, ``replace`` = U+FFFD. Defaults to ``"strict"``."""
    batch_mb: int = 4
    """Text tokenized per call and output batch size inside a task, in MB. Defaults to ``4``."""
    piece_mb: float | None = None
    """Byte ranges that big line-based files (``.jsonl``, ``.txt`` with ``lines``) are cut into so
    that several tasks read one file; ``None`` = input size / Spark parallelism, between 1 MB and
    ``file_mb``. Defaults to ``None``."""

    def __post_init__(self) -> None:
        if self.seq_len is not None and self.seq_len < 1:
            raise ConfigError(f"seq_len must be >= 1, got {self.seq_len}")
        if self.batch_mb < 1:
            raise ConfigError(f"batch_mb must be >= 1, got {self.batch_mb}")
        if self.piece_mb is not None and not self.piece_mb > 0:
            raise ConfigError(f"piece_mb must be > 0, got {self.piece_mb}")
        if not self.text_field:
            raise ConfigError("text_field must not be empty")


def text_schema(seq_len: int | None) -> Any:
    """The Unischema: ``tokens`` int32 of shape ``(seq_len,)``, or ``(None,)`` per document."""
    from pyspark.sql.types import ArrayType, IntegerType

    from pipeline.format import ScalarCodec, Unischema, UnischemaField

    codec = ScalarCodec(ArrayType(IntegerType(), containsNull=False))
    return Unischema("TextSchema", [UnischemaField("tokens", np.int32, (seq_len,), codec, False)])


def _documents(
    items: Sequence[TextPiece], errors: RecordErrors, options: TextOptions, tokenizer: Tokenizer, stats: Any
) -> Iterator[np.ndarray]:
    """Token arrays of every good document of ``items``, tokenized in batches of ``batch_mb``."""
    limit = options.batch_mb * 1024 * 1024
    pending: list[str] = []
    size = 0
    for item in items:
        try:
            stream = open_input(item.path)  # closed below (the generator may pause)
        except OSError as exc:
            errors.bad(item.path, f"cannot read: {exc.strerror or exc}")
            continue
        with stream:
            for doc in iter_documents(
                item.path,
                stream,
                split=options.split,
                text_field=options.text_field,
                errors=options.errors,
                start=item.start,
                stop=item.stop,
            ):
                if isinstance(doc, BadDocument):
                    errors.bad(item.path, doc.reason, record=doc.line)
                    continue
                pending.append(doc.text)
                size += len(doc.text)
                if size >= limit:
                    yield from _encode(tokenizer, pending, stats)
                    pending, size = [], 0
    yield from _encode(tokenizer, pending, stats)


def _encode(tokenizer: Tokenizer, texts: list[str], stats: Any) -> list[np.ndarray]:
    if not texts:
        return []
    encoded = tokenizer.encode_batch(texts)
    stats["documents"].add(len(encoded))
    stats["document_tokens"].add(int(sum(len(e) for e in encoded)))
    return encoded


def _process(
    items: Sequence[TextPiece],
    errors: RecordErrors,
    *,
    options: TextOptions,
    tokenizer: Tokenizer,
    stats: Mapping[str, Any],
) -> Iterator[dict[str, list[np.ndarray]]]:
    """Partition function (runs in a Spark executor): files -> batches of ``tokens`` rows."""
    budget = options.batch_mb * 1024 * 1024 // 4  # int32 tokens per output batch
    docs = _documents(items, errors, options, tokenizer, stats)
    batch: list[np.ndarray] = []
    held = 0
    if options.seq_len is None:
        rows: Iterator[np.ndarray] = docs
    else:
        rows = _full_rows(iter_packed(docs, options.seq_len, int(tokenizer.eod_id)), stats)  # type: ignore[arg-type]
    for row in rows:
        batch.append(row)
        held += len(row)
        if held >= budget:
            yield {"tokens": TokenColumn(batch)}
            batch, held = [], 0
    if batch:
        yield {"tokens": TokenColumn(batch)}


def _full_rows(packed: Iterator[np.ndarray], stats: Mapping[str, Any]) -> Iterator[np.ndarray]:
    """All but the last item of :func:`iter_packed` (the tail, which is counted and dropped)."""
    previous = next(packed)
    for current in packed:
        yield previous
        previous = current
    stats["dropped_tail_tokens"].add(len(previous))
    stats["partitions_with_tail"].add(int(len(previous) > 0))


def convert_text(
    spark: Any,
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    options: TextOptions | None = None,
    *,
    settings: ConvertConfig | None = None,
) -> ConversionResult:
    """Tokenize the ``.txt``/``.jsonl`` files of ``src`` in Spark tasks and write DEST.

    Args:
        spark: The SparkSession.
        src: A file, folder (recursive) or glob of ``.txt`` / ``.jsonl`` files.
        dest: Output folder or ``file://`` URL; appears only if the whole job succeeds.
        options: Text options. Defaults to ``None`` (``TextOptions()``).
        settings: Common conversion settings. Defaults to ``None`` (``ConvertConfig()``).

    Returns:
        The result; ``extra`` has ``tokenizer``, ``seq_len``, ``documents``, ``document_tokens``
        and, when packing, ``dropped_tail_tokens`` (also in the provenance).

    Raises:
        InputError: Bad input under ``on_error="fail"``, naming the file and line.
        ConfigError: Bad options, e.g. a tokenizer without an end-of-document token for packing.
    """
    from pipeline.convert.writer import plan_partitions, write_petastorm

    options = options or TextOptions()
    settings = settings or ConvertConfig()
    tokenizer = load_tokenizer(options.tokenizer, eod_token=options.eod_token)
    if options.seq_len is not None and tokenizer.eod_id is None:
        raise ConfigError(
            f"tokenizer {options.tokenizer} has no end-of-document token, which --seq-len packing needs",
            hint="name one of its special tokens with --eod-token",
        )
    files = list_source_files(src, extensions=TEXT_SUFFIXES, what="text files")
    total = sum(f.size for f in files)
    if options.piece_mb is not None:
        piece_bytes = int(options.piece_mb * (1 << 20))
    else:
        per_core = -(-total // spark.sparkContext.defaultParallelism)
        piece_bytes = min(settings.file_mb << 20, max(1 << 20, per_core))
    pieces = plan_pieces([(f.path, f.size) for f in files], options.split, max(1, piece_bytes))
    plan = plan_partitions(spark, pieces, [p.size for p in pieces], settings)
    names = ["documents", "document_tokens"]
    if options.seq_len is not None:
        names += ["dropped_tail_tokens", "partitions_with_tail"]
    counters = {name: spark.sparkContext.accumulator(0) for name in names}
    fixed = {
        "tokenizer": tokenizer.describe(),
        "seq_len": options.seq_len,
        "packing": None if options.seq_len is None else "per-partition, tail dropped",
        "partitions": len(plan),
        "pieces": len(pieces),
    }

    def facts() -> dict[str, Any]:  # read after the Spark job, when the task counters are final
        return {**fixed, **{name: int(acc.value) for name, acc in counters.items()}}

    log.info(
        "tokenizing %d file(s) in %d task(s) with %s (vocab %d)",
        len(files),
        len(plan),
        tokenizer.name,
        tokenizer.vocab_size,
    )
    result = write_petastorm(
        spark,
        kind="text",
        source=os.fspath(src),
        dest=os.fspath(dest),
        schema=text_schema(options.seq_len),
        plan=plan,
        process=functools.partial(_process, options=options, tokenizer=tokenizer, stats=counters),
        settings=settings,
        input_bytes=total,
        options=options,
        extra=facts,
    )
    if options.seq_len is not None:
        log.info(
            "packed %d document(s) into %d row(s) of %d tokens; dropped %d tail token(s) of %d partition(s)",
            result.extra["documents"],
            result.rows,
            options.seq_len,
            result.extra["dropped_tail_tokens"],
            result.extra["partitions_with_tail"],
        )
    return result
