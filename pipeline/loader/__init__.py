"""Torch batches from the reader: collation, pinned buffers, prefetching, device copies.

``open_loader`` (also ``pipeline.open_loader``) is the entry point; see :mod:`pipeline.loader.loader`.
"""

from __future__ import annotations

from pipeline.loader.loader import Loader, open_loader, resolve_shard

__all__ = ["Loader", "open_loader", "resolve_shard"]
