"""Text conversion end to end: Spark tokenization, packing, read-back, bad input, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.convert.common import ConvertConfig
from pipeline.convert.text import TextOptions, convert_text
from pipeline.convert.tokenize import BYTE_EOD, ByteTokenizer, load_tokenizer
from pipeline.dataset import list_dataset_files, read_provenance
from pipeline.errors import ConfigError, InputError
from pipeline.inspect import inspect_dataset
from tests.conftest import REPO
from tests.test_tokenize import CORPUS, make_bpe_tokenizer

pytestmark = pytest.mark.spark

JSONL_DOCS = ["first record", "zweiter Datensatz — ünïcödé", "third 🙂\nwith a newline"]


def write_corpus(root: Path) -> list[str]:
    """A folder of .txt (one document per file, one nested) and .jsonl files; returns the documents."""
    (root / "sub").mkdir(parents=True)
    docs = []
    for i, text in enumerate(CORPUS):
        target = root / ("sub" if i % 2 else "") / f"doc{i}.txt"
        target.write_text(text, encoding="utf-8")
        docs.append(text)
    lines = [json.dumps({"id": i, "text": t}, ensure_ascii=i % 2 == 0) for i, t in enumerate(JSONL_DOCS)]
    (root / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "README.md").write_text("not a text source")  # ignored: wrong suffix
    (root / ".hidden.txt").write_text("hidden files are not read")
    return docs + JSONL_DOCS


def read_tokens_pyarrow(url: str) -> list[np.ndarray]:
    files = list_dataset_files(url)
    return [np.asarray(v, np.int32) for f in files.files for v in pq.read_table(f)["tokens"].to_pylist()]


def read_tokens_petastorm(url: str) -> list[np.ndarray]:
    from tests.datasets import make_reader

    with make_reader(url, workers_count=1, shuffle_row_groups=False, num_epochs=1) as reader:
        return [row.tokens for row in reader]


def test_documents_round_trip_through_make_reader_and_pyarrow(spark, tmp_path):
    docs = write_corpus(tmp_path / "src")
    dest = tmp_path / "out"
    result = convert_text(
        spark, str(tmp_path / "src"), dest, TextOptions(), settings=ConvertConfig(partitions=2)
    )

    assert (result.rows, result.skipped, result.files) == (len(docs), 0, 2)
    assert result.extra["documents"] == len(docs)
    assert result.extra["document_tokens"] == sum(len(d.encode()) for d in docs)
    tok = ByteTokenizer()
    by_petastorm = read_tokens_petastorm(result.output)
    assert all(t.dtype == np.int32 and t.ndim == 1 for t in by_petastorm)
    assert sorted(tok.decode(t) for t in by_petastorm) == sorted(docs)
    assert sorted(tok.decode(t) for t in read_tokens_pyarrow(result.output)) == sorted(docs)
    spark_rows = spark.read.parquet(result.output).collect()
    assert sorted(tok.decode(r.tokens) for r in spark_rows) == sorted(docs)

    info = inspect_dataset(result.output)
    assert info.fields["tokens"].dtype == "int32" and info.fields["tokens"].shape == (None,)
    meta = read_provenance(result.output)
    assert meta["tokenizer"] == {"name": "bytes", "vocab_size": 257, "eod_id": 256}
    assert meta["counts"]["rows"] == len(docs) and meta["documents"] == len(docs)


def test_packing_is_exact_within_a_partition(spark, tmp_path):
    docs = write_corpus(tmp_path / "src")
    files = sorted(
        [
            p
            for p in (tmp_path / "src").rglob("*")
            if p.suffix in (".txt", ".jsonl") and not p.name.startswith(".")
        ]
    )
    ordered = []  # documents in the order one task reads them: sorted paths, then file order
    for path in files:
        ordered += JSONL_DOCS if path.suffix == ".jsonl" else [path.read_text(encoding="utf-8")]
    assert sorted(ordered) == sorted(docs)
    stream = [t for d in ordered for t in [*d.encode(), BYTE_EOD]]

    options = TextOptions(seq_len=16)
    result = convert_text(
        spark, tmp_path / "src", tmp_path / "out", options, settings=ConvertConfig(partitions=1)
    )
    rows = read_tokens_petastorm(result.output)
    assert all(r.shape == (16,) for r in rows)
    assert np.concatenate(rows).tolist() == stream[: len(rows) * 16]
    assert result.extra["dropped_tail_tokens"] == len(stream) % 16
    assert result.rows == len(stream) // 16
    assert inspect_dataset(result.output).fields["tokens"].shape == (16,)

    split = convert_text(
        spark, tmp_path / "src", tmp_path / "out2", options, settings=ConvertConfig(partitions=3)
    )
    assert split.extra["partitions"] == 3
    assert split.rows * 16 + split.extra["dropped_tail_tokens"] == len(stream)  # every token counted once
    assert read_provenance(split.output)["dropped_tail_tokens"] == split.extra["dropped_tail_tokens"]


def test_tokenizer_file_packing_matches_the_tokenizer(spark, tmp_path):
    src = tmp_path / "src.jsonl"
    src.write_text("\n".join(json.dumps({"body": t}) for t in CORPUS), encoding="utf-8")
    tok_path = make_bpe_tokenizer(tmp_path / "tokenizer.json")
    tok = load_tokenizer(tok_path)
    options = TextOptions(seq_len=8, tokenizer=str(tok_path), text_field="body")
    result = convert_text(spark, src, tmp_path / "out", options)
    stream = [t for d in CORPUS for t in [*tok.encode(d).tolist(), tok.eod_id]]
    rows = read_tokens_pyarrow(result.output)
    assert np.concatenate(rows).tolist() == stream[: len(rows) * 8]
    assert result.extra["dropped_tail_tokens"] == len(stream) % 8
    # detokenized: the documents, in order, up to the dropped tail
    text = tok.decode(np.concatenate(rows))
    assert "".join(CORPUS).startswith(text) and len(text) > len("".join(CORPUS[:-1]))
    meta = read_provenance(result.output)["tokenizer"]
    assert meta["vocab_size"] == tok.vocab_size and meta["eod_token"] == "<|endoftext|>"


def write_bad_corpus(root: Path) -> list[str]:
    root.mkdir()
    (root / "a_good.txt").write_text("good one", encoding="utf-8")
    (root / "b_bad.txt").write_bytes(b"broken \xff\xfe bytes")
    lines = [
        json.dumps({"text": "rec one"}),
        "{not json",
        json.dumps({"body": "no text"}),
        json.dumps({"text": "rec four"}),
    ]
    (root / "c_recs.jsonl").write_text("\n".join(lines), encoding="utf-8")
    return ["good one", "rec one", "rec four"]


def test_skip_mode_counts_and_reports_bad_records(spark, tmp_path):
    good = write_bad_corpus(tmp_path / "src")
    pattern = str(tmp_path / "src" / "*_*.*")  # a glob source
    result = convert_text(spark, pattern, tmp_path / "out", settings=ConvertConfig(on_error="skip"))
    assert (result.rows, result.skipped) == (3, 3)
    assert sorted(ByteTokenizer().decode(t) for t in read_tokens_pyarrow(result.output)) == sorted(good)
    report = [json.loads(line) for line in Path(result.skipped_report).read_text().splitlines()]
    where = sorted((Path(r["source"]).name, r["record"]) for r in report)
    assert where == [("b_bad.txt", None), ("c_recs.jsonl", 2), ("c_recs.jsonl", 3)]
    reasons = " ".join(r["reason"] for r in report)
    assert "invalid UTF-8" in reasons and "not valid JSON" in reasons and "no 'text' field" in reasons


def test_fail_mode_names_file_and_line_and_leaves_no_dest(spark, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.jsonl").write_text('{"text": "fine"}\n{"text": "also fine"}\n{"txt": "typo"}\n')
    with pytest.raises(InputError, match=r"ok\.jsonl \(record 3\): no 'text' field") as info:
        convert_text(spark, src, tmp_path / "out")
    assert "--on-error skip" in str(info.value)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no staging folder left either


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    cmd = [sys.executable, "-m", "pipeline.cli", "convert", "text", *args, "--master", "local[1]"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)


def test_cli_fail_exits_nonzero_naming_the_file(tmp_path):
    write_bad_corpus(tmp_path / "src")
    dest = tmp_path / "out"
    failed = run_cli(str(tmp_path / "src"), str(dest), "--partitions", "1")
    assert failed.returncode == 2, failed.stderr
    message = "".join(failed.stderr[failed.stderr.rindex("error: ") :].split())  # the CLI wraps lines
    # one task reads the files in sorted order and stops at the first bad one
    assert "b_bad.txt:invalidUTF-8atbyte7" in message, failed.stderr
    assert "HINT" in message
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_cli_json_in_process_reuses_the_session(spark, tmp_path, capsys):
    """`pipeline convert text ... --json` through the real CLI entry point (the active session is reused)."""
    from pipeline.cli import main

    good = write_bad_corpus(tmp_path / "src")
    dest = tmp_path / "out"
    code = main(
        [
            "convert",
            "text",
            str(tmp_path / "src"),
            str(dest),
            "--on-error",
            "skip",
            "--seq-len",
            "4",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"rows", "skipped", "output", "seconds"} <= set(out)
    tokens = sum(len(g.encode()) + 1 for g in good)
    assert out["skipped"] == 3
    assert out["rows"] * 4 + out["extra"]["dropped_tail_tokens"] == tokens
    assert out["output"] == "file://" + str(dest)


def test_shipped_conf_matches_the_defaults():
    path = REPO / "conf" / "convert_text.yaml"
    assert load_config(TextOptions, path) == TextOptions()
    keys = {line.split(":")[0] for line in path.read_text().splitlines() if line and line[0].isalpha()}
    assert {f.name for f in fields(TextOptions)} == keys


def test_packing_needs_an_end_of_document_token(tmp_path):
    tok_path = make_bpe_tokenizer(tmp_path / "tok.json", special="[END]")
    (tmp_path / "a.txt").write_text("some text")
    options = TextOptions(seq_len=8, tokenizer=str(tok_path))
    with pytest.raises(ConfigError, match=r"no end-of-document token.*HINT.*--eod-token"):
        convert_text(None, tmp_path / "a.txt", tmp_path / "out", options)  # fails before any Spark work
    with pytest.raises(ConfigError, match="seq_len must be >= 1, got 0"):
        TextOptions(seq_len=0)


def test_one_big_jsonl_is_read_in_byte_ranges_by_several_tasks(spark, tmp_path):
    docs = [f"document {i} " + "x" * (i % 50) for i in range(300)]
    lines = [json.dumps({"text": d}) for d in docs]
    lines[150] = '{"text": broken'
    src = tmp_path / "big.jsonl"
    src.write_text("\n".join(lines) + "\n")
    options = TextOptions(piece_mb=4096 / (1 << 20))  # 4 KiB ranges
    result = convert_text(
        spark, src, tmp_path / "out", options, settings=ConvertConfig(on_error="skip", partitions=3)
    )
    assert result.extra["pieces"] > 3 and result.files == 3
    want = docs[:150] + docs[151:]
    tok = ByteTokenizer()
    assert [tok.decode(t) for t in read_tokens_pyarrow(result.output)] == want  # every line once, in order
    (bad,) = [json.loads(line) for line in Path(result.skipped_report).read_text().splitlines()]
    offset = sum(len(line) + 1 for line in lines[:150])
    assert bad["record"] == f"byte {offset}" and "not valid JSON" in bad["reason"]


def test_json_nested_too_deeply_is_bad_input_not_a_crash():
    from pipeline.convert.text_docs import BadDocument, Document, iter_documents

    data = b'{"text": "fine"}\n' + b"[" * 200_000 + b"]" * 200_000 + b'\n{"text": "also fine"}\n'
    docs = list(iter_documents("deep.jsonl", data))
    assert [type(d) for d in docs] == [Document, BadDocument, Document]
    assert "nested too deeply" in docs[1].reason
