"""Documents inside one text file: ``.txt`` (whole file or one per line) and ``.jsonl``.

Pure functions over the file's bytes, used inside Spark tasks. Each yields either a
:class:`Document` or a :class:`BadDocument` (file, line and reason), so the caller applies the
``--on-error`` policy; nothing here raises for bad input.

Rules:

* ``.txt`` with ``split="file"`` (default): the whole file is one document.
* ``.txt`` with ``split="lines"``: each line is a document (``\\n`` or ``\\r\\n`` ends a line;
  the line ending is not part of the document).
* ``.jsonl``: each line is a JSON object whose ``text_field`` is a string document.
* Blank lines and empty documents produce nothing (they would be rows of zero tokens).
* ``.txt.gz`` and ``.jsonl.gz`` are read the same way, decompressed while streaming; line-based
  formats are never loaded whole, so files larger than memory work.
* Invalid UTF-8 is bad input (``errors="strict"``) or becomes U+FFFD (``errors="replace"``).
  A leading UTF-8 byte-order mark is removed.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal

__all__ = [
    "TEXT_SUFFIXES",
    "BadDocument",
    "Document",
    "TextPiece",
    "iter_documents",
    "plan_pieces",
    "splittable",
]

TEXT_SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")
"""File name endings that text conversion reads (case-insensitive)."""

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Document:
    """One document: its text and where it came from (see :class:`BadDocument` for ``line``)."""

    text: str
    line: int | str | None = None


@dataclass(frozen=True)
class BadDocument:
    """A record that could not be read.

    ``line`` is the 1-based line number; ``"byte N"`` (offset of the line's first byte) for a
    line of a byte range that does not start the file; ``None`` when the whole file is bad.
    """

    reason: str
    line: int | str | None = None


def _decode(data: bytes, errors: str) -> tuple[str | None, str | None]:
    try:
        return data.decode("utf-8", errors=errors), None
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte {exc.start}: {data[exc.start : exc.start + 4]!r}"


@dataclass(frozen=True)
class TextPiece:
    """The work of reading one file, or one byte range of a big line-based file."""

    path: str
    start: int = 0
    stop: int | None = None
    """End of the byte range (exclusive); ``None`` for the whole file."""
    size: int = 0
    """Bytes of the range (for balancing partitions)."""


def plan_pieces(files: Sequence[tuple[str, int]], split: str, piece_bytes: int) -> list[TextPiece]:
    """Cut :func:`splittable` files larger than ``piece_bytes`` into equal byte ranges, in order.

    Args:
        files: ``(path, size)`` of each file, in reading order.
        split: The ``--split`` mode (``.txt`` files are splittable only with ``"lines"``).
        piece_bytes: Largest range, at least 1.
    """
    if piece_bytes < 1:
        raise ValueError(f"piece_bytes must be >= 1, got {piece_bytes}")
    pieces = []
    for path, size in files:
        if size <= piece_bytes or not splittable(path, split):
            pieces.append(TextPiece(path, 0, None, size))
            continue
        step = math.ceil(size / math.ceil(size / piece_bytes))
        pieces.extend(
            TextPiece(path, a, min(size, a + step), min(size, a + step) - a) for a in range(0, size, step)
        )
    return pieces


def splittable(name: str, split: str) -> bool:
    """Whether a file can be read in byte ranges by several tasks: uncompressed and line-based."""
    lower = name.lower()
    return lower.endswith(".jsonl") or (lower.endswith(".txt") and split == "lines")


def _lines(stream: BinaryIO, start: int = 0, stop: int | None = None) -> Iterator[tuple[int | str, bytes]]:
    """Lines whose first byte lies in ``[start, stop)`` (all lines by default), without line endings.

    A line belongs to the range holding its first byte, so adjacent ranges of one file read
    every line exactly once (the convention of Hadoop's text input).
    """
    pos = 0
    if start > 0:
        stream.seek(start - 1)
        pos = start - 1 + len(stream.readline())  # the end of the line that holds byte start-1
    for number, line in enumerate(stream, start=1):
        if stop is not None and pos >= stop:
            break
        here, pos = pos, pos + len(line)
        if here == 0 and line.startswith(_BOM):
            line = line[len(_BOM) :]
        yield (number if start == 0 else f"byte {here}"), line.rstrip(b"\n").rstrip(b"\r")


def iter_documents(
    name: str,
    data: bytes | BinaryIO,
    *,
    split: Literal["file", "lines"] = "file",
    text_field: str = "text",
    errors: Literal["strict", "replace"] = "strict",
    start: int = 0,
    stop: int | None = None,
) -> Iterator[Document | BadDocument]:
    """Documents of one file (or of the byte range ``[start, stop)`` of it), in file order.

    Args:
        name: File name; its ending (``.txt``, ``.jsonl``, optionally + ``.gz``) picks the format.
        data: The file's bytes, or a binary stream positioned at its start (read, not closed).
        split: ``"file"`` (one document per ``.txt`` file) or ``"lines"``. Defaults to ``"file"``.
        text_field: Key of the text in each ``.jsonl`` object. Defaults to ``"text"``.
        errors: ``"strict"`` (invalid UTF-8 is bad input) or ``"replace"``. Defaults to ``"strict"``.
        start: First byte of the range; only for :func:`splittable` files given as a seekable
            stream. Defaults to ``0``.
        stop: End of the range (exclusive); ``None`` reads to the end. Defaults to ``None``.

    Yields:
        :class:`Document` for each non-empty document, :class:`BadDocument` for each bad record.
    """
    stream: BinaryIO = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    lower = name.lower()
    if (start or stop is not None) and not splittable(name, split):
        raise ValueError(f"{name}: only uncompressed line-based files can be read in byte ranges")
    if lower.endswith(".gz"):
        lower = lower[:-3]
        stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[assignment]
    try:
        if lower.endswith(".jsonl"):
            yield from _jsonl(_lines(stream, start, stop), text_field, errors)
        elif not lower.endswith(".txt"):
            yield BadDocument(f"not a .txt or .jsonl file (file name ending {lower.rsplit('.', 1)[-1]!r})")
        elif split == "lines":
            for number, raw in _lines(stream, start, stop):
                text, problem = _decode(raw, errors)
                if problem is not None:
                    yield BadDocument(problem, number)
                elif text and text.strip():
                    yield Document(text, number)
        else:
            whole = stream.read()
            text, problem = _decode(whole[len(_BOM) :] if whole.startswith(_BOM) else whole, errors)
            if problem is not None:
                yield BadDocument(problem)
            elif text:
                yield Document(text)
    except (OSError, EOFError, zlib.error) as exc:  # damaged gzip stream or an I/O error mid-file
        yield BadDocument(f"cannot read the rest of the file: {exc}")


def _jsonl(
    lines: Iterator[tuple[int | str, bytes]], text_field: str, errors: str
) -> Iterator[Document | BadDocument]:
    for number, raw in lines:
        if not raw.strip():
            continue
        line, problem = _decode(raw, errors)
        if problem is not None:
            yield BadDocument(problem, number)
            continue
        try:
            obj = json.loads(line)  # type: ignore[arg-type]
        except json.JSONDecodeError as exc:
            yield BadDocument(f"not valid JSON: {exc.msg} at column {exc.colno}", number)
            continue
        except RecursionError:
            yield BadDocument("JSON nested too deeply to parse", number)
            continue
        if not isinstance(obj, dict):
            yield BadDocument(f"expected a JSON object, got {type(obj).__name__}", number)
        elif text_field not in obj:
            keys = ", ".join(sorted(map(str, obj))[:5]) or "none"
            yield BadDocument(f"no {text_field!r} field (keys: {keys})", number)
        elif not isinstance(obj[text_field], str):
            yield BadDocument(
                f"field {text_field!r} is {type(obj[text_field]).__name__}, not a string", number
            )
        elif obj[text_field]:
            yield Document(obj[text_field], number)
