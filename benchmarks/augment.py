"""The training augmentation of ``bench_augment.py``: random crop, flip, normalise to float32 CHW.

Plain numpy in its own importable module, so that worker processes (this package's, torch's
``DataLoader`` workers, petastorm's process pool) can unpickle the functions that use it.
``augment_image`` is the transform; the ``*_row`` functions wrap it for each loader:

* :func:`task_row` -- this package's loader: draws from
  :func:`pipeline.reader.workers.task_rng`, seeded per work item from ``(seed, epoch, row
  group, first row)``, so the batches are the same for any number and kind of workers;
* :func:`global_row` -- petastorm and torch: draws from ``numpy.random`` (their own seeding).
"""

from __future__ import annotations

import numpy as np

__all__ = ["CROP", "augment_image", "global_row", "task_row"]

CROP = 56
"""Side of the random square crop (of a 64x64 image)."""

_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_SCALE = 1.0 / (255.0 * _STD)  # (x / 255 - mean) / std == x * scale - offset
_OFFSET = _MEAN / _STD


def augment_image(image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """``image`` (H, W, 3) uint8 -> a random ``CROP`` x ``CROP`` crop, flipped with probability
    1/2, normalised with the ImageNet mean and std, as float32 (3, CROP, CROP)."""
    height, width = image.shape[:2]
    if rng is None:
        y, x = np.random.randint(0, height - CROP + 1), np.random.randint(0, width - CROP + 1)
        flip = np.random.random() < 0.5
    else:
        y, x = rng.integers(0, height - CROP + 1), rng.integers(0, width - CROP + 1)
        flip = rng.random() < 0.5
    crop = image[y : y + CROP, x : x + CROP]
    if flip:
        crop = crop[:, ::-1]
    out = crop.astype(np.float32)
    out *= _SCALE
    out -= _OFFSET
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def task_row(row: dict) -> dict:
    """A row ``TransformSpec`` func for ``pipeline.open_loader`` (reproducible for any workers)."""
    from pipeline.reader.workers import task_rng

    row["image"] = augment_image(row["image"], task_rng())
    return row


def global_row(row: dict) -> dict:
    """A row ``TransformSpec`` func for petastorm's ``make_reader`` (``numpy.random``)."""
    row["image"] = augment_image(row["image"])
    return row
