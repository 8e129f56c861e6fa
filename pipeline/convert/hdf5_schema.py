"""HDF5 metadata -> dataset fields: discovery, selection, dtype mapping and chunk-aligned slices.

Only metadata is read here (``h5py`` opens the file; no dataset values are loaded), so the
driver can plan a conversion of any size. The values are read by Spark tasks
(:mod:`pipeline.convert.hdf5`), each over one :class:`Slice` of the first axis.

Mapping rules (one row per index along the first axis of the selected datasets):

* A dataset ``/grp/x`` becomes field ``grp_x`` (path parts joined with ``_``; characters that
  are not letters, digits or ``_`` become ``_``; a leading digit gets an ``f`` prefix).
* A compound dataset becomes one field per member, ``<dataset>_<member>`` (nested compounds
  recursively; array members add their shape after the dataset's own trailing shape).
* Numeric and bool values keep their dtype (byte order normalized to native) and the shape
  of one row (``dataset.shape[1:]``): scalars use petastorm's ``ScalarCodec``, everything else
  ``NdarrayCodec``. Spark has no unsigned, half or complex scalars, so ``uint64``, ``float16``
  and complex scalars are stored with ``NdarrayCodec`` too (shape ``()``), which keeps the dtype.
* Fixed- and variable-length strings become ``str`` fields (decoded as UTF-8).
* Anything else (references, opaque, variable-length sequences, enums over non-integers,
  ``float128``) is an :class:`~pipeline.errors.InputError` naming the file, dataset and dtype.
"""

from __future__ import annotations

import keyword
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import InputError

__all__ = [
    "DatasetInfo",
    "FieldSpec",
    "Slice",
    "discover_datasets",
    "field_name",
    "map_fields",
    "missing_filters",
    "plan_slices",
    "select_datasets",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What the driver knows about one HDF5 dataset (metadata only)."""

    path: str
    """Absolute path inside the file, e.g. ``/grp/x``."""
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...] | None
    compression: str | None
    filters: tuple[tuple[int, str], ...] = ()
    """HDF5 filter pipeline as ``(filter id, name)`` pairs, e.g. ``((2, "shuffle"), (1, "deflate"))``."""

    @property
    def rows(self) -> int:
        """Length of the first axis (``0`` for a scalar dataset)."""
        return self.shape[0] if self.shape else 0


@dataclass(frozen=True)
class FieldSpec:
    """One output field and where its values come from."""

    name: str
    dataset: str
    """HDF5 path of the source dataset."""
    member: tuple[str, ...]
    """Compound member path (empty for a plain dataset)."""
    dtype: np.dtype
    """Native-endian numpy dtype of the values (``<U0`` kind ``U`` for strings)."""
    shape: tuple[int, ...]
    """Shape of one row's value (``()`` for scalars)."""
    codec: str
    """``"scalar"`` or ``"ndarray"``."""


@dataclass(frozen=True)
class Slice:
    """Rows ``[start, stop)`` of the first axis of one file: the work of one Spark task."""

    file: str
    start: int
    stop: int


_NAME_BAD = re.compile(r"[^0-9A-Za-z_]")


def field_name(*parts: str) -> str:
    """Field name for a dataset path and member parts: ``("/grp/x", "a")`` -> ``"grp_x_a"``."""
    pieces = [p for part in parts for p in part.split("/") if p]
    name = _NAME_BAD.sub("_", "_".join(pieces)).strip("_") or "data"
    if name[0].isdigit():
        name = f"f{name}"
    return f"{name}_" if keyword.iskeyword(name) else name  # rows are namedtuples in make_reader


def _filters(dataset: Any) -> tuple[tuple[int, str], ...]:
    plist = dataset.id.get_create_plist()
    out = []
    for i in range(plist.get_nfilters()):
        code, _flags, _values, name = plist.get_filter(i)
        out.append((int(code), name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)))
    return tuple(out)


def missing_filters(info: DatasetInfo) -> list[tuple[int, str]]:
    """Filters of ``info`` that this HDF5 library cannot decode (e.g. Blosc without ``hdf5plugin``)."""
    import h5py

    return [(code, name) for code, name in info.filters if not h5py.h5z.filter_avail(code)]


