"""HDF5 metadata -> dataset fields: discovery, selection, dtype mapping and chunk-aligned slices.

Only metadata is read here (``h5py`` opens the file; no dataset values are loaded), so the
driver can plan a conversion of any size. The values are read by Spark tasks
(:mod:`pipeline.convert.hdf5`), each over one :class:`Slice` of the first axis.

Mapping rules (one row per index along the first axis of the selected datasets):

* A dataset ``/grp/x`` becomes field ``grp_x`` (path parts joined with ``_``; characters that
  are not letters, digits or ``_`` become ``_``; a leading digit gets an ``f`` prefix).
* A compound dataset becomes one field per member, ``<dataset>_<member>`` (nested compounds
  recursively; array members add their shape after the dataset's own trailing shape).
* Names that collide (ignoring case) are made unique with ``_2``, ``_3``, ... in dataset order
  (:func:`unique_names`).
* Each leaf type follows a rule of :mod:`pipeline.convert.hdf5_types` (plain numbers keep their
  dtype in native byte order, strings become ``str``, variable-length numbers become ragged
  1-D fields, ...). Scalars use petastorm's ``ScalarCodec`` where Spark has the type, everything
  else ``NdarrayCodec``. Leaves without a rule are left out with the reason.
"""

from __future__ import annotations

import keyword
import math
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.convert.hdf5_types import dataset_type, leaf_rules
from pipeline.errors import InputError

__all__ = [
    "Hdf5Dataset",
    "Hdf5Field",
    "Slice",
    "dataset_fields",
    "discover_datasets",
    "field_name",
    "map_fields",
    "missing_filters",
    "plan_slices",
    "select_datasets",
    "unique_names",
    "wanted_names",
]


@dataclass(frozen=True)
class Hdf5Dataset:
    """What the driver knows about one HDF5 dataset (metadata only)."""

    path: str
    """Absolute path inside the file, e.g. ``/grp/x``."""
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...] | None
    compression: str | None
    filters: tuple[tuple[int, str], ...] = ()
    """HDF5 filter pipeline as ``(filter id, name)`` pairs, e.g. ``((2, "shuffle"), (1, "deflate"))``."""
    kind: str = ""
    """``""``, ``"time"`` or ``"raw"`` (read as stored bytes, viewed through ``dtype``) or why the
    type cannot be read (:func:`~pipeline.convert.hdf5_types.dataset_type`)."""

    @property
    def rows(self) -> int:
        """Length of the first axis (``0`` for a scalar dataset)."""
        return self.shape[0] if self.shape else 0


@dataclass(frozen=True)
class Hdf5Field:
    """One output field and where its values come from."""

    name: str
    dataset: str
    """HDF5 path of the source dataset."""
    member: tuple[str, ...]
    """Compound member path (empty for a plain dataset)."""
    dtype: np.dtype
    """Native-endian numpy dtype of the values (``<U0`` kind ``U`` for strings)."""
    shape: tuple[int | None, ...]
    """Shape of one row's value (``()`` for scalars)."""
    codec: str
    """``"scalar"`` or ``"ndarray"``."""
    rule: str = "plain"
    """How values are read (:mod:`pipeline.convert.hdf5_types`): ``plain``, ``string``, ``ragged``, ..."""
    raw: np.dtype | None = None
    """Set for datasets read as stored bytes (HDF5 time types): the dtype that views them."""
    note: str = ""
    """What the conversion did to the values (provenance), ``""`` when they are kept as they are."""
    labels: tuple[tuple[str, int], ...] = ()
    """Enum labels and values (provenance)."""


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


def wanted_names(path: str) -> set[str]:
    """The names by which ``--datasets`` can ask for the dataset at ``path``."""
    return {path, path.lstrip("/"), field_name(path)}


def _filters(dataset: Any) -> tuple[tuple[int, str], ...]:
    plist = dataset.id.get_create_plist()
    out = []
    for i in range(plist.get_nfilters()):
        code, _flags, _values, name = plist.get_filter(i)
        out.append((int(code), name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)))
    return tuple(out)


def missing_filters(info: Hdf5Dataset) -> list[tuple[int, str]]:
    """Filters of ``info`` that this HDF5 library cannot decode (e.g. Blosc without ``hdf5plugin``)."""
    import h5py

    return [(code, name) for code, name in info.filters if not h5py.h5z.filter_avail(code)]


def discover_datasets(h5file: Any) -> list[Hdf5Dataset]:
    """Every dataset of an open ``h5py.File`` (links followed once), sorted by path."""
    import h5py

    found: dict[str, Hdf5Dataset] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            path = "/" + name
            dtype, kind = dataset_type(obj)
            found[path] = Hdf5Dataset(
                path=path,
                shape=tuple(int(n) for n in obj.shape) if obj.shape is not None else (),
                dtype=dtype,
                chunks=tuple(obj.chunks) if obj.chunks else None,
                compression=obj.compression,
                filters=_filters(obj),
                kind=kind,
            )

    h5file.visititems(visit)
    return [found[k] for k in sorted(found)]


