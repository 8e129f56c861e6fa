"""Tokenizers for text conversion and language-model packing, as pure, picklable objects.

Two tokenizers are supported:

* :class:`ByteTokenizer` (``"bytes"``, the default): token id = UTF-8 byte value (0-255);
  special tokens come after the bytes (end-of-document ``EOD = 256``, vocabulary size 257).
  Needs no model and round-trips any text exactly.
* :class:`HFTokenizer`: any Hugging Face ``tokenizers`` JSON file (``--tokenizer PATH``). The
  JSON text travels to Spark executors inside the object, so executors need no shared disk.

:func:`pack_documents` is the language-model packing used with ``--seq-len N``: documents joined
with the end-of-document token and cut into rows of exactly ``N`` tokens.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ConfigError

__all__ = [
    "BYTE_EOD",
    "BYTE_VOCAB_SIZE",
    "EOD_CANDIDATES",
    "ByteTokenizer",
    "HFTokenizer",
    "PackResult",
    "Tokenizer",
    "iter_packed",
    "load_tokenizer",
    "pack_documents",
]

BYTE_EOD = 256
"""End-of-document id of the byte tokenizer (the first id after the 256 byte values)."""
BYTE_VOCAB_SIZE = 257
"""Vocabulary size of the byte tokenizer: 256 byte values + EOD."""

EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "<eod>", "[EOS]", "[SEP]")
"""Special tokens tried, in this order, as end-of-document for a tokenizer file without ``--eod-token``."""


@dataclass(frozen=True)
class ByteTokenizer:
    """Byte-level UTF-8 tokenizer: ``encode("é") == [195, 169]``, EOD is ``256``."""

    name: str = "bytes"
    vocab_size: int = BYTE_VOCAB_SIZE
    eod_id: int | None = BYTE_EOD

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int32) of ``text``; never adds special tokens."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """:meth:`encode` for each text."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Text of byte ids; special ids (>= 256) are dropped. Invalid UTF-8 raises ``UnicodeDecodeError``."""
        arr = np.asarray(ids, dtype=np.int64)
        return arr[(arr >= 0) & (arr < 256)].astype(np.uint8).tobytes().decode("utf-8")

    def describe(self) -> dict[str, Any]:
        """What provenance records about this tokenizer."""
        return {"name": self.name, "vocab_size": self.vocab_size, "eod_id": self.eod_id}


@dataclass(frozen=True)
class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer, carried as its JSON text so it pickles to executors.

    Build it with :func:`load_tokenizer`. Encoding adds no special tokens (no BOS/CLS); the
    end-of-document id (``eod_id``) is appended by packing only.
    """

    name: str
    json_text: str = field(repr=False)
    vocab_size: int
    eod_token: str | None
    eod_id: int | None

    def _backend(self) -> Any:
        return _hf_from_str(self.json_text)

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int32) of ``text``, without special tokens."""
        return np.asarray(self._backend().encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text, encoded by the Rust backend in one call."""
        encodings = self._backend().encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Text of ``ids``; special tokens are skipped."""
        return self._backend().decode([int(i) for i in ids], skip_special_tokens=True)

    def describe(self) -> dict[str, Any]:
        """What provenance records about this tokenizer (path, content hash, vocab size, EOD)."""
        digest = hashlib.sha256(self.json_text.encode("utf-8")).hexdigest()[:16]
        return {
            "name": self.name,
            "sha256": digest,
            "vocab_size": self.vocab_size,
            "eod_token": self.eod_token,
            "eod_id": self.eod_id,
        }


Tokenizer = ByteTokenizer | HFTokenizer


@functools.lru_cache(maxsize=1)
def _hf_from_str(json_text: str) -> Any:
    """Parse a tokenizer JSON once per process (executors reuse it across batches and tasks)."""
    try:
        from tokenizers import Tokenizer as _Backend
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConfigError(
            "--tokenizer PATH needs the `tokenizers` package",
            hint="pip install tokenizers (or `make` to refresh .venv)",
        ) from None
    return _Backend.from_str(json_text)


def load_tokenizer(spec: str | os.PathLike[str] = "bytes", *, eod_token: str | None = None) -> Tokenizer:
    """Build the tokenizer named by ``--tokenizer``.

    Args:
        spec: ``"bytes"`` for the byte tokenizer, or the path of a Hugging Face ``tokenizer.json``.
            Defaults to ``"bytes"``.
        eod_token: End-of-document token of a tokenizer file. Defaults to ``None``: the first of
            :data:`EOD_CANDIDATES` the vocabulary has (``None`` when it has none; packing then
            fails with a hint). Not allowed with ``"bytes"`` (its EOD is always ``256``).

    Raises:
        ConfigError: The file does not exist, is not a tokenizer, or lacks ``eod_token``.
    """
    if str(spec) == "bytes":
        if eod_token is not None:
            raise ConfigError(
                f"--eod-token {eod_token!r} only applies to a tokenizer file",
                hint="the byte tokenizer's end-of-document id is always 256",
            )
        return ByteTokenizer()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"tokenizer file {str(path)!r} does not exist",
            hint="pass `--tokenizer bytes` or the path of a Hugging Face tokenizer.json",
        )
    try:
        json_text = path.read_text(encoding="utf-8")
        backend = _hf_from_str(json_text)
    except ConfigError:
        raise
    except Exception as exc:  # tokenizers raises a plain Exception for bad JSON
        raise ConfigError(
            f"{path} is not a Hugging Face tokenizer file: {exc}",
            hint="save one with `tokenizer.save(path)` from the `tokenizers` package",
        ) from None
    vocab = backend.get_vocab(with_added_tokens=True)
    if eod_token is not None:
        if eod_token not in vocab:
            raise ConfigError(
                f"--eod-token {eod_token!r} is not in the vocabulary of {path}",
                hint="pick one of its special tokens, e.g. " + ", ".join(repr(t) for t in _specials(backend)),
            )
        chosen: str | None = eod_token
    else:
        chosen = next((t for t in EOD_CANDIDATES if t in vocab), None)
    return HFTokenizer(
        name=str(path.resolve()),
        json_text=json_text,
        vocab_size=int(backend.get_vocab_size(with_added_tokens=True)),
        eod_token=chosen,
        eod_id=None if chosen is None else int(vocab[chosen]),
    )


