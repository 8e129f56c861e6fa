"""HDF5 conversion: metadata mapping (pure), Spark conversion with read-back, bad input, CLI."""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from urllib.parse import urlparse

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.convert.common import ConvertConfig
from pipeline.convert.hdf5 import Hdf5Options, convert_hdf5
from pipeline.convert.hdf5_schema import Hdf5Dataset, field_name, map_fields, plan_slices, select_datasets
from pipeline.dataset import list_dataset_files, read_provenance, read_unischema
from pipeline.errors import InputError
from pipeline.inspect import inspect_dataset
from tests.conftest import REPO

COMPOUND = np.dtype([("a", ">i4"), ("name", "S3"), ("p", "<f4", (2,)), ("vs", h5py.string_dtype())])

# field -> (dataset, member) for the sample file
FIELDS = {
    "images": ("/images", ()),
    "index": ("/index", ()),
    "grp_x": ("/grp/x", ()),
    "grp_sub_y": ("/grp/sub/y", ()),
    "flags": ("/flags", ()),
    "u16": ("/u16", ()),
    "u64": ("/u64", ()),
    "half": ("/half", ()),
    "cplx": ("/cplx", ()),
    "names": ("/names", ()),
    "vnames": ("/vnames", ()),
    "table_a": ("/table", ("a",)),
    "table_name": ("/table", ("name",)),
    "table_p": ("/table", ("p",)),
    "table_vs": ("/table", ("vs",)),
}


def write_sample(path: Path, n: int, first_index: int = 0) -> Path:
    """Several dtypes, shapes, chunkings, filters, groups, a compound, strings, big-endian values."""
    rng = np.random.default_rng(n)
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "images",
            data=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
            chunks=(min(n, 64), 8, 8, 3),
            compression="gzip",
        )
        f.create_dataset(
            "index", data=np.arange(first_index, first_index + n, dtype=np.int64), compression="lzf"
        )
        f.create_dataset(
            "grp/x",
            data=rng.normal(size=(n, 5)).astype(">f4"),
            chunks=(min(n, 100), 5),
            shuffle=True,
            compression="gzip",
        )
        f.create_dataset("grp/sub/y", data=rng.normal(size=n))  # contiguous float64
        f.create_dataset("flags", data=rng.integers(0, 2, n).astype(bool))
        f.create_dataset("u16", data=rng.integers(0, 65535, n, dtype=np.uint16), chunks=(min(n, 50),))
        f.create_dataset("u64", data=rng.integers(0, 2**63, n, dtype=np.uint64) * 2 + 1)
        f.create_dataset("half", data=rng.normal(size=(n, 2)).astype(np.float16))
        f.create_dataset("cplx", data=(rng.normal(size=n) + 1j * rng.normal(size=n)).astype(">c8"))
        f.create_dataset("names", data=np.array([f"n{i % 1000}".encode() for i in range(n)], dtype="S8"))
        f.create_dataset("vnames", data=[f"vé{i}" * (i % 4) for i in range(n)], dtype=h5py.string_dtype())
        table = np.zeros(n, dtype=COMPOUND)
        table["a"] = np.arange(n) * -3
        table["name"] = [f"t{i % 100}".encode() for i in range(n)]
        table["p"] = rng.normal(size=(n, 2))
        table["vs"] = [f"ü{i}".encode() for i in range(n)]
        f.create_dataset("table", data=table, chunks=(min(n, 32),))
        f.create_dataset("other", data=np.arange(n + 1))  # other first-axis length: left out
        f.create_dataset("scalar", data=3.5)  # 0-d: left out
    return path


def expected_columns(path: Path) -> dict[str, list]:
    """What h5py itself reads, field by field (strings decoded)."""
    out = {}
    with h5py.File(path, "r") as f:
        for name, (ds, member) in FIELDS.items():
            values = f[ds][...]
            for key in member:
                values = values[key]
            if values.dtype.kind in "SO":
                values = np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[object])(
                    values
                )
            out[name] = list(values)
    return out


