"""HDF5 types -> field rules: which values of a dataset become which field, and what is left out.

Runs on the driver over metadata only. Each leaf of a dataset's type (the dataset itself, or
each member of a compound, recursively) gets one *rule*, carried by its
:class:`~pipeline.convert.hdf5_schema.Hdf5Field` to the Spark tasks that read the values
(:mod:`pipeline.convert.hdf5_read`):

=============  ==========================================================================
rule           values
=============  ==========================================================================
``plain``      bool, ints, uints, float16/32/64, complex64/128, enums (their base integer;
               the label mapping goes into the provenance), bitfields (unsigned ints of the
               same size); big-endian values in native byte order
``string``     fixed- and variable-length strings -> ``str`` (UTF-8)
``ragged``     variable-length sequences of numbers or bools in a dataset of one dimension ->
               1-D arrays of varying length (shape ``(None,)``); the loader pads them and adds
               ``<field>_lengths``
``longdouble`` long double (float > 64 bits) -> float64, complex > 128 bits -> complex128,
               when every value is exactly representable; otherwise the slice is bad input
``opaque``     opaque data (``V<n>``) -> uint8 array of its ``n`` bytes (shape adds ``(n,)``)
``datetime``   NumPy ``datetime64``/``timedelta64`` stored by h5py -> int64 counts of the unit
``time``       HDF5 UNIX time (no NumPy equivalent), read as stored bytes: ``H5T_UNIX_D32`` ->
               int64 seconds, ``H5T_UNIX_D64`` -> float64 seconds since 1970-01-01 UTC, in the
               layouts of PyTables' ``Time32``/``Time64`` (the main writer of these types; the
               same values PyTables reads)
``ref``        object references -> ``str``, the HDF5 path of the object ("" for a null one)
=============  ==========================================================================

Left out, with the reason (logged as a warning and listed under ``left_out`` in the
provenance): region references, variable-length sequences of strings, compounds or arrays, or
in a dataset of more than one dimension, any other HDF5 time type, and types h5py cannot map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LeafRule", "dataset_type", "leaf_rules"]

_TIME_TYPES = (("UNIX_D32BE", ">i4"), ("UNIX_D32LE", "<i4"), ("UNIX_D64BE", ">i8"), ("UNIX_D64LE", "<i8"))
"""HDF5 UNIX time types and the integer their bytes hold. HDF5 defines no meaning; PyTables, their
main writer, stores ``Time32`` as int32 seconds and ``Time64`` as a 64-bit integer
``seconds << 32 | microseconds`` (its C ``timeval32``), both since 1970-01-01 UTC."""


def dataset_type(obj: Any) -> tuple[np.dtype, str]:
    """``(dtype, kind)`` of an ``h5py.Dataset``, never raising for an exotic HDF5 type.

    ``kind`` is ``""`` for types h5py maps to NumPy; ``"time"`` for HDF5 UNIX time types (``dtype``
    is then the stored layout, ``>i4`` or ``<f8``...); ``"raw"`` for a compound of fixed-size members some of
    which are UNIX times (PyTables' ``Time32Col``/``Time64Col``), read as stored bytes and viewed
    through ``dtype`` (the members' stored types and offsets; time members are tagged
    ``{"hdf5_time": True}`` in their dtype metadata); else the reason the type cannot be read
    (``dtype`` is ``V<size>`` then).
    """
    try:
        return obj.dtype, ""
    except (TypeError, ValueError) as exc:
        tid = obj.id.get_type()
        raw = _raw_dtype(tid)
        if raw is not None:
            return raw, "time" if raw.metadata else "raw"
        return np.dtype(
            f"V{tid.get_size()}"
        ), f"HDF5 type {type(tid).__name__} has no NumPy equivalent ({exc})"


def _raw_dtype(tid: Any) -> np.dtype | None:
    """The dtype that views the stored bytes of an HDF5 type, or ``None`` (vlen, unknown times...)."""
    import h5py

    if isinstance(tid, h5py.h5t.TypeTimeID):
        for name, raw in _TIME_TYPES:
            if tid.equal(getattr(h5py.h5t, name)):
                return np.dtype(raw, metadata={"hdf5_time": True})
        return None
    if isinstance(tid, h5py.h5t.TypeCompoundID):
        names, formats, offsets = [], [], []
        for i in range(tid.get_nmembers()):
            member = _raw_dtype(tid.get_member_type(i))
            if member is None:
                return None
            names.append(tid.get_member_name(i).decode("utf-8", "replace"))
            formats.append(member)
            offsets.append(tid.get_member_offset(i))
        return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": tid.get_size()})
    if isinstance(tid, h5py.h5t.TypeArrayID):
        base = _raw_dtype(tid.get_super())
        return None if base is None else np.dtype((base, tuple(tid.get_array_dims())))
    if isinstance(tid, (h5py.h5t.TypeVlenID, h5py.h5t.TypeReferenceID)):
        return None
    try:
        dtype = tid.dtype
    except (TypeError, ValueError):
        return None
    return None if dtype.kind == "O" else dtype


@dataclass(frozen=True)
class LeafRule:
    """How one leaf of a dataset's type becomes a field (see the module's table)."""

    member: tuple[str, ...]
    """Compound member path (empty for a plain dataset)."""
    rule: str
    dtype: np.dtype
    """Native dtype of the field's values (``<U0`` for strings)."""
    shape: tuple[int | None, ...]
    note: str = ""
    """What the conversion did, for the provenance (``""`` when values are kept as they are)."""
    labels: tuple[tuple[str, int], ...] = ()
    """Enum labels and values (provenance)."""


