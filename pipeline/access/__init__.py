"""Random access and loading modes: ``open_dataset`` beside the stream, and the row-group caches.

* :mod:`~pipeline.access.dataset` -- ``open_dataset``: ``len(ds)``, ``ds[i]``, ``ds[a:b]``.
* :mod:`~pipeline.access.index` -- global row number -> (row group, row), prefix sums + bisect.
* :mod:`~pipeline.access.rows` -- read a row group's Arrow table, decode the rows asked for.
* :mod:`~pipeline.access.stores` -- in-process caches: ``stream`` LRU, ``memory`` store.
* :mod:`~pipeline.access.disk`, :mod:`~pipeline.access.cachedfs` -- the ``disk`` cache of raw
  Parquet byte ranges, as a ``pyarrow.fs`` filesystem shared by processes.
* :mod:`~pipeline.access.source` -- the same modes for the stream reader (``open_loader``).
"""

from __future__ import annotations

from pipeline.access.cachedfs import cached_filesystem
from pipeline.access.dataset import RandomAccessDataset, open_dataset
from pipeline.access.disk import DiskCache
from pipeline.access.index import RowGroupIndex

__all__ = ["DiskCache", "RandomAccessDataset", "RowGroupIndex", "cached_filesystem", "open_dataset"]