def test_field_names_and_selection_rules():
    assert field_name("/grp/x") == "grp_x"
    assert field_name("/table", "pos x") == "table_pos_x"
    assert field_name("/3d/vol") == "f3d_vol"
    assert field_name("/class") == "class_" and field_name("/my data/x-y") == "my_data_x_y"
    infos = [
        Hdf5Dataset("/a", (10, 2), np.dtype("f4"), None, None),
        Hdf5Dataset("/b", (10,), np.dtype("i8"), None, None),
        Hdf5Dataset("/c", (7,), np.dtype("i8"), None, None),
        Hdf5Dataset("/d", (7, 3), np.dtype("i8"), None, None),
        Hdf5Dataset("/s", (), np.dtype("f8"), None, None),
    ]
    chosen, left = select_datasets("f.h5", infos)
    assert [d.path for d in chosen] == ["/a", "/b"]  # tie of two groups: the longer first axis wins
    assert left == [("/c", "first axis 7 != 10"), ("/d", "first axis 7 != 10"), ("/s", "scalar dataset")]
    chosen, _ = select_datasets("f.h5", [*infos, Hdf5Dataset("/e", (7,), np.dtype("u1"), None, None)])
    assert [d.path for d in chosen] == ["/c", "/d", "/e"]  # the largest group wins
    chosen, _ = select_datasets("f.h5", infos, ("d", "/c"))
    assert [d.path for d in chosen] == ["/d", "/c"]
    with pytest.raises(InputError, match=r"different first-axis lengths: /a \(10\), /c \(7\)"):
        select_datasets("f.h5", infos, ("a", "c"))
    with pytest.raises(InputError, match=r"f\.h5: no dataset '/zz'"):
        select_datasets("f.h5", infos, ("/zz",))


def test_dtype_mapping_rules_and_unique_names():
    specs, dropped = map_fields("f.h5", [Hdf5Dataset("/t", (4, 2), COMPOUND, None, None)])
    got = {s.name: (s.dtype.str, s.shape, s.codec) for s in specs}
    assert got == {
        "t_a": ("<i4", (2,), "ndarray"),
        "t_name": ("<U0", (2,), "ndarray"),
        "t_p": ("<f4", (2, 2), "ndarray"),
        "t_vs": ("<U0", (2,), "ndarray"),
    }
    assert dropped == []
    scalars, _ = map_fields(
        "f.h5", [Hdf5Dataset(f"/{k}", (4,), np.dtype(k), None, None) for k in (">u4", "u8", "f2", "c16", "?")]
    )
    assert [(s.dtype.str, s.codec) for s in scalars] == [
        ("<u4", "scalar"),
        ("<u8", "ndarray"),
        ("<f2", "ndarray"),
        ("<c16", "ndarray"),
        ("|b1", "scalar"),
    ]
    rules, _ = map_fields(
        "f.h5",
        [
            Hdf5Dataset("/ref", (4,), h5py.ref_dtype, None, None),
            Hdf5Dataset("/op", (4,), np.dtype("V8"), None, None),
            Hdf5Dataset("/vl", (4,), h5py.vlen_dtype(">i4"), None, None),
            Hdf5Dataset("/ld", (4,), np.dtype(np.longdouble), None, None),
            Hdf5Dataset("/en", (4,), h5py.enum_dtype({"A": 0, "B": 7}, basetype=">i2"), None, None),
            Hdf5Dataset("/dt", (4,), np.dtype("M8[s]"), None, None),
        ],
    )
    assert [(s.name, s.rule, s.dtype.str, s.shape) for s in rules] == [
        ("ref", "ref", "<U0", ()),
        ("op", "opaque", "|u1", (8,)),
        ("vl", "ragged", "<i4", (None,)),
        ("ld", "longdouble", "<f8", ()),
        ("en", "plain", "<i2", ()),
        ("dt", "datetime", "<i8", ()),
    ]
    assert rules[4].labels == (("A", 0), ("B", 7))
    # nothing convertible: a clean error naming the dataset and the reason
    with pytest.raises(InputError, match=r"f\.h5: nothing convertible left \(/bad: region reference"):
        map_fields("f.h5", [Hdf5Dataset("/bad", (4,), h5py.regionref_dtype, None, None)])
    # a 2-D vlen dataset is left out, with the reason
    _, dropped = map_fields(
        "f.h5",
        [
            Hdf5Dataset("/x", (4,), np.dtype("i4"), None, None),
            Hdf5Dataset("/g", (4, 2), h5py.vlen_dtype("i4"), None, None),
        ],
    )
    assert dropped == [
        (
            "/g",
            "variable-length sequences in a dataset of row shape (2,) (only 1-D datasets become ragged fields)",
        )
    ]


