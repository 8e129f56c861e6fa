"""Values that cross between the petastorm env (numpy 1.26) and the default env (numpy 2).

Pickles of numpy objects name numpy's internal modules, which differ between numpy 1 and 2, so
arrays travel as ``("nd", dtype.str, shape, bytes)`` tuples inside a pickle of plain Python
values. Imported by the scripts here (petastorm env) and by the tests (default env).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np


def encode(value: Any) -> Any:
    """numpy arrays and scalars -> plain tuples; lists, dicts and tuples recursively."""
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "OUS":
        items = value.tolist()  # str/bytes/objects: plain Python values
        return ("list", [encode(v) for v in items]) if isinstance(items, list) else encode(items)
    if isinstance(value, np.ndarray):
        return ("nd", value.dtype.str, value.shape, np.ascontiguousarray(value).tobytes())
    if isinstance(value, np.generic):
        return encode(np.asarray(value))
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return ("list", [encode(v) for v in value])
    return value


def decode(value: Any) -> Any:
    """The inverse of :func:`encode` (0-d arrays come back as 0-d arrays)."""
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, tuple) and value and value[0] == "nd":
        _, dtype, shape, data = value
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()
    if isinstance(value, tuple) and value and value[0] == "list":
        return [decode(v) for v in value[1]]
    return value


def dump(value: Any, path: str | Path) -> None:
    Path(path).write_bytes(pickle.dumps(encode(value), protocol=4))


def load(path: str | Path) -> Any:
    return decode(pickle.loads(Path(path).read_bytes()))
