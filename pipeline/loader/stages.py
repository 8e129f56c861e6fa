"""The lifecycle both loaders share: host batches in a prefetch thread, then (CUDA) device copies.

:class:`~pipeline.loader.loader.Loader` and
:class:`~pipeline.loader.petastorm_engine.PetastormLoader` differ in where their rows come from;
both hand a generator of host batches (``_host_batches``) to a
:class:`~pipeline.loader.prefetch.Prefetcher` thread and, on a CUDA device, let a
:class:`~pipeline.loader.device.DeviceCopier` copy each batch from its pinned slot one batch
ahead. :class:`PrefetchedBatches` starts those stages on first use, hands out ``(batch, info)``
and stops and joins them; it is a context manager and an iterator.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Self

import torch

from pipeline.loader.device import DeviceCopier, PinnedSlot, PinnedSlots, resolve_device
from pipeline.loader.prefetch import Prefetcher

__all__ = ["PrefetchedBatches"]


class PrefetchedBatches:
    """Base of the loaders: prefetch thread + device copier, started lazily, always stopped.

    A subclass implements :meth:`_host_batches` (run in the prefetch thread) and ``__next__``
    (with :meth:`_next`), and calls :meth:`_stop_threads` from its ``close``.

    Args:
        device: ``None``/``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.
        prefetch: Batches prepared ahead.
        name: The prefetch thread's name.
        stats: Where the device copier records its time. Defaults to ``None``.
    """

    def __init__(self, device: Any, prefetch: int, *, name: str, stats: Any = None) -> None:
        self.device = resolve_device(device)
        self._prefetch_depth = prefetch
        self._thread_name = name
        self._copy_stats = stats
        self._prefetcher: Prefetcher[Any] | None = None
        self._slots: PinnedSlots | None = None
        self._copier: DeviceCopier | None = None
        self._closed = False

    def __enter__(self) -> Self:
        self._start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def close(self) -> None:
        """Stop the stages (and whatever the subclass holds); safe to call twice."""
        self._closed = True
        self._stop_threads()

    def _host_batches(self) -> Iterator[tuple[dict[str, Any], PinnedSlot | None, Any]]:
        """Runs in the prefetch thread: ``(host batch, pinned slot or None, info)`` tuples."""
        raise NotImplementedError

    def _on_device_thread(self) -> Iterator[tuple[dict[str, Any], PinnedSlot | None, Any]]:
        if self.device is not None:
            # Pinned allocations and event waits in this thread then use this device's context,
            # not a stray one on cuda:0 (torch's own pin-memory thread does the same).
            torch.cuda.set_device(self.device)
        yield from self._host_batches()

    def _start(self) -> None:
        if self._closed:
            raise RuntimeError("this loader is closed; open a new one with pipeline.open_loader(...)")
        if self._prefetcher is not None:
            return
        self._prefetcher = Prefetcher(self._on_device_thread, self._prefetch_depth, name=self._thread_name)
        if self.device is not None:
            self._slots = PinnedSlots(self._prefetch_depth + 3, self._prefetcher.stopping)
            self._copier = DeviceCopier(
                self.device, self._prefetcher.get, self._prefetcher.ready, self._slots, stats=self._copy_stats
            )
        self._prefetcher.start()

    def _next(self) -> tuple[dict[str, Any], Any]:
        """The next ``(batch, info)``: on the device when there is one."""
        self._start()
        assert self._prefetcher is not None
        if self._copier is not None:
            return self._copier.next()
        batch, _, info = self._prefetcher.get()
        return batch, info

    def _stop_threads(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
        if self._copier is not None:
            self._copier.close()
        self._prefetcher = self._copier = self._slots = None
