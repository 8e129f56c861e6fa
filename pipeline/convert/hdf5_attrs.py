"""HDF5 attributes and scalar datasets -> JSON values for the dataset's provenance.

They are not rows (nothing to index along a first axis), but they often hold what a user needs
to read the rows (units, scale factors, labels, creation parameters), so the first file's are
kept in the provenance under ``attributes`` (object path -> name -> value) and ``scalars``
(dataset path -> value). Values are made JSON-friendly: numbers and bools as they are, strings
decoded (UTF-8, else Latin-1), small arrays as lists; long strings and big arrays are cut to a
summary so that a file with huge attributes cannot blow up the metadata.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["collect_metadata", "json_value"]

MAX_ITEMS = 64
"""Arrays with more elements are summarized (dtype, shape, first elements)."""
MAX_CHARS = 1000
"""Longer strings are cut."""
MAX_ENTRIES = 2000
"""At most this many attributes and scalars per file."""


def _text(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raw = raw.decode("latin-1")
    return raw if len(raw) <= MAX_CHARS else f"{raw[:MAX_CHARS]}... ({len(raw)} chars)"


def json_value(value: Any) -> Any:
    """A JSON-friendly copy of an attribute or scalar value (see the module docstring)."""
    import h5py

    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, (bytes, str, np.bytes_, np.str_)):
        return _text(value)
    if isinstance(value, h5py.Reference):
        return "<reference>" if value else "<null reference>"
    if isinstance(value, np.ndarray):
        if value.dtype.names:
            return _summary(value) if value.size > MAX_ITEMS else [json_value(v) for v in value.reshape(-1)]
        if value.size > MAX_ITEMS:
            return _summary(value)
        return [json_value(v) for v in value.tolist()] if value.ndim else json_value(value[()])
    if isinstance(value, np.void) and value.dtype.names:
        return {name: json_value(value[name]) for name in value.dtype.names}
    if isinstance(value, np.void):
        return value.tobytes().hex()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, complex):
        return [value.real, value.imag]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value[:MAX_ITEMS]]
    return _text(str(value))


def _summary(value: np.ndarray) -> dict[str, Any]:
    flat = value.reshape(-1)[:8]
    return {"dtype": str(value.dtype), "shape": list(value.shape), "first": [json_value(v) for v in flat]}


def _attrs(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in obj.attrs:
        try:
            out[str(name)] = json_value(obj.attrs[name])
        except Exception as exc:  # an exotic attribute type must not stop a conversion
            out[str(name)] = f"<unreadable: {type(exc).__name__}: {exc}>"
    return out


def collect_metadata(h5file: Any, scalars: list[str]) -> dict[str, Any]:
    """``{"attributes": {path: {name: value}}, "scalars": {path: value}}`` of an open ``h5py.File``.

    Args:
        h5file: The open file.
        scalars: Paths of its scalar (0-d) datasets, whose values are read.
    """
    import h5py

    attributes: dict[str, Any] = {}
    count = 0

    def visit(name: str, obj: Any) -> None:
        nonlocal count
        if count >= MAX_ENTRIES or not isinstance(obj, (h5py.Group, h5py.Dataset)):
            return
        found = _attrs(obj)
        if found:
            attributes["/" + name if name else "/"] = found
            count += len(found)

    visit("", h5file)
    h5file.visititems(visit)
    values: dict[str, Any] = {}
    for path in scalars[: max(0, MAX_ENTRIES - count)]:
        try:
            values[path] = json_value(h5file[path][()])
        except Exception as exc:  # same: recorded, never fatal
            values[path] = f"<unreadable: {type(exc).__name__}: {exc}>"
    return {"attributes": attributes, "scalars": values}
