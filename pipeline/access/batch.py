"""Rows and columns: assembling the batch of a multi-row-group selection, and back."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

__all__ = ["assemble", "is_integer", "split_rows", "stack_rows"]

Parts = list[tuple[np.ndarray, dict[str, np.ndarray]]]
"""``[(positions in the batch, decoded columns of those rows)]``, one entry per row group."""


def assemble(specs: dict[str, Any], n: int, parts: Parts) -> dict[str, np.ndarray]:
    """One column per field: ``(n, *shape)`` arrays for fixed shapes, 1-D object arrays otherwise."""
    out: dict[str, np.ndarray] = {}
    for name, spec in specs.items():
        if spec.kind == "fixed":
            column = np.empty((n, *spec.shape), dtype=spec.dtype)
        else:
            column = np.empty(n, dtype=object)
        for positions, columns in parts:
            column[positions] = columns[name]
        out[name] = column
    return out


def is_integer(key: Any) -> bool:
    """Whether ``key`` is an integer index (``int``, numpy integer, anything with ``__index__``)."""
    try:
        operator.index(key)
    except TypeError:
        return False
    return True


def split_rows(n: int, parts: Parts) -> list[dict[str, Any]]:
    """The ``n`` rows of a batch as dicts (for torch's ``default_collate``), in batch order."""
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for positions, columns in parts:
        for name, column in columns.items():
            for k, pos in enumerate(positions.tolist()):
                rows[pos][name] = column[k]
    return rows


def stack_rows(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows (after a row callable) back into columns: stacked when shapes agree, else objects."""
    out: dict[str, np.ndarray] = {}
    for name in rows[0] if rows else ():
        arrays = [np.asarray(r[name]) for r in rows]
        first = arrays[0]
        if first.dtype.kind not in "OUS" and all(
            a.shape == first.shape and a.dtype == first.dtype for a in arrays
        ):
            out[name] = np.stack(arrays)
            continue
        column = np.empty(len(rows), dtype=object)
        for k, r in enumerate(rows):
            column[k] = r[name]
        out[name] = column
    return out
