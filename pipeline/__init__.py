"""Spark -> Parquet/Petastorm -> PyTorch: training-ready datasets and the loaders that feed them.

The data's path through the package:

* ``pipeline.convert`` -- Spark jobs that turn raw images, text and HDF5 into Petastorm datasets.
* ``pipeline.dataset`` / ``pipeline.inspect`` -- what a dataset on disk holds.
* ``pipeline.reader`` -- seeded, sharded, multi-epoch reading on top of petastorm.
* ``pipeline.loader`` -- torch batches, pinned and prefetched onto a device.
* ``pipeline.train`` -- training through Spark's ``TorchDistributor``.

``open_loader`` is imported lazily so that ``import pipeline`` (and the CLI) stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "open_loader"]


def __getattr__(name: str) -> Any:
    if name == "open_loader":
        from pipeline.loader import open_loader

        return open_loader
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