def test_colliding_names_get_numbered_suffixes():
    infos = [
        Hdf5Dataset(p, (4,), np.dtype("i4"), None, None)
        for p in ("/<c16", "/>c16", "/a/b", "/a_b", "/X", "/x")
    ]
    compound = np.dtype([("a b", "i4"), ("a_b", "i4"), ("A-B", "i4")])
    infos.append(Hdf5Dataset("/t", (4,), compound, None, None))
    infos.append(Hdf5Dataset("/t_a_b", (4,), np.dtype("i4"), None, None))
    specs, _ = map_fields("f.h5", infos)
    assert [s.name for s in specs] == [
        "c16",
        "c16_2",
        "a_b",
        "a_b_2",
        "X",
        "x_2",
        "t_a_b",
        "t_a_b_2",
        "t_A_B_3",
        "t_a_b_4",
    ]
    # the loader adds <ragged>_lengths: a field of that name moves out of the way
    specs, _ = map_fields(
        "f.h5",
        [
            Hdf5Dataset("/v", (4,), h5py.vlen_dtype("i4"), None, None),
            Hdf5Dataset("/v_lengths", (4,), np.dtype("i8"), None, None),
        ],
    )
    assert [s.name for s in specs] == ["v", "v_lengths_2"]


def test_slices_are_aligned_to_chunks():
    plan = plan_slices("f", 1000, row_bytes=10, chunk_rows=[64, 96], target_bytes=5000)
    # 500 rows wanted, lcm(64, 96) = 192 -> steps of 384 rows
    assert [(s.start, s.stop) for s in plan] == [(0, 384), (384, 768), (768, 1000)]
    assert plan_slices("f", 10, 10, [64], target_bytes=1) == [
        plan_slices("f", 10, 10, [64], target_bytes=1)[0]
    ]
    assert [(s.start, s.stop) for s in plan_slices("f", 7, 4, [], target_bytes=12)] == [
        (0, 3),
        (3, 6),
        (6, 7),
    ]
    assert plan_slices("f", 0, 4, [], target_bytes=12) == []
    for rows, chunks, target in [(999, [7], 300), (50, [3, 4], 17), (10_000, [128], 10**6)]:
        plan = plan_slices("f", rows, 1, chunks, target_bytes=target)
        assert plan[0].start == 0 and plan[-1].stop == rows
        assert all(
            a.stop == b.start and a.stop % np.lcm.reduce(chunks) == 0 for a, b in itertools.pairwise(plan)
        )
    # lcm(100, 64) = 1600 is longer than a slice: follow the first (largest) dataset's chunks
    plan = plan_slices("f", 1000, 1, [100, 64], target_bytes=250)
    assert [(s.start, s.stop) for s in plan][:2] == [(0, 200), (200, 400)] and plan[-1].stop == 1000


def read_pyarrow_rows(url: str) -> dict[str, list]:
    """Rows in file order, decoded by hand: np.load for ndarray fields, plain values for scalars."""
    schema = read_unischema(url)
    out: dict[str, list] = {name: [] for name in schema.fields}
    for path in list_dataset_files(url).files:
        table = pq.read_table(path)
        for name, field in schema.fields.items():
            values = table[name].to_pylist()
            if type(field.codec).__name__ == "NdarrayCodec":
                values = [np.load(io.BytesIO(v)) for v in values]
            out[name].extend(values)
    return out


def assert_same(got, want, name):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, name
    if want.dtype.kind in "fc":
        assert got.dtype == want.dtype.newbyteorder("="), name
    np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.spark
