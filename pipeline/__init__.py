"""Spark -> Parquet/Petastorm -> PyTorch: training-ready datasets and the loaders that feed them.

The data's path through the package:

* ``pipeline.convert`` -- Spark jobs that turn raw images, text and HDF5 into Petastorm datasets.
* ``pipeline.dataset`` / ``pipeline.inspect`` -- what a dataset on disk holds.
* ``pipeline.reader`` -- seeded, sharded, multi-epoch reading of Parquet row groups.
* ``pipeline.loader`` -- torch batches, pinned and prefetched onto a device.
* ``pipeline.train`` -- training through Spark's ``TorchDistributor``.

Public names are imported lazily (on first attribute access) so that ``import pipeline`` and the
CLI stay light: nothing here imports torch, pyarrow or Spark until it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# public name -> module that defines it (imported on first use)
_LAZY: dict[str, str] = {
    "open_loader": "pipeline.loader",
    "convert_dataframe": "pipeline.convert.table",
    "spark_dataset": "pipeline.convert.handle",
    "open_dataset": "pipeline.access",
    "Unischema": "pipeline.format",
    "UnischemaField": "pipeline.format",
    "ScalarCodec": "pipeline.format",
    "NdarrayCodec": "pipeline.format",
    "CompressedImageCodec": "pipeline.format",
    "TransformSpec": "pipeline.format",
    "task_rng": "pipeline.reader.workers",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
