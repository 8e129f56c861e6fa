"""Spark conversion jobs: raw images, text, HDF5 files and Spark tables become datasets.

The command line over them is :mod:`pipeline.cli.convert` (flags, ``--config``, checks).

Modules, in the order data flows through them:

* :mod:`~pipeline.convert.common` -- settings (``conf/convert.yaml``), the bad-input policy
  (:class:`RecordErrors`) and :class:`ConversionResult`; the kind protocol.
* :mod:`~pipeline.convert.listing` -- find input files, split them into partitions by bytes.
* :mod:`~pipeline.convert.staging` -- atomic output next to DEST.
* :mod:`~pipeline.convert.tasks` -- what each Spark task runs: process a partition, write its file.
* :mod:`~pipeline.convert.writer` -- the job: tasks -> Parquet + Unischema (+ :mod:`~pipeline.convert.provenance`).
* one module per kind: :mod:`~pipeline.convert.images` (+ ``image_sources``, ``imaging``, ``headers``), ...

Library use (e.g. in a notebook)::

    from pipeline.convert.images import ImageOptions, convert_images
    result = convert_images(spark, "photos/", "data/photos", ImageOptions(size=(64, 64)))
"""

from __future__ import annotations

from pipeline.convert.common import (
    BadInput,
    ConversionResult,
    ConvertConfig,
    RecordErrors,
    SkippedRecord,
)

__all__ = [
    "BadInput",
    "ConversionResult",
    "ConvertConfig",
    "RecordErrors",
    "SkippedRecord",
]