def test_sample_files_read_back_equal_to_h5py(spark, tmp_path):
    src = tmp_path / "src"
    (src / "more").mkdir(parents=True)
    big = write_sample(src / "a.h5", 1500)
    small = write_sample(src / "more" / "b.hdf5", 7, first_index=100_000)
    (src / "notes.txt").write_text("not HDF5, and not picked up: wrong suffix")
    result = convert_hdf5(
        spark, src, tmp_path / "out", Hdf5Options(slice_mb=0.1), settings=ConvertConfig(partitions=2)
    )

    assert (result.rows, result.skipped, result.files) == (1507, 0, 2)
    assert result.extra["slices"] >= 3  # the big file is read in chunk-aligned slices by two tasks
    assert result.extra["left_out"] == [
        {"dataset": "/other", "reason": "first axis 1501 != 1500"},
        {"dataset": "/scalar", "reason": "scalar dataset"},
    ]
    expected = {k: expected_columns(big)[k] + expected_columns(small)[k] for k in FIELDS}

    by_arrow = read_pyarrow_rows(result.output)  # plan order: files sorted, then first-axis order
    assert set(by_arrow) == set(FIELDS)
    for name in FIELDS:
        assert_same(by_arrow[name], expected[name], name)

    from tests.datasets import make_reader

    position = {int(i): k for k, i in enumerate(expected["index"])}
    seen = 0
    with make_reader(result.output, workers_count=1, num_epochs=1) as reader:
        for row in reader:
            k = position[int(row.index)]
            for name in FIELDS:
                assert_same(getattr(row, name), expected[name][k], name)
            seen += 1
    assert seen == 1507

    info = inspect_dataset(result.output)
    assert (info.fields["images"].dtype, info.fields["images"].shape, info.fields["images"].codec) == (
        "uint8",
        (8, 8, 3),
        "ndarray",
    )
    assert (info.fields["u16"].dtype, info.fields["u16"].codec) == ("uint16", "scalar")
    assert info.fields["vnames"].dtype == "str"
    assert read_provenance(result.output)["fields"]["table_p"] == "/table.p"
    spark_rows = spark.read.parquet(result.output).select("index", "u16", "vnames").orderBy("index").collect()
    assert [r.u16 for r in spark_rows] == [int(v) for v in expected["u16"]]
    assert [r.vnames for r in spark_rows] == expected["vnames"]


