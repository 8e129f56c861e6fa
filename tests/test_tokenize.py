"""Tokenizers, document splitting and LM packing: pure functions, no Spark."""

from __future__ import annotations

import io
import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.convert.text_docs import BadDocument, Document, iter_documents
from pipeline.convert.tokenize import (
    BYTE_EOD,
    ByteTokenizer,
    HFTokenizer,
    iter_packed,
    load_tokenizer,
    pack_documents,
)
from pipeline.errors import ConfigError

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Spark writes Parquet; petastorm reads it.",
    "Ünïcödé text, emoji 🙂 and CJK 漢字 round-trip exactly.",
    "line one\nline two\n\ttabbed",
]


def make_bpe_tokenizer(path: Path, special: str = "<|endoftext|>") -> Path:
    """A tiny byte-level BPE tokenizer trained on CORPUS and saved as tokenizer.json (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    tok.save(str(path))
    return path


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_byte_tokenizer_round_trips_any_text(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert ids.tolist() == list(text.encode("utf-8"))
    assert tok.decode(np.append(ids, BYTE_EOD)) == text


def test_byte_tokenizer_ids_and_vocab():
    tok = load_tokenizer("bytes")
    assert (tok.vocab_size, tok.eod_id) == (257, 256)
    assert tok.encode("é").tolist() == [195, 169]
    assert tok.describe() == {"name": "bytes", "vocab_size": 257, "eod_id": 256}
    with pytest.raises(ConfigError, match="only applies to a tokenizer file"):
        load_tokenizer("bytes", eod_token="</s>")


def test_hf_tokenizer_file_round_trips_and_pickles(tmp_path):
    path = make_bpe_tokenizer(tmp_path / "tokenizer.json")
    tok = load_tokenizer(path)
    assert isinstance(tok, HFTokenizer)
    assert tok.eod_token == "<|endoftext|>"
    assert tok.eod_id == 0
    assert 257 <= tok.vocab_size <= 320
    clone = pickle.loads(pickle.dumps(tok))  # what Spark does to ship it to executors
    for text, ids in zip(CORPUS, clone.encode_batch(CORPUS), strict=True):
        assert ids.dtype == np.int32
        assert len(ids) < len(text.encode("utf-8"))  # BPE merges: fewer tokens than bytes
        assert clone.decode(ids) == text
        assert tok.encode(text).tolist() == ids.tolist()
    meta = tok.describe()
    assert meta["vocab_size"] == tok.vocab_size and len(meta["sha256"]) == 16


def test_hf_tokenizer_errors_name_the_file_and_token(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad\.json is not a Hugging Face tokenizer"):
        load_tokenizer(bad)
    path = make_bpe_tokenizer(tmp_path / "tok.json", special="[END]")
    assert load_tokenizer(path).eod_id is None  # no known end-of-document token
    assert load_tokenizer(path, eod_token="[END]").eod_id == 0
    with pytest.raises(ConfigError, match=r"'</s>' is not in the vocabulary.*HINT.*\[END\]"):
        load_tokenizer(path, eod_token="</s>")


def test_packing_joins_documents_with_eod_and_drops_the_tail():
    docs = [np.arange(1, 4), np.arange(10, 15), np.array([], np.int32), np.array([7])]
    result = pack_documents(docs, seq_len=4, eod_id=99)
    # stream: 1 2 3 99 10 11 12 13 14 99 99 7 99  (13 tokens) -> 3 rows of 4, tail 1
    assert result.rows.tolist() == [[1, 2, 3, 99], [10, 11, 12, 13], [14, 99, 99, 7]]
    assert result.rows.dtype == np.int32
    assert (result.tail, result.tokens) == (1, 13)


@given(
    st.lists(st.lists(st.integers(0, 255), max_size=30), max_size=20),
    st.integers(1, 17),
)
@settings(max_examples=200, deadline=None)
def test_packing_keeps_every_token_in_order(docs, seq_len):
    arrays = [np.asarray(d, np.int32) for d in docs]
    result = pack_documents(arrays, seq_len, eod_id=BYTE_EOD)
    stream = [t for d in docs for t in [*d, BYTE_EOD]]
    assert result.rows.shape == (len(stream) // seq_len, seq_len)
    assert result.tail == len(stream) % seq_len
    assert result.rows.ravel().tolist() == stream[: len(stream) - result.tail]
    *_rows, tail = list(iter_packed(arrays, seq_len, BYTE_EOD))
    assert tail.tolist() == stream[len(stream) - result.tail :]


def test_packing_rejects_bad_seq_len():
    with pytest.raises(ValueError, match="seq_len must be >= 1, got 0"):
        pack_documents([], 0, 1)


def test_txt_file_and_lines_split():
    data = "\ufeffhello\r\nwörld\n\n  \nlast".encode()
    assert list(iter_documents("a.txt", data)) == [Document("hello\r\nwörld\n\n  \nlast")]
    assert list(iter_documents("a.TXT", data, split="lines")) == [
        Document("hello", 1),
        Document("wörld", 2),
        Document("last", 5),
    ]
    assert list(iter_documents("empty.txt", b"")) == []


def test_invalid_utf8_is_bad_or_replaced():
    data = b"good line\nbad \xff\xfe line\nok"
    docs = list(iter_documents("x.txt", data, split="lines"))
    assert docs[0] == Document("good line", 1)
    assert (
        isinstance(docs[1], BadDocument) and docs[1].line == 2 and "invalid UTF-8 at byte 4" in docs[1].reason
    )
    assert docs[2] == Document("ok", 3)
    whole = list(iter_documents("x.txt", data))
    assert len(whole) == 1 and isinstance(whole[0], BadDocument) and whole[0].line is None
    replaced = list(iter_documents("x.txt", data, errors="replace"))
    assert replaced == [Document("good line\nbad \ufffd\ufffd line\nok")]


def test_jsonl_records_and_their_errors():
    data = b"\n".join(
        [
            b'{"text": "first", "id": 1}',
            b"",
            b"{broken",
            b'{"body": "no text field"}',
            b'["a list"]',
            b'{"text": 42}',
            b'{"text": ""}',
            b'{"text": "caf\\u00e9 \\ud83d\\ude42"}',
        ]
    )
    docs = list(iter_documents("d.jsonl", data))
    assert docs[0] == Document("first", 1)
    bad = [(d.line, d.reason) for d in docs if isinstance(d, BadDocument)]
    assert [line for line, _ in bad] == [3, 4, 5, 6]
    assert "not valid JSON" in bad[0][1]
    assert "no 'text' field (keys: body)" in bad[1][1]
    assert "expected a JSON object, got list" in bad[2][1]
    assert "field 'text' is int, not a string" in bad[3][1]
    assert docs[-1] == Document("café 🙂", 8)
    assert list(iter_documents("d.jsonl", b'{"body": "x"}', text_field="body")) == [Document("x", 1)]


def test_other_file_types_are_bad_input():
    (doc,) = iter_documents("notes.md", b"# hi")
    assert isinstance(doc, BadDocument) and "not a .txt or .jsonl file" in doc.reason


def test_gzip_files_stream_and_damaged_gzip_is_bad_input():
    import gzip

    data = gzip.compress(b'{"text": "one"}\n{"text": "two"}\n' * 3)
    docs = list(iter_documents("c.jsonl.gz", data))
    assert [d.text for d in docs] == ["one", "two"] * 3
    assert docs[-1].line == 6
    assert list(iter_documents("c.TXT.GZ", gzip.compress(b"whole file"))) == [Document("whole file")]
    *good, bad = iter_documents("c.jsonl.gz", data[:-8])  # truncated: the gzip trailer is missing
    assert good == docs
    assert isinstance(bad, BadDocument) and "cannot read the rest of the file" in bad.reason


@given(
    st.lists(st.text(alphabet="ab\r é", max_size=6), max_size=12),
    st.lists(st.integers(0, 80), max_size=4),
    st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_byte_ranges_read_every_line_exactly_once(lines, cuts, bom):
    data = ("\ufeff" if bom else "").encode() + "\n".join(lines).encode()
    whole = [d.text for d in iter_documents("f.txt", data, split="lines")]
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    pieces = []
    for start, stop in itertools.pairwise(bounds):
        docs = list(iter_documents("f.txt", io.BytesIO(data), split="lines", start=start, stop=stop))
        assert all(isinstance(d.line, int) if start == 0 else d.line.startswith("byte ") for d in docs)
        pieces += [d.text for d in docs]
    assert pieces == whole


def test_byte_ranges_name_the_offset_and_refuse_unsplittable_files():
    data = b'{"text": "a"}\n{broken\n{"text": "c"}\n'
    docs = list(iter_documents("r.jsonl", io.BytesIO(data), start=5))  # starts inside line 1
    assert docs[0] == BadDocument(docs[0].reason, "byte 14") and "not valid JSON" in docs[0].reason
    assert docs[1] == Document("c", "byte 22")
    with pytest.raises(ValueError, match="only uncompressed line-based files"):
        list(iter_documents("r.txt", io.BytesIO(data), start=5))  # split="file": one document
