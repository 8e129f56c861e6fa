"""Compatibility with petastorm 0.12.1, proven both ways across two environments.

This suite runs in the default env (current stack, no petastorm) and drives the petastorm env
(``.venv-petastorm``, built by ``make test`` from constraints-petastorm.txt) through the scripts
in tests/petastorm_env/, exchanging values as portable pickles:

* datasets written by ``pipeline convert`` here (images, text, HDF5) are read by petastorm's own
  ``make_reader`` and ``make_batch_reader`` there: values equal;
* a dataset written there by petastorm's ``materialize_dataset`` (every codec, nullable fields,
  uneven row groups) is read here by ``open_loader``: values equal;
* ``open_loader(url, engine="petastorm", ...)`` runs there: seed, shuffle, shards, epochs,
  TransformSpec, plain Parquet and the process pool.

Without the petastorm env these tests FAIL (CI must run them); a developer may skip them with
``PIPELINE_SKIP_PETASTORM_COMPAT=1``. ``PIPELINE_PETASTORM_PYTHON`` names the env's Python
(``make test`` sets it; default ``.venv-petastorm/bin/python``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.dataset import list_dataset_files
from pipeline.errors import ConfigError
from tests.conftest import REPO
from tests.petastorm_env import compat_rows, portable

pytestmark = [pytest.mark.spark, pytest.mark.slow]

SCRIPTS = REPO / "tests" / "petastorm_env"
SKIP_VAR = "PIPELINE_SKIP_PETASTORM_COMPAT"


@pytest.fixture(scope="module")
def petastorm_python() -> Path:
    if os.environ.get(SKIP_VAR) == "1":
        pytest.skip(f"{SKIP_VAR}=1: the petastorm compatibility suite is skipped on this machine")
    path = Path(os.environ.get("PIPELINE_PETASTORM_PYTHON") or REPO / ".venv-petastorm" / "bin" / "python")
    if not path.exists():
        pytest.fail(
            f"the petastorm env's Python {path} does not exist: run `make petastorm-venv` (make test "
            f"builds it), or set {SKIP_VAR}=1 to skip this suite on a developer machine",
            pytrace=False,
        )
    return path


def run_in_petastorm_env(python: Path, script: str, *args: str) -> None:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [str(python), str(SCRIPTS / script), *args], capture_output=True, text=True, env=env, timeout=540
    )
    assert done.returncode == 0, f"{script} failed in the petastorm env:\n{done.stderr[-4000:]}"


def key(value: Any) -> bytes:
    """A canonical byte string of one value, to compare rows whatever their order."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return b"[" + b",".join(key(v) for v in value) + b"]"
    if value is None:
        return b"None"
    array = np.asarray(value)
    return f"{array.dtype.str}{array.shape}".encode() + np.ascontiguousarray(array).tobytes()


def sorted_rows(columns: dict[str, list[Any]], names: list[str]) -> list[tuple[bytes, ...]]:
    n = len(columns[names[0]])
    return sorted(tuple(key(columns[name][i]) for name in names) for i in range(n))


def arrow_columns(table: pa.Table) -> dict[str, list[Any]]:
    """A table's columns as lists; list values as numpy arrays of the list's value type."""
    out = {}
    for name in table.column_names:
        column = table.column(name)
        values = column.to_pylist()
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            dtype = column.type.value_type.to_pandas_dtype()
            values = [None if v is None else np.asarray(v, dtype=dtype) for v in values]
        elif pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            dtype = column.type.to_pandas_dtype()
            values = [None if v is None else np.asarray(v, dtype=dtype) for v in values]
        out[name] = values
    return out


def loader_rows(url: str, **kwargs: Any) -> dict[str, list[Any]]:
    """Every row through open_loader (stored order, one worker), per field, as numpy values."""
    out: dict[str, list[Any]] = {}
    with pipeline.open_loader(url, batch_size=7, shuffle=False, workers=1, num_epochs=1, **kwargs) as loader:
        for batch in loader:
            for name, values in batch.items():
                if name.endswith("_lengths"):
                    continue
                lengths = batch.get(f"{name}_lengths")
                items = [v.numpy() if hasattr(v, "numpy") else v for v in values]
                if lengths is not None:
                    items = [v[: int(n)] for v, n in zip(items, lengths, strict=True)]
                out.setdefault(name, []).extend(items)
    return out


# ---- datasets written by `pipeline convert` here, read by petastorm there ----------------------