def write_bad_folder(root: Path) -> None:
    root.mkdir()
    write_sample(root / "a_good.h5", 20)
    (root / "b_not_hdf5.h5").write_bytes(b"this is plain text, not HDF5\n" * 10)
    data = (root / "a_good.h5").read_bytes()
    (root / "c_truncated.h5").write_bytes(data[: len(data) // 3])
    with h5py.File(root / "d_other_layout.h5", "w") as f:
        f["index"] = np.arange(5, dtype=np.int32)


@pytest.mark.spark
def test_skip_mode_reports_bad_files_and_keeps_the_good_ones(spark, tmp_path):
    write_bad_folder(tmp_path / "src")
    result = convert_hdf5(
        spark,
        tmp_path / "src",
        tmp_path / "out",
        Hdf5Options(datasets=("/index", "/names")),
        settings=ConvertConfig(on_error="skip"),
    )
    assert (result.rows, result.skipped) == (20, 3)
    rows = read_pyarrow_rows(result.output)
    assert rows["index"] == list(range(20)) and set(rows) == {"index", "names"}
    report_path = urlparse(result.skipped_report).path  # a path or a file: URL
    report = [json.loads(line) for line in Path(report_path).read_text().splitlines()]
    reasons = {Path(r["source"]).name: r["reason"] for r in report}
    assert sorted(reasons) == ["b_not_hdf5.h5", "c_truncated.h5", "d_other_layout.h5"]
    assert "not an HDF5 file" in reasons["b_not_hdf5.h5"]
    assert "no dataset '/names'" in reasons["d_other_layout.h5"]


def test_fail_mode_and_bad_dtypes_stop_before_spark(tmp_path):
    write_bad_folder(tmp_path / "src")
    with pytest.raises(InputError, match=r"b_not_hdf5\.h5 is not an HDF5 file") as info:
        convert_hdf5(None, tmp_path / "src", tmp_path / "out")  # fails while planning: no Spark needed
    assert "--on-error skip" in str(info.value)
    with h5py.File(tmp_path / "refs.h5", "w") as f:
        f["x"] = np.arange(3)
        f.create_dataset("refs", (3,), dtype=h5py.regionref_dtype)
    with pytest.raises(InputError, match=r"refs\.h5: dataset /refs cannot be converted: region reference"):
        convert_hdf5(None, tmp_path / "refs.h5", tmp_path / "out", Hdf5Options(datasets=("x", "refs")))
    with h5py.File(tmp_path / "snappy.h5", "w") as f:  # a filter id no installed plugin decodes
        f.create_dataset("x", data=np.arange(8), chunks=(4,), compression=32003, allow_unknown_filter=True)
    with pytest.raises(
        InputError, match=r"snappy\.h5: dataset /x is compressed with HDF5 filter 32003 \(Snappy\)"
    ):
        convert_hdf5(None, tmp_path / "snappy.h5", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    cmd = [sys.executable, "-m", "pipeline.cli", "convert", "hdf5", *args, "--master", "local[1]"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)


def test_cli_fail_names_the_file(tmp_path):
    write_bad_folder(tmp_path / "src")
    dest = tmp_path / "out"
    failed = run_cli(str(tmp_path / "src"), str(dest))
    assert failed.returncode == 2, failed.stderr
    message = "".join(failed.stderr[failed.stderr.rindex("error: ") :].split())  # the CLI wraps lines
    assert "b_not_hdf5.h5isnotanHDF5file" in message and "Traceback" not in failed.stderr
    assert not dest.exists()


@pytest.mark.spark
def test_cli_json_with_datasets(spark, tmp_path, capsys):
    from pipeline.cli import main

    write_sample(tmp_path / "one.h5", 20)
    write_sample(tmp_path / "two.h5", 5, first_index=20)
    (tmp_path / "three.hdf5").write_text("not matched by the glob")
    dest = tmp_path / "out"
    src = str(tmp_path / "*.h5")  # a glob source
    assert main(["convert", "hdf5", src, str(dest), "--datasets", "/images,grp_x", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["rows"], out["output"]) == (25, "file://" + str(dest)) and out["seconds"] > 0
    assert set(inspect_dataset(dest).fields) == {"images", "grp_x"}


def test_shipped_conf_matches_the_defaults():
    path = REPO / "conf" / "convert_hdf5.yaml"
    assert load_config(Hdf5Options, path) == Hdf5Options()
    keys = {line.split(":")[0] for line in path.read_text().splitlines() if line and line[0].isalpha()}
    assert {f.name for f in fields(Hdf5Options)} == keys


def test_fast_npy_rows_are_the_bytes_ndarray_codec_writes():
    from pipeline.convert.hdf5_read import _npy_rows
    from pipeline.format import NdarrayCodec, UnischemaField

    arrays = [
        np.arange(24, dtype=np.float32).reshape(4, 2, 3),
        np.arange(3, dtype=np.complex64),
        np.zeros((3, 0), np.uint8),
        np.array([True, False]),
        np.arange(5, dtype=np.uint64),
    ]
    for arr in arrays:
        field = UnischemaField("x", arr.dtype.type, arr.shape[1:], NdarrayCodec(), False)
        assert _npy_rows(arr) == [bytes(NdarrayCodec().encode(field, np.asarray(r))) for r in arr], arr.dtype


def test_filter_errors_name_the_filter_and_the_package():
    import h5py

    from pipeline.convert.hdf5_filters import missing_filter_error, register_plugins

    assert register_plugins()  # hdf5plugin is a dependency: its filters decode once imported
    assert all(h5py.h5z.filter_avail(code) for code in (307, 32001, 32004, 32008, 32015, 32026))
    blosc = str(missing_filter_error("a.h5", "/x", 32001, "blosc"))
    assert "a.h5: dataset /x is compressed with HDF5 filter 32001 (Blosc)" in blosc
    assert "`pip install hdf5plugin` (>= 4.0) provides it" in blosc
    lzo = str(missing_filter_error("a.h5", "/x", 305, "lzo"))
    assert "filter 305 (LZO)" in lzo and "ptrepack" in lzo
    unknown = str(missing_filter_error("a.h5", "/x", 40123, "my_filter"))
    assert "filter 40123 (my_filter)" in unknown and "HDF5_PLUGIN_PATH" in unknown
