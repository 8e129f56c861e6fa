"""Deterministic JPEG folders for the conversion benchmarks (written once, reused by later runs).

    python benchmarks/convert_data.py small DIR 100000      # distinct 64x64 JPEGs in 10 class folders
    python benchmarks/convert_data.py photos DIR 2000       # distinct ~1000x750 photo-like JPEGs

A folder is complete when its ``.complete`` marker exists; an interrupted one is rebuilt.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

__all__ = ["make_photos", "make_small"]


def _reset(folder: Path) -> bool:
    if (folder / ".complete").exists():
        return False
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return True


def make_small(folder: Path, count: int, side: int = 64, classes: int = 10) -> Path:
    """``count`` distinct ``side x side`` JPEGs (gradients + noise, quality 90), ``classes`` folders."""
    from PIL import Image

    if not _reset(folder):
        return folder
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    for c in range(classes):
        (folder / f"class{c:02d}").mkdir()
    for i in range(count):
        base = (np.stack([xx * 3 + i, yy * 2 + i * 7, (xx + yy) + i * 3], axis=2) % 256).astype(np.int16)
        noise = rng.integers(-20, 20, size=base.shape, dtype=np.int16)
        img = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"class{i % classes:02d}" / f"img{i:06d}.jpg", quality=90)
    (folder / ".complete").touch()
    return folder


def make_photos(folder: Path, count: int, size: tuple[int, int] = (750, 1000), classes: int = 10) -> Path:
    """``count`` distinct photo-like JPEGs of ``size = (height, width)`` (smooth shapes, mild noise, q 90)."""
    from PIL import Image

    if not _reset(folder):
        return folder
    h, w = size
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for c in range(classes):
        (folder / f"class{c:02d}").mkdir()
    noise = rng.integers(-6, 7, size=(h, w, 3), dtype=np.int16)
    for i in range(count):
        a, b, c, d = rng.uniform(0.002, 0.03, 4)
        img = np.stack(
            [
                128 + 90 * np.sin(a * xx + b * yy + i),
                128 + 90 * np.cos(c * xx - d * yy + 0.5 * i),
                (xx * 200 / w + yy * 55 / h + 7 * i) % 256,
            ],
            axis=2,
        )
        shift = int(rng.integers(0, h))
        img = img.astype(np.int16) + np.roll(noise, shift, axis=0)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            folder / f"class{i % classes:02d}" / f"photo{i:05d}.jpg", quality=90
        )
    (folder / ".complete").touch()
    return folder


if __name__ == "__main__":
    kind, where, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    (make_small if kind == "small" else make_photos)(where, n)
    print(where)