def discover_datasets(h5file: Any) -> list[DatasetInfo]:
    """Every dataset of an open ``h5py.File`` (links followed once), sorted by path."""
    import h5py

    found: dict[str, DatasetInfo] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            path = "/" + name
            found[path] = DatasetInfo(
                path=path,
                shape=tuple(int(n) for n in obj.shape) if obj.shape is not None else (),
                dtype=obj.dtype,
                chunks=tuple(obj.chunks) if obj.chunks else None,
                compression=obj.compression,
                filters=_filters(obj),
            )

    h5file.visititems(visit)
    return [found[k] for k in sorted(found)]


def select_datasets(
    source: str, datasets: list[DatasetInfo], wanted: tuple[str, ...] | None = None
) -> tuple[list[DatasetInfo], list[tuple[str, str]]]:
    """Pick the datasets to convert.

    With ``wanted`` (``--datasets``): exactly those, given as HDF5 paths (``/grp/x`` or ``grp/x``)
    or field names (``grp_x``); they must share the first-axis length. Without it: among the
    datasets with at least one dimension, the largest group of equal first-axis length; a tie
    goes to the longer first axis. Scalar (0-d) datasets are never picked by default.

    Returns:
        The selection, and ``(path, why)`` for each dataset left out (logged by the caller).

    Raises:
        InputError: Nothing to convert, a requested dataset is missing, or lengths differ.
    """
    if wanted:
        by_key: dict[str, DatasetInfo] = {}
        for d in datasets:
            by_key.setdefault(d.path, d)
            by_key.setdefault(d.path.lstrip("/"), d)
            by_key.setdefault(field_name(d.path), d)
        missing = [w for w in wanted if w not in by_key]
        if missing:
            have = ", ".join(d.path for d in datasets) or "none"
            raise InputError(
                f"{source}: no dataset {missing[0]!r} (datasets: {have})",
                hint="pass --datasets with HDF5 paths such as /grp/x or field names such as grp_x",
            )
        chosen = list(dict.fromkeys(by_key[w] for w in wanted))
        scalars = [d.path for d in chosen if not d.shape]
        if scalars:
            raise InputError(f"{source}: dataset {scalars[0]} is a scalar (no first axis to index rows by)")
        lengths = {d.path: d.rows for d in chosen}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{p} ({n})" for p, n in lengths.items())
            raise InputError(
                f"{source}: the selected datasets have different first-axis lengths: {listed}",
                hint="rows are indexed along the first axis; pick datasets of equal length",
            )
        left = [(d.path, "not in --datasets") for d in datasets if d not in chosen]
        return chosen, left
    groups: dict[int, list[DatasetInfo]] = defaultdict(list)
    for d in datasets:
        if d.shape:
            groups[d.rows].append(d)
    if not groups:
        raise InputError(
            f"{source}: no dataset with a first axis to index rows by",
            hint="is this the right file? `h5ls -r FILE` lists its datasets",
        )
    length = max(groups, key=lambda n: (len(groups[n]), n))
    chosen = groups[length]
    left = [
        (d.path, "scalar dataset" if not d.shape else f"first axis {d.rows} != {length}")
        for d in datasets
        if d not in chosen
    ]
    return chosen, left


def _string_dtype(dtype: np.dtype) -> bool:
    import h5py

    return h5py.check_string_dtype(dtype) is not None