def _image_tree(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")


def _text_tree(root: Path) -> None:
    root.mkdir(parents=True)
    for i in range(3):
        (root / f"doc{i}.txt").write_text(f"document {i}: Grüße, petastorm! " * (i + 2), encoding="utf-8")


def _hdf5_file(root: Path) -> None:
    import h5py

    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    with h5py.File(root / "data.h5", "w") as f:
        f["features"] = rng.standard_normal((9, 4)).astype(np.float32)
        f["target"] = np.arange(9, dtype=np.int64)


@pytest.fixture(scope="module")
def converted(spark, tmp_path_factory) -> dict[str, str]:
    from pipeline.cli import main

    root = tmp_path_factory.mktemp("converted")
    _image_tree(root / "images_src")
    _text_tree(root / "text_src")
    _hdf5_file(root / "hdf5_src")
    commands = {
        "images": ["images", str(root / "images_src"), str(root / "images")],
        "text": ["text", str(root / "text_src"), str(root / "text"), "--seq-len", "16"],
        "hdf5": ["hdf5", str(root / "hdf5_src"), str(root / "hdf5")],
    }
    for kind, args in commands.items():
        assert main(["convert", *args]) == 0, kind
    return {kind: "file://" + str(root / kind) for kind in commands}


def test_petastorm_reads_what_pipeline_convert_writes(converted, petastorm_python, tmp_path):
    out = tmp_path / "read.pkl"
    run_in_petastorm_env(petastorm_python, "read_with_petastorm.py", str(out), *converted.values())
    read = portable.load(out)
    for kind, url in converted.items():
        ours = loader_rows(url)
        names = sorted(ours)
        # make_reader: petastorm decodes the codecs; the same values as our reader, row for row.
        theirs = {name: [row[name] for row in read[url]["reader"]] for name in names}
        assert len(theirs[names[0]]) == len(ours[names[0]]) > 0, kind
        assert sorted_rows(theirs, names) == sorted_rows(ours, names), f"{kind}: make_reader differs"
        # make_batch_reader: the stored Parquet columns, as pyarrow reads them here.
        tables = [pq.read_table(f) for f in list_dataset_files(url).files]
        stored = arrow_columns(pa.concat_tables(tables))
        batch = read[url]["batch"]
        assert sorted(batch) == sorted(stored), kind
        assert sorted_rows(batch, sorted(stored)) == sorted_rows(stored, sorted(stored)), (
            f"{kind}: make_batch_reader differs"
        )


# ---- a dataset written by petastorm's materialize_dataset there, read here ---------------------


@pytest.fixture(scope="module")
def materialized(petastorm_python, tmp_path_factory) -> tuple[str, dict[int, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("materialized")
    run_in_petastorm_env(petastorm_python, "write_petastorm.py", str(root / "ds"), str(root / "readback.pkl"))
    return "file://" + str(root / "ds"), portable.load(root / "readback.pkl")


NON_NULL = ["id", "small", "ratio", "flag", "name", "matrix", "varlen", "packed", "png", "png_gray", "jpeg"]


def test_the_petastorm_dataset_has_uneven_files_and_row_groups(materialized):
    url, _ = materialized
    groups = [pq.ParquetFile(f).metadata.num_rows for f in list_dataset_files(url).files]
    per_group = [
        pq.ParquetFile(f).metadata.row_group(i).num_rows
        for f in list_dataset_files(url).files
        for i in range(pq.ParquetFile(f).metadata.num_row_groups)
    ]
    assert sorted(groups) == sorted(compat_rows.PARTITIONS)
    assert len(set(per_group)) > 1, per_group


def test_open_loader_reads_what_materialize_dataset_writes(materialized):
    url, petastorm_read = materialized
    ours = loader_rows(url, fields=NON_NULL)
    ids = [int(i) for i in ours["id"]]
    assert sorted(ids) == list(range(compat_rows.ROWS))
    for pos, i in enumerate(ids):
        expected = compat_rows.expected_row(i)
        for name in NON_NULL:
            got, theirs = ours[name][pos], petastorm_read[i][name]
            if name == "name":
                assert str(got) == expected[name] == str(theirs), i
                continue
            got = np.asarray(got)
            if name not in compat_rows.LOSSY:  # exactly what was written...
                want = np.asarray(expected[name])
                assert got.dtype == want.dtype and np.array_equal(got, want), (name, i)
            assert np.array_equal(got, theirs), ("differs from petastorm's decode", name, i)  # JPEG too


def test_open_loader_reads_nullable_fields_of_non_null_rows(materialized):
    """Rows whose nullable fields hold values, selected with a predicate, read like petastorm's."""
    from pipeline.predicates import in_lambda

    url, petastorm_read = materialized
    keep = in_lambda(["maybe", "maybe_vec"], lambda a, b: a is not None and b is not None)
    ours = loader_rows(url, fields=["id", "maybe", "maybe_vec"], predicate=keep)
    want = [
        i for i, row in petastorm_read.items() if row["maybe"] is not None and row["maybe_vec"] is not None
    ]
    assert sorted(int(i) for i in ours["id"]) == sorted(want)
    for pos, i in enumerate(int(i) for i in ours["id"]):
        assert int(ours["maybe"][pos]) == int(petastorm_read[i]["maybe"])
        assert np.array_equal(ours["maybe_vec"][pos], petastorm_read[i]["maybe_vec"])


# ---- open_loader(engine="petastorm") inside the petastorm env ---------------------------------


def _ids(batches: list[dict[str, Any]]) -> list[int]:
    return [int(i) for b in batches for i in b["id"]]


def test_engine_petastorm_wraps_make_reader_and_make_batch_reader(materialized, petastorm_python, tmp_path):
    url, petastorm_read = materialized
    parquet = tmp_path / "plain"
    parquet.mkdir()
    for f in range(2):
        pq.write_table(
            pa.table({"x": np.arange(f * 6, f * 6 + 6), "v": [[float(i)] * 3 for i in range(6)]}),
            parquet / f"part-{f}.parquet",
            row_group_size=4,
        )
    out = tmp_path / "engine.pkl"
    run_in_petastorm_env(petastorm_python, "run_engine.py", str(out), url, "file://" + str(parquet))
    runs = portable.load(out)
    everything = list(range(compat_rows.ROWS))

    stored = runs["stored"]
    assert sorted(_ids(stored)) == everything
    assert [len(b["id"]) for b in stored] == [4, 4, 3]
    for batch in stored:  # same collation as the default engine: stacked, padded, lists
        assert batch["png"].shape[1:] == (8, 10, 3) and batch["png"].dtype == np.uint8
        assert batch["varlen_lengths"].dtype == np.int64 and isinstance(batch["name"], list)
        for pos, i in enumerate(int(i) for i in batch["id"]):
            n = int(batch["varlen_lengths"][pos])
            assert np.array_equal(batch["varlen"][pos][:n], petastorm_read[i]["varlen"])
            assert np.array_equal(batch["jpeg"][pos], petastorm_read[i]["jpeg"])
            assert np.array_equal(batch["matrix"][pos], compat_rows.expected_row(i)["matrix"])

    assert _ids(runs["seed3"]) == _ids(runs["seed3_again"])  # one worker: seeded, repeatable
    assert _ids(runs["seed3"]) != _ids(runs["seed4"]) and sorted(_ids(runs["seed4"])) == everything
    shards = _ids(runs["rank0"]), _ids(runs["rank1"])
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == everything
    assert sorted(_ids(runs["epochs2"])) == sorted(everything * 2)
    assert _ids(runs["drop_last"]) == _ids(stored)[:8]
    assert sorted(_ids(runs["predicate"])) == everything[::2]  # our in_lambda, as petastorm's predicate
    for batch in runs["transform"]:  # our TransformSpec became petastorm's transform_spec
        assert sorted(batch) == ["id", "ratio", "twice"]
        assert np.array_equal(batch["twice"], batch["id"] * 2)
    assert sorted(_ids(runs["transform"])) == everything
    plain = runs["parquet"]  # make_batch_reader
    assert [int(x) for b in plain for x in b["x"]] == list(range(12))
    assert all(b["v"].shape[1:] == (3,) for b in plain)
    assert sorted(_ids(runs["process_pool"])) == everything


# ---- the default env ---------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("petastorm") is not None, reason="petastorm is installed here")
def test_engine_petastorm_without_petastorm_names_the_extra(tmp_path):
    with pytest.raises(ConfigError, match=r"\.\[petastorm\]"):
        pipeline.open_loader(tmp_path, engine="petastorm")


def test_the_default_env_has_no_petastorm():
    default_env = (REPO / ".venv").resolve()
    if Path(sys.prefix).resolve() != default_env and os.environ.get("PIPELINE_PETASTORM_PYTHON") is None:
        pytest.skip("not running in make's default .venv")
    assert importlib.util.find_spec("petastorm") is None, "the default install must not bring petastorm"
