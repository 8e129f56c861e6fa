"""A broad corpus of small HDF5 files in the layouts other software writes, for conversion tests.

Each ``write_*`` function writes one file (or a few) under a folder with h5py, or with
PyTables / pandas when ``tables`` is installed, and returns the paths of the files meant to be
converted (helper files such as an external link's target are written beside them). Every file
is tiny (a few KB). :func:`write_corpus` writes them all; :func:`pytables_samples` lists the
sample files that the ``tables`` wheel ships (written by many HDF5 and PyTables versions).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

__all__ = ["WRITERS", "pytables_samples", "write_corpus"]

N = 12
RNG = np.random.default_rng(7)


def _f(path: Path, **kw) -> h5py.File:
    return h5py.File(path, "w", **kw)


def write_basic(d: Path) -> list[Path]:
    p = d / "basic.h5"
    with _f(p) as f:
        f["i8"] = np.arange(N, dtype=np.int8)
        f["i64"] = np.arange(N, dtype=np.int64) * 10**12
        f["u8"] = np.arange(N, dtype=np.uint8)
        f["u32"] = np.arange(N, dtype=np.uint32) * 7
        f["u64"] = np.arange(N, dtype=np.uint64) + 2**63
        f["f16"] = np.linspace(0, 1, N).astype(np.float16)
        f["f32"] = RNG.normal(size=(N, 3)).astype(np.float32)
        f["f64"] = RNG.normal(size=N)
        f["flag"] = RNG.integers(0, 2, N).astype(bool)
    return [p]


def write_images(d: Path) -> list[Path]:
    p = d / "images.h5"
    with _f(p) as f:
        f.create_dataset(
            "x",
            data=RNG.integers(0, 256, (N, 16, 16, 3), dtype=np.uint8),
            chunks=(4, 16, 16, 3),
            compression="gzip",
            compression_opts=9,
        )
        f.create_dataset("y", data=RNG.integers(0, 10, N), dtype="i8")
        f.create_dataset("mask", data=RNG.integers(0, 2, (N, 16, 16)).astype(bool), compression="lzf")
    q = d / "mnist_like.hdf5"
    with _f(q) as f:
        for split, n in (("train", N), ("test", 5)):
            f.create_dataset(f"{split}/images", data=RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8))
            f.create_dataset(f"{split}/labels", data=RNG.integers(0, 10, n, dtype=np.uint8))
    return [p, q]


def write_groups_and_links(d: Path) -> list[Path]:
    target = d / "link_target.hdf5.part"
    with _f(target) as f:
        f["ext"] = np.arange(N)
    p = d / "links.h5"
    with _f(p) as f:
        f["a/b/c/x"] = np.arange(N, dtype=np.float32)
        f["a/y"] = np.arange(N) * 2
        f["soft"] = h5py.SoftLink("/a/y")
        f["hard"] = f["a/b/c/x"]
        f["broken_soft"] = h5py.SoftLink("/nowhere")
        f["external"] = h5py.ExternalLink(target.name, "/ext")
        f["broken_external"] = h5py.ExternalLink("missing_file.h5", "/x")
    q = d / "external_only.h5"
    with _f(q) as f:
        f["ext"] = h5py.ExternalLink(target.name, "/ext")
        f["local"] = np.arange(N)
    return [p, q]


def write_compound(d: Path) -> list[Path]:
    p = d / "compound.h5"
    point = np.dtype([("x", "<f4"), ("y", "<f4")])
    dt = np.dtype([("id", "<i4"), ("name", "S8"), ("pos", point), ("v", "<f8", (3,)), ("ok", "?")])
    arr = np.zeros(N, dt)
    arr["id"] = np.arange(N)
    arr["name"] = [f"n{i}".encode() for i in range(N)]
    arr["pos"]["x"] = np.arange(N)
    arr["v"] = RNG.normal(size=(N, 3))
    with _f(p) as f:
        f.create_dataset("table", data=arr, chunks=(4,), compression="gzip")
    q = d / "compound_bigendian.h5"
    be = np.dtype([("a", ">i8"), ("b", ">f4"), ("c", ">c16"), ("s", "S4"), ("arr", ">u2", (2, 2))])
    arr2 = np.zeros(N, be)
    arr2["a"] = np.arange(N) - 5
    arr2["b"] = np.arange(N) / 4
    arr2["c"] = np.arange(N) * (1 + 1j)
    with _f(q) as f:
        f["rec"] = arr2
    r = d / "collisions.h5"
    with _f(r) as f:
        f["<c16"] = np.arange(N, dtype="<c16")
        f[">c16"] = np.arange(N, dtype=">c16")
        f["X"] = np.arange(N)
        f["x"] = np.arange(N) + 1
        cdt = np.dtype([("a b", "i4"), ("a_b", "i4"), ("A-B", "i4")])
        f["t"] = np.zeros(N, cdt)
        f["t_a_b"] = np.arange(N)
    return [p, q, r]


def write_filters(d: Path) -> list[Path]:
    import hdf5plugin

    out = []
    data = np.tile(np.arange(64, dtype=np.float32), (N, 1))
    filters = {
        "gzip": {"compression": "gzip", "compression_opts": 4},
        "lzf": {"compression": "lzf"},
        "shuffle_fletcher": {"compression": "gzip", "shuffle": True, "fletcher32": True},
        "scaleoffset": {"scaleoffset": 3},
        "blosc_lz4": dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)),
        "blosc_zstd": dict(hdf5plugin.Blosc(cname="zstd", clevel=3)),
        "blosc2": dict(hdf5plugin.Blosc2(cname="zstd")),
        "zstd": dict(hdf5plugin.Zstd()),
        "bitshuffle": dict(hdf5plugin.Bitshuffle()),
        "lz4": dict(hdf5plugin.LZ4()),
        "bzip2": dict(hdf5plugin.BZip2()),
    }
    if h5py.h5z.filter_avail(h5py.h5z.FILTER_SZIP):
        filters["szip"] = {"compression": "szip"}
    for name, kw in filters.items():
        p = d / f"filter_{name}.h5"
        with _f(p) as f:
            f.create_dataset("x", data=data, chunks=(4, 64), **kw)
            f.create_dataset(
                "i", data=np.arange(N), chunks=(N,), **({} if name in ("scaleoffset", "szip") else kw)
            )
        out.append(p)
    p = d / "filter_unknown_snappy.h5"  # a filter id no installed plugin decodes
    with _f(p) as f:
        f.create_dataset("x", data=np.arange(N), chunks=(4,), compression=32003, allow_unknown_filter=True)
    out.append(p)
    return out


def write_endian_and_numbers(d: Path) -> list[Path]:
    p = d / "bigendian.h5"
    with _f(p) as f:
        for t in (">i2", ">i4", ">u8", ">f4", ">f8", ">c8"):
            f[t.replace(">", "be_")] = np.arange(N).astype(t)
    q = d / "complex.h5"
    with _f(q) as f:
        f["c64"] = (np.arange(N) + 1j).astype(np.complex64)
        f["c128"] = (RNG.normal(size=(N, 2)) + 1j).astype(np.complex128)
    r = d / "enum_bool.h5"
    with _f(r) as f:
        f.create_dataset(
            "color",
            data=np.arange(N) % 3,
            dtype=h5py.enum_dtype({"RED": 0, "GREEN": 1, "BLUE": 2}, basetype="u1"),
        )
        f["flag"] = np.arange(N) % 2 == 0
    s = d / "bitfield.h5"
    with _f(s) as f:
        ds = h5py.h5d.create(f.id, b"bits", h5py.h5t.STD_B16BE, h5py.h5s.create_simple((N,)))
        ds.write(h5py.h5s.ALL, h5py.h5s.ALL, np.arange(N, dtype=">u2"), mtype=h5py.h5t.STD_B16BE)
    return [p, q, r, s]


def write_vlen_and_strings(d: Path) -> list[Path]:
    p = d / "vlen.h5"
    with _f(p) as f:
        f.create_dataset(
            "ints",
            data=np.array([np.arange(i % 4) for i in range(N)], dtype=object),
            dtype=h5py.vlen_dtype("i4"),
        )
        f.create_dataset(
            "floats_be",
            data=np.array([np.arange(i % 3, dtype=">f8") / 2 for i in range(N)], dtype=object),
            dtype=h5py.vlen_dtype(">f8"),
        )
        f.create_dataset("words", data=[f"wörd{i}" * (i % 3) for i in range(N)], dtype=h5py.string_dtype())
        f.create_dataset("ascii", data=[f"a{i}".encode() for i in range(N)], dtype=h5py.string_dtype("ascii"))
        f.create_dataset("grid", (N, 2), dtype=h5py.vlen_dtype("i2"))  # 2-D vlen: left out
        cdt = np.dtype([("k", "i4"), ("seq", h5py.vlen_dtype("f4"))])
        rec = np.zeros(N, cdt)
        rec["k"] = np.arange(N)
        for i in range(N):
            rec["seq"][i] = np.arange(i % 5, dtype="f4")
        f["rec"] = rec
    q = d / "strings.h5"
    with _f(q) as f:
        f["fixed"] = np.array([f"s{i}".encode() for i in range(N)], dtype="S6")
        utf8 = f.create_dataset("utf8_fixed", (N,), dtype=h5py.string_dtype("utf-8", 8))
        utf8[...] = np.array(
            [("é" * (i % 3)).encode() for i in range(N)], dtype=h5py.string_dtype("utf-8", 8)
        )
        f["pairs"] = np.array([[b"a", b"bb"]] * N, dtype="S2")
    r = d / "vlen_2d_only.h5"
    with _f(r) as f:
        f.create_dataset("grid", (N, 2), dtype=h5py.vlen_dtype("i2"))
    return [p, q, r]


def write_scalars_attrs(d: Path) -> list[Path]:
    p = d / "scalars_attrs.h5"
    with _f(p) as f:
        f["x"] = np.arange(N)
        f["pi"] = 3.14
        f["label"] = "a scalar string"
        f["empty"] = h5py.Empty("f4")
        f.attrs["title"] = "corpus"
        f.attrs["version"] = np.int32(3)
        f.attrs["scale"] = np.array([1.0, 2.0])
        f.attrs["flags"] = np.array([True, False])
        f.attrs["nan"] = np.nan
        f.attrs["bytes"] = np.bytes_(b"\xff\xfe raw")
        f.attrs["none"] = h5py.Empty("i4")
        f["x"].attrs["unit"] = "m/s"
        f["x"].attrs.create("vlen", data=[np.arange(2), np.arange(3)], dtype=h5py.vlen_dtype("i4"))
        f["x"].attrs["ref"] = f["x"].ref
    q = d / "huge_attrs.h5"
    with _f(q, libver="latest") as f:  # dense attribute storage: attributes over 64 KB
        f["x"] = np.arange(N)
        f.attrs["big"] = np.arange(100_000, dtype=np.float64)
        f.attrs["long_text"] = "x" * 50_000
        for i in range(300):
            f["x"].attrs[f"a{i}"] = i
    r = d / "only_scalars.h5"
    with _f(r) as f:
        f["a"] = 1
        f["b"] = "text"
    s = d / "no_datasets.h5"
    with _f(s) as f:
        f.create_group("empty_group").attrs["note"] = "nothing here"
    return [p, q, r, s]


def write_shapes_layouts(d: Path) -> list[Path]:
    p = d / "empty_and_zero.h5"
    with _f(p) as f:
        f["null"] = h5py.Empty("i8")
        f["x"] = np.arange(N)
        f["zero"] = np.zeros((0, 3))
    q = d / "zero_rows.h5"
    with _f(q) as f:
        f["a"] = np.zeros((0,), np.int32)
        f["b"] = np.zeros((0, 4), np.float32)
    r = d / "layouts.h5"
    with _f(r, libver="latest") as f:
        f.create_dataset("resizable", data=np.arange(N), chunks=(5,), maxshape=(None,))
        f.create_dataset("fill", (N, 3), dtype="f4", fillvalue=-1.0, chunks=(7, 3))
        f["fill"][:4] = 1
        f.create_dataset("multi", data=RNG.normal(size=(N, 2, 3, 4)).astype(np.float32))
        f.create_dataset("contig", data=np.arange(N, dtype=np.uint16))
    s = d / "userblock.h5"
    with h5py.File(s, "w", userblock_size=512, libver="earliest") as f:
        f["x"] = np.arange(N)
    t = d / "virtual.h5"
    parts = []
    for k in range(2):
        part = d / f"vds_src{k}.hdf5.part"
        with _f(part) as f:
            f["data"] = np.arange(6) + 6 * k
        parts.append(part)
    layout = h5py.VirtualLayout(shape=(N,), dtype="i8")
    for k, part in enumerate(parts):
        layout[6 * k : 6 * k + 6] = h5py.VirtualSource(part.name, "data", shape=(6,))
    with _f(t) as f:
        f.create_virtual_dataset("vds", layout, fillvalue=-1)
    u = d / "dimension_scales.h5"
    with _f(u) as f:
        f["t"] = np.arange(N, dtype=np.float64)
        f["signal"] = RNG.normal(size=N)
        f["t"].make_scale("time")
        f["signal"].dims[0].attach_scale(f["t"])
    return [p, q, r, s, t, u]


def write_exotic_types(d: Path) -> list[Path]:
    out = []
    p = d / "time_typed.h5"
    with _f(p) as f:
        f["x"] = np.arange(N)
        # HDF5 has no conversion to time types: write the stored bytes, as PyTables lays them out
        # (Time32: int32 seconds; Time64: seconds << 32 | microseconds)
        seconds = np.arange(N) * 86400 + 1_700_000_000
        for name, t, raw in (
            (b"t32be", h5py.h5t.UNIX_D32BE, seconds.astype(">i4")),
            (b"t64le", h5py.h5t.UNIX_D64LE, ((seconds << 32) | 250_000).astype("<i8")),
        ):
            ds = h5py.h5d.create(f.id, name, t, h5py.h5s.create_simple((N,)))
            ds.write(h5py.h5s.ALL, h5py.h5s.ALL, raw, mtype=t)
    out.append(p)
    p = d / "time_only.h5"
    with _f(p) as f:
        ds = h5py.h5d.create(f.id, b"t", h5py.h5t.UNIX_D64BE, h5py.h5s.create_simple((N,)))
        ds.write(
            h5py.h5s.ALL,
            h5py.h5s.ALL,
            ((np.arange(N) << 32) | 500_000).astype(">i8"),
            mtype=h5py.h5t.UNIX_D64BE,
        )
    out.append(p)
    p = d / "longdouble_exact.h5"
    with _f(p) as f:
        f["ld"] = (np.arange(N) / 4).astype(np.longdouble)
        f["ldc"] = (np.arange(N) / 8 + 0.5j).astype(np.clongdouble)
    out.append(p)
    p = d / "longdouble_inexact.h5"
    with _f(p) as f:
        f["ld"] = np.longdouble(1) / np.arange(1, N + 1, dtype=np.longdouble) / 3
    out.append(p)
    p = d / "references.h5"
    with _f(p) as f:
        f["x"] = np.arange(N)
        f["g/y"] = np.arange(N)
        f["refs"] = [f["x"].ref if i % 3 else (f["g/y"].ref if i % 2 else h5py.Reference()) for i in range(N)]
        f.create_dataset("regions", data=[f["x"].regionref[0:2]] * N, dtype=h5py.regionref_dtype)
    out.append(p)
    p = d / "regionrefs_only.h5"
    with _f(p) as f:
        f["s"] = 1
        f.create_dataset("regions", data=[f["s"].regionref[()]] * N, dtype=h5py.regionref_dtype)
    out.append(p)
    p = d / "opaque.h5"
    with _f(p) as f:
        f["blob"] = np.array([bytes([i, 255 - i, 0, 1]) for i in range(N)], dtype="V4")
        f.create_dataset("tagged", data=np.array([b"abcdef"] * N, dtype="V6").view(h5py.opaque_dtype("V6")))
    out.append(p)
    p = d / "datetime64.h5"
    with _f(p) as f:
        f["when"] = np.arange(N).astype("datetime64[s]").astype(h5py.opaque_dtype("M8[s]"))
        f["span"] = np.arange(N).astype("timedelta64[ms]").astype(h5py.opaque_dtype("m8[ms]"))
    out.append(p)
    return out


def write_domain_layouts(d: Path) -> list[Path]:
    """Layouts of common writers: NeXus, Keras weights, audio clips, HDF-EOS-like grids."""
    p = d / "nexus_like.nxs.h5"
    with _f(p) as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.attrs.update({"NX_class": "NXdata", "signal": "counts", "axes": ["frame", "."]})
        data["counts"] = RNG.integers(0, 1000, (N, 32), dtype=np.uint32)
        data["frame"] = np.arange(N, dtype=np.float64)
        data["frame"].attrs["units"] = "s"
        entry["title"] = "scan 1"
    q = d / "keras_like_weights.h5"
    with _f(q) as f:
        f.attrs["keras_version"] = "3.0.0"
        f.attrs["backend"] = "torch"
        for layer, shape in (("dense", (16, 8)), ("dense_1", (16, 4)), ("out", (4, 2))):
            g = f.create_group(f"model_weights/{layer}/{layer}")
            g["kernel:0"] = RNG.normal(size=shape).astype(np.float32)
            g["bias:0"] = np.zeros(shape[1], np.float32)
    r = d / "audio_clips.h5"
    with _f(r) as f:
        f.attrs["sample_rate"] = 16000
        f.create_dataset(
            "audio",
            data=RNG.integers(-(2**15), 2**15, (N, 1600), dtype=np.int16),
            chunks=(4, 1600),
            compression="gzip",
        )
        f.create_dataset("speaker", data=[f"spk{i % 3}" for i in range(N)], dtype=h5py.string_dtype())
        f.create_dataset("duration", data=np.full(N, 0.1, dtype=np.float32))
    s = d / "hdfeos_like.he5"
    with _f(s) as f:
        grid = f.create_group("HDFEOS/GRIDS/Temperature/Data Fields")
        grid["Temperature"] = RNG.normal(280, 5, (N, 20)).astype(">f4")
        grid["Quality Flag"] = RNG.integers(0, 4, (N, 20), dtype=np.uint8)
        grid["Temperature"].attrs["_FillValue"] = np.float32(-9999)
        f.create_group("HDFEOS INFORMATION").attrs["HDFEOSVersion"] = "HDFEOS_5.1.15"
    return [p, q, r, s]


def write_bad(d: Path) -> list[Path]:
    p = d / "not_hdf5.h5"
    p.write_bytes(b"plain text, not HDF5\n" * 20)
    q = d / "truncated.h5"
    src = d / "basic.h5"
    data = src.read_bytes()
    q.write_bytes(data[: len(data) // 3])
    r = d / "latin1_strings.h5"
    with _f(r) as f:
        f["s"] = np.array([b"caf\xe9"] * N, dtype="S4")
    return [p, q, r]


def write_pytables(d: Path) -> list[Path]:
    """Layouts PyTables and pandas write (skipped when ``tables`` is not installed)."""
    if importlib.util.find_spec("tables") is None:
        return []
    import pandas as pd
    import tables

    class Particle(tables.IsDescription):
        name = tables.StringCol(16)
        idnumber = tables.Int64Col()
        energy = tables.Float64Col()
        pressure = tables.Float32Col(shape=(2,))
        grid = tables.UInt16Col(shape=(2, 2))

    out = []
    for label, filters in (
        ("plain", None),
        ("zlib", tables.Filters(complevel=5, complib="zlib", shuffle=True)),
        ("blosc", tables.Filters(complevel=5, complib="blosc:lz4", shuffle=True)),
        ("blosc2", tables.Filters(complevel=5, complib="blosc2:zstd")),
        ("bzip2", tables.Filters(complevel=5, complib="bzip2")),
    ):
        p = d / f"pytables_{label}.h5"
        with tables.open_file(str(p), "w", title="corpus") as h:
            t = h.create_table("/detector", "readout", Particle, createparents=True, filters=filters)
            row = t.row
            for i in range(N):
                row["name"] = f"p{i}"
                row["idnumber"] = i
                row["energy"] = i * 1.5
                row["pressure"] = (i, -i)
                row.append()
            t.flush()
        out.append(p)
    p = d / "pytables_arrays.h5"
    with tables.open_file(str(p), "w") as h:
        h.create_array("/", "array", np.arange(N, dtype=">i4"))
        c = h.create_carray(
            "/", "carray", tables.Float32Atom(), (N, 4), filters=tables.Filters(5, "blosc:zstd")
        )
        c[:] = np.ones((N, 4))
        e = h.create_earray("/", "earray", tables.Int16Atom(), (0, 3))
        e.append(np.arange(N * 3, dtype=np.int16).reshape(N, 3))
        v = h.create_vlarray("/", "vlarray", tables.Int32Atom())
        for i in range(N):
            v.append(np.arange(i % 4))
        h.root._v_attrs.note = "arrays"
    out.append(p)
    p = d / "pytables_enum_time.h5"
    with tables.open_file(str(p), "w") as h:

        class Ev(tables.IsDescription):
            when = tables.Time64Col()
            stamp = tables.Time32Col()
            kind = tables.EnumCol(tables.Enum(["start", "stop"]), "start", base="uint8")
            ok = tables.BoolCol()
            z = tables.ComplexCol(itemsize=16)

        t = h.create_table("/", "events", Ev)
        row = t.row
        for i in range(N):
            row["when"] = 1.7e9 + i / 4
            row["stamp"] = 1_700_000_000 + i
            row["kind"] = i % 2
            row["z"] = i + 1j
            row.append()
        t.flush()
    out.append(p)
    p = d / "pandas_table.h5"
    frame = pd.DataFrame({"a": np.arange(N), "b": np.arange(N) / 2, "s": [f"r{i}" for i in range(N)]})
    frame.to_hdf(p, key="df", format="table")
    out.append(p)
    p = d / "pandas_fixed.h5"
    frame[["a", "b"]].to_hdf(p, key="df", format="fixed")
    out.append(p)
    return out


WRITERS: list[Callable[[Path], list[Path]]] = [
    write_basic,
    write_images,
    write_groups_and_links,
    write_compound,
    write_filters,
    write_endian_and_numbers,
    write_vlen_and_strings,
    write_scalars_attrs,
    write_shapes_layouts,
    write_exotic_types,
    write_domain_layouts,
    write_bad,
    write_pytables,
]


def write_corpus(folder: Path) -> list[Path]:
    """Write every corpus file into ``folder`` (created); returns the files to convert, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for writer in WRITERS:
        paths.extend(writer(folder))
    return sorted(paths)


def pytables_samples() -> list[Path]:
    """The ``.h5`` sample files in the installed ``tables`` wheel's tests (``[]`` without it)."""
    spec = importlib.util.find_spec("tables")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    return sorted(root.glob("tests/*.h5")) + sorted(root.glob("nodes/tests/*.h5"))