def select_datasets(
    source: str, datasets: list[Hdf5Dataset], wanted: tuple[str, ...] | None = None
) -> tuple[list[Hdf5Dataset], list[tuple[str, str]]]:
    """Pick the datasets to convert.

    With ``wanted`` (``--datasets``): exactly those, given as HDF5 paths (``/grp/x`` or ``grp/x``)
    or field names (``grp_x``); they must share the first-axis length. Without it: among the
    datasets with at least one dimension, the largest group of equal first-axis length (groups
    of zero rows only when no other exists); a tie goes to the longer first axis. Scalar (0-d) datasets are never picked by default.

    Returns:
        The selection, and ``(path, why)`` for each dataset left out (logged by the caller).

    Raises:
        InputError: Nothing to convert, a requested dataset is missing, or lengths differ.
    """
    if wanted:
        by_key: dict[str, Hdf5Dataset] = {}
        for d in datasets:
            for key in sorted(wanted_names(d.path), key=lambda k: (not k.startswith("/"), "/" in k)):
                by_key.setdefault(key, d)
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
    groups: dict[int, list[Hdf5Dataset]] = defaultdict(list)
    for d in datasets:
        if d.shape:
            groups[d.rows].append(d)
    if not groups:
        raise InputError(
            f"{source}: no dataset with a first axis to index rows by",
            hint="is this the right file? `h5ls -r FILE` lists its datasets",
        )
    length = max(groups, key=lambda n: (n > 0, len(groups[n]), n))
    chosen = groups[length]
    left = [
        (d.path, "scalar dataset" if not d.shape else f"first axis {d.rows} != {length}")
        for d in datasets
        if d not in chosen
    ]
    return chosen, left


def dataset_fields(info: Hdf5Dataset) -> tuple[list[Hdf5Field], list[tuple[str, str]]]:
    """The fields of one dataset (named after it, not yet made unique), and ``(where, why)`` for
    each part left out (see :mod:`pipeline.convert.hdf5_types` for the rules)."""
    rules, dropped = leaf_rules(info.dtype, info.shape[1:], info.kind)
    base = field_name(info.path)
    specs = []
    for r in rules:
        name = "_".join([base, *(field_name(m) for m in r.member)])
        specs.append(
            Hdf5Field(
                name,
                info.path,
                r.member,
                r.dtype,
                r.shape,
                "scalar" if not r.shape and _scalar_ok(r.dtype) else "ndarray",
                rule=r.rule,
                raw=info.dtype if info.kind in ("time", "raw") else None,
                note=r.note,
                labels=r.labels,
            )
        )
    where = [(info.path + (f" member {'.'.join(m)}" if m else ""), why) for m, why in dropped]
    return specs, where


def _scalar_ok(dtype: np.dtype) -> bool:
    """Spark has a scalar type for it (no unsigned 64, half or complex scalars)."""
    return (
        dtype.kind in "biU"
        or (dtype.kind == "u" and dtype.itemsize < 8)
        or (dtype.kind == "f" and dtype.itemsize in (4, 8))
    )


def unique_names(specs: list[Hdf5Field]) -> list[Hdf5Field]:
    """Make field names unique: the first field (dataset order, then member order) keeps its name,
    each later one that equals a taken name (ignoring case, as Spark does) gets ``_2``, ``_3``, ...
    (the smallest free number). A field named like ``<ragged field>_lengths`` (which the loader
    adds to batches) counts as taken too."""
    taken: set[str] = set()
    out: list[Hdf5Field] = []
    for spec in specs:
        name, n = spec.name, 2
        while name.lower() in taken:
            name, n = f"{spec.name}_{n}", n + 1
        taken.add(name.lower())
        out.append(spec if name == spec.name else replace(spec, name=name))
    lengths = {f"{s.name}_lengths".lower() for s in out if s.rule == "ragged"}
    for i, spec in enumerate(out):
        if spec.name.lower() in lengths:
            name, n = f"{spec.name}_2", 3
            while name.lower() in taken or name.lower() in lengths:
                name, n = f"{spec.name}_{n}", n + 1
            taken.add(name.lower())
            out[i] = replace(spec, name=name)
    return out


def map_fields(source: str, datasets: list[Hdf5Dataset]) -> tuple[list[Hdf5Field], list[tuple[str, str]]]:
    """Output fields of the selected datasets, in dataset order, with unique names (:func:`unique_names`).

    Returns:
        The fields, and ``(where, why)`` for each part of a dataset left out (a compound member
        or a whole dataset whose type has no field rule).

    Raises:
        InputError: Nothing of the datasets can be converted.
    """
    specs: list[Hdf5Field] = []
    dropped: list[tuple[str, str]] = []
    for info in datasets:
        got, lost = dataset_fields(info)
        specs.extend(got)
        dropped.extend(lost)
    if not specs:
        listed = "; ".join(f"{w}: {why}" for w, why in dropped) or "no datasets"
        raise InputError(
            f"{source}: nothing convertible left ({listed})",
            hint="see docs/convert_text_hdf5.md for the HDF5 types that convert; pick others with --datasets",
        )
    return unique_names(specs), dropped


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