def _string(dtype: np.dtype) -> bool:
    import h5py

    return h5py.check_string_dtype(dtype) is not None


def leaf_rules(
    dtype: np.dtype, shape: tuple[int, ...], kind: str = ""
) -> tuple[list[LeafRule], list[tuple[tuple[str, ...], str]]]:
    """The rules of a dataset's leaves, and ``(member, reason)`` for each leaf left out.

    Args:
        dtype: The dataset's dtype (from :func:`dataset_type`).
        shape: The shape of one row (``dataset.shape[1:]``).
        kind: The ``kind`` from :func:`dataset_type`. Defaults to ``""``.
    """
    if kind and kind not in ("time", "raw"):
        return [], [((), kind)]
    rules: list[LeafRule] = []
    dropped: list[tuple[tuple[str, ...], str]] = []
    _walk(dtype, (), shape, rules, dropped)
    return rules, dropped


def _walk(
    dtype: np.dtype, member: tuple[str, ...], shape: tuple[int, ...], rules: list, dropped: list
) -> None:
    import h5py

    if dtype.names:
        for key in dtype.names:
            _walk(dtype.fields[key][0], (*member, key), shape, rules, dropped)
        return
    if dtype.subdtype is not None:
        base, sub_shape = dtype.subdtype
        _walk(base, member, (*shape, *sub_shape), rules, dropped)
        return
    if dtype.metadata and dtype.metadata.get("hdf5_time"):
        out = np.dtype(np.int64 if dtype.itemsize == 4 else np.float64)
        note = f"HDF5 UNIX time ({dtype.itemsize * 8}-bit) -> {out} seconds since 1970-01-01 UTC"
        rules.append(LeafRule(member, "time", out, shape, note))
        return
    if _string(dtype):
        rules.append(LeafRule(member, "string", np.dtype(str), shape))
        return
    ref = h5py.check_dtype(ref=dtype)
    if ref is not None:
        if ref is h5py.Reference:
            rules.append(LeafRule(member, "ref", np.dtype(str), shape, "object reference -> HDF5 path"))
        else:
            dropped.append((member, "region reference (a selection has no field type)"))
        return
    base = h5py.check_vlen_dtype(dtype)
    if base is not None:
        _vlen(np.dtype(base), member, shape, rules, dropped)
        return
    rule = _scalar_rule(dtype, member, shape)
    if isinstance(rule, str):
        dropped.append((member, rule))
    else:
        rules.append(rule)


def _vlen(
    base: np.dtype, member: tuple[str, ...], shape: tuple[int, ...], rules: list, dropped: list
) -> None:
    if shape:
        dropped.append(
            (
                member,
                f"variable-length sequences in a dataset of row shape {shape} (only 1-D datasets become ragged fields)",
            )
        )
        return
    if base.names or base.subdtype is not None or _string(base) or base.kind not in "biufc":
        dropped.append(
            (member, f"variable-length sequences of {base} (only numbers and bools become ragged fields)")
        )
        return
    if base.itemsize > (16 if base.kind == "c" else 8):
        dropped.append((member, f"variable-length sequences of {base} (extended precision)"))
        return
    rules.append(LeafRule(member, "ragged", base.newbyteorder("="), (None,), "variable-length -> ragged 1-D"))


def _scalar_rule(dtype: np.dtype, member: tuple[str, ...], shape: tuple[int, ...]) -> LeafRule | str:
    """The rule of a fixed-size leaf, or why it is left out."""
    import h5py

    native = dtype.newbyteorder("=") if dtype.byteorder not in "|=" else dtype
    enum = h5py.check_enum_dtype(dtype)
    if enum is not None and dtype.kind in "iu":
        labels = tuple(sorted(((str(k), int(v)) for k, v in enum.items()), key=lambda kv: kv[1]))
        return LeafRule(member, "plain", np.dtype(native.str), shape, f"enum -> {native}", labels)
    if dtype.kind == "f" and dtype.itemsize > 8:
        return LeafRule(
            member, "longdouble", np.dtype(np.float64), shape, f"{dtype} -> float64 (exact values only)"
        )
    if dtype.kind == "c" and dtype.itemsize > 16:
        return LeafRule(
            member, "longdouble", np.dtype(np.complex128), shape, f"{dtype} -> complex128 (exact values only)"
        )
    if dtype.kind in "biufc":
        return LeafRule(member, "plain", np.dtype(native.str), shape)
    if dtype.kind in "Mm":
        return LeafRule(member, "datetime", np.dtype(np.int64), shape, f"{dtype} -> int64 counts of its unit")
    if dtype.kind == "V" and dtype.itemsize > 0:
        return LeafRule(
            member, "opaque", np.dtype(np.uint8), (*shape, dtype.itemsize), f"opaque {dtype} -> uint8 bytes"
        )
    return f"dtype {dtype} has no field type"