def _leaf_fields(source: str, info: DatasetInfo, name: str, member: tuple[str, ...], dtype: np.dtype, shape):
    import h5py

    if dtype.names:
        for key in dtype.names:
            sub = dtype.fields[key][0]
            yield from _leaf_fields(source, info, f"{name}_{field_name(key)}", (*member, key), sub, shape)
        return
    if dtype.subdtype is not None:
        base, sub_shape = dtype.subdtype
        yield from _leaf_fields(source, info, name, member, base, (*shape, *sub_shape))
        return
    where = f"{info.path}" + (f" member {'.'.join(member)}" if member else "")
    if _string_dtype(dtype):
        yield FieldSpec(name, info.path, member, np.dtype(str), shape, "scalar" if not shape else "ndarray")
        return
    if h5py.check_dtype(ref=dtype) is not None or h5py.check_dtype(vlen=dtype) is not None:
        kind = "reference" if h5py.check_dtype(ref=dtype) is not None else "variable-length sequence"
        raise InputError(
            f"{source}: dataset {where} has dtype {kind} ({dtype}), which a dataset field cannot hold",
            hint="leave it out with --datasets, or convert it to a numeric array first",
        )
    if dtype.kind not in "biufc" or (dtype.kind == "f" and dtype.itemsize > 8) or dtype.itemsize > 16:
        raise InputError(
            f"{source}: dataset {where} has dtype {_kind_name(dtype)} ({dtype!s}), which a dataset field "
            "cannot hold",
            hint="leave it out with --datasets; supported: bool, ints, uints, float16/32/64, complex, strings",
        )
    native = dtype.newbyteorder("=")
    scalar_ok = (
        native.kind in "bi"
        or (native.kind == "u" and native.itemsize < 8)
        or (native.kind == "f" and native.itemsize in (4, 8))
    )
    codec = "scalar" if not shape and scalar_ok else "ndarray"
    yield FieldSpec(name, info.path, member, native, shape, codec)


def _kind_name(dtype: np.dtype) -> str:
    names = {"V": "opaque (raw bytes)", "O": "object", "M": "datetime", "m": "timedelta", "S": "bytes"}
    return names.get(dtype.kind, dtype.name)


def map_fields(source: str, datasets: list[DatasetInfo]) -> list[FieldSpec]:
    """Output fields of the selected datasets, in dataset order.

    Raises:
        InputError: A dtype cannot be represented, or two datasets map to the same field name.
    """
    specs: list[FieldSpec] = []
    for info in datasets:
        specs.extend(_leaf_fields(source, info, field_name(info.path), (), info.dtype, info.shape[1:]))
    seen: dict[str, FieldSpec] = {}
    for spec in specs:
        key = spec.name.lower()  # Spark column names are case-insensitive
        if key in seen:
            raise InputError(
                f"{source}: datasets {seen[key].dataset} and {spec.dataset} both map to field {spec.name!r}",
                hint="pick one of them with --datasets",
            )
        seen[key] = spec
    return specs


def plan_slices(
    file: str, rows: int, row_bytes: int, chunk_rows: list[int], *, target_bytes: int
) -> list[Slice]:
    """Cut rows ``[0, rows)`` of ``file`` into slices of about ``target_bytes``, aligned to chunks.

    Slice boundaries (except the file's end) are multiples of the least common multiple of the
    datasets' first-axis chunk lengths, so that each HDF5 chunk is decompressed by exactly one
    read. When that multiple is larger than both a slice and the longest chunk (very different
    chunkings), boundaries follow the chunks of ``chunk_rows[0]`` only, the dataset with the most
    bytes per row; smaller datasets may then have a chunk read by two slices. Contiguous
    datasets add no constraint. A slice is never shorter than the alignment.

    Args:
        file: Path of the HDF5 file.
        rows: First-axis length.
        row_bytes: Bytes of one row over all selected datasets (at least 1 is assumed).
        chunk_rows: First-axis chunk length of each chunked dataset, the largest dataset first.
        target_bytes: Wanted bytes per slice (keyword-only).
    """
    if rows < 0 or target_bytes < 1:
        raise ValueError(f"rows must be >= 0 and target_bytes >= 1, got {rows} and {target_bytes}")
    if rows == 0:
        return []
    wanted = max(1, target_bytes // max(1, row_bytes))
    chunks = [max(1, int(c)) for c in chunk_rows]
    align = math.lcm(*chunks) if chunks else 1
    if chunks and align > max(wanted, *chunks):
        align = chunks[0]
    step = max(align, (wanted // align) * align)
    return [Slice(file, start, min(rows, start + step)) for start in range(0, rows, step)]