def _specials(backend: Any) -> list[str]:
    try:
        decoder = backend.get_added_tokens_decoder()
        return [t.content for t in decoder.values() if t.special][:8] or ["<|endoftext|>"]
    except AttributeError:  # older tokenizers
        return ["<|endoftext|>"]


@dataclass
class PackResult:
    """Rows cut by :func:`pack_documents` and what was left over."""

    rows: np.ndarray
    """int32 array of shape ``(n_rows, seq_len)``."""
    tail: int
    """Tokens after the last full row (dropped; counted in the summary)."""
    tokens: int
    """All tokens seen, EOD tokens included: ``rows.size + tail``."""


def pack_documents(docs: Iterable[np.ndarray], seq_len: int, eod_id: int) -> PackResult:
    """Join documents with ``eod_id`` and cut the stream into rows of exactly ``seq_len`` tokens.

    Every document is followed by one ``eod_id`` (so the stream is ``d0 EOD d1 EOD ...``); rows
    may start or end mid-document. The final partial row is dropped; its length is ``tail``.

    Args:
        docs: Token arrays of the documents, in order.
        seq_len: Tokens per row, at least 1.
        eod_id: The end-of-document token id.

    Returns:
        The full rows and the count of dropped tail tokens.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    rows = list(iter_packed(docs, seq_len, eod_id))
    stream_rows = np.stack(rows[:-1]) if len(rows) > 1 else np.zeros((0, seq_len), np.int32)
    tail = len(rows[-1])
    return PackResult(rows=stream_rows, tail=tail, tokens=stream_rows.size + tail)


def iter_packed(docs: Iterable[np.ndarray], seq_len: int, eod_id: int) -> Iterator[np.ndarray]:
    """Yield full rows of ``seq_len`` tokens, then the (possibly empty) shorter tail as the last item.

    Memory stays bounded by one row plus one document, so it streams over a whole partition.
    """
    eod = np.asarray([eod_id], dtype=np.int32)
    buf: list[np.ndarray] = []
    held = 0
    for doc in docs:
        for piece in (np.asarray(doc, dtype=np.int32), eod):
            buf.append(piece)
            held += len(piece)
            if held < seq_len:
                continue
            stream = np.concatenate(buf)
            n_full = len(stream) // seq_len
            yield from stream[: n_full * seq_len].reshape(n_full, seq_len)
            rest = stream[n_full * seq_len :]
            buf = [rest]
            held = len(rest)
    yield np.concatenate(buf) if buf else np.zeros(0, np.int32)
