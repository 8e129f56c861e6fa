"""The rows of the compatibility dataset that petastorm's ``materialize_dataset`` writes.

Pure numpy, so both environments compute the same expected values: row ``i`` of
:func:`expected_row` is what any reader must return for the row whose ``id`` is ``i``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PARTITIONS = (7, 3, 1)
"""Rows per Parquet file (one Spark partition each): files of uneven length."""
ROW_GROUP_BYTES = 20000
"""``parquet.block.size`` of the writer: row groups of a few rows, so files hold several."""
ROWS = sum(PARTITIONS)
LOSSY = ("jpeg",)
"""Fields compared to petastorm's own decode only (not to the pixels written)."""


def expected_row(i: int) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    smooth = np.add.outer(np.arange(16) * 8, np.arange(16) * 4).astype(np.uint8)
    return {
        "id": np.int64(i),
        "small": np.int16(i - 5),
        "ratio": np.float64(i / 7),
        "flag": np.bool_(i % 2 == 0),
        "name": f"row-{i}-ü",
        "maybe": None if i % 3 == 0 else np.int32(i * 10),
        "matrix": rng.standard_normal((4, 3)).astype(np.float32),
        "varlen": np.arange(i % 5 + 1, dtype=np.int32) * i,
        "maybe_vec": None if i % 4 == 1 else np.array([i, -i], dtype=np.float64),
        "packed": rng.integers(0, 60000, (5, 5)).astype(np.uint16),
        "png": rng.integers(0, 255, (8, 10, 3)).astype(np.uint8),
        "png_gray": rng.integers(0, 255, (6, 7)).astype(np.uint8),
        "jpeg": np.dstack([smooth, smooth[::-1], (smooth + i) % 255]).astype(np.uint8),
    }
