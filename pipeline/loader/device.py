"""The CUDA path: reused pinned host buffers, side-stream copies, events between streams.

* :class:`PinnedSlots` -- a few reusable sets of pinned host buffers. The producer thread
  collates a batch straight into a free slot; a slot is handed out again only after the CUDA
  event recorded behind its last copy has completed, so a buffer is never overwritten while
  the GPU may still be reading it.
* :class:`DeviceCopier` -- in the training loop's thread: copies batch ``i + 1`` with
  ``non_blocking=True`` on a side stream while batch ``i`` is in use, makes the consumer's
  current stream wait on the copy's event, and calls ``record_stream`` so the caching allocator
  does not reuse the device memory while the consumer's stream still uses it.

With ``device=None`` or ``"cpu"`` none of this runs and nothing is pinned (a CPU-only torch
cannot pin).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pipeline.errors import ConfigError

__all__ = ["DeviceCopier", "PinnedSlot", "PinnedSlots", "resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``None`` for CPU batches, else a CUDA ``torch.device`` (checked to exist).

    Raises:
        ConfigError: An unknown device string, or CUDA asked for but not available.
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"device {device!r} is not a torch device: {exc}", hint='use None, "cpu", "cuda" or "cuda:N"'
        ) from None
    if dev.type == "cpu":
        return None
    if dev.type != "cuda":
        raise ConfigError(f"device {device!r} is not supported", hint='use None, "cpu", "cuda" or "cuda:N"')
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} asked for, but torch {torch.__version__} sees no CUDA GPU",
            hint='pass device=None (or "cpu") on this machine, or install a CUDA build of torch',
        )
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", index)


class PinnedSlot:
    """One batch's pinned host buffers, grown as needed and reused batch after batch."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self.event: Any = None
        """CUDA event recorded after the last copy out of this slot (``None``: never copied)."""

    def allocate(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
        """A pinned tensor view of ``shape``/``dtype`` over this slot's buffer for ``name``."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < nbytes:
            size = max(nbytes, int(buffer.numel() * 1.5) if buffer is not None else 0, 64)
            buffer = torch.empty(size, dtype=torch.uint8, pin_memory=True)
            self._buffers[name] = buffer
        torch_dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
        return buffer[:nbytes].view(torch_dtype).view(shape)


class PinnedSlots:
    """A pool of :class:`PinnedSlot`; ``acquire`` waits for a free slot whose copy is done."""

    def __init__(self, count: int, stop: threading.Event) -> None:
        self._free: queue.Queue[PinnedSlot] = queue.Queue()
        for _ in range(count):
            self._free.put(PinnedSlot())
        self._stop = stop

    def acquire(self) -> PinnedSlot:
        """A slot safe to overwrite; raises ``InterruptedError`` if the loader is stopping."""
        while not self._stop.is_set():
            try:
                slot = self._free.get(timeout=0.05)
            except queue.Empty:
                continue
            if slot.event is not None:
                slot.event.synchronize()  # the GPU has finished reading the previous batch
            return slot
        raise InterruptedError("loader is closing")

    def release(self, slot: PinnedSlot, event: Any) -> None:
        slot.event = event
        self._free.put(slot)


class DeviceCopier:
    """Copies host batches to ``device`` one batch ahead of the consumer.

    Args:
        device: The CUDA device.
        next_host: Returns the next ``(host_batch, slot, tag)``; raises ``StopIteration`` at the end.
        host_ready: Whether ``next_host`` would return without waiting.
        slots: Where a slot goes back once its copy has been queued.
        stats: Gets ``add("h2d", seconds)`` for the time spent issuing each copy. Defaults to ``None``.
    """

    def __init__(
        self,
        device: torch.device,
        next_host: Callable[[], tuple[dict[str, Any], PinnedSlot, Any]],
        host_ready: Callable[[], bool],
        slots: PinnedSlots,
        stats: Any = None,
    ) -> None:
        self.device = device
        self._stats = stats
        self._next_host = next_host
        self._host_ready = host_ready
        self._slots = slots
        self._stream = torch.cuda.Stream(device=device)
        self._ahead: tuple[dict[str, Any], Any, Any] | None = None
        self._failed: BaseException | None = None  # raised by the look-ahead; delivered after `current`

    def _issue(self) -> tuple[dict[str, Any], Any, Any]:
        host, slot, tag = self._next_host()
        t0 = time.perf_counter()
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            moved = {
                k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in host.items()
            }
            event = torch.cuda.Event()
            event.record(self._stream)
        self._slots.release(slot, event)
        if self._stats is not None:
            self._stats.add("h2d", time.perf_counter() - t0)
        return moved, event, tag

    def next(self) -> tuple[dict[str, Any], Any]:
        """The next batch on the device (safe to use on the current stream) and its tag."""
        if self._ahead is None and self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed
        current = self._ahead if self._ahead is not None else self._issue()
        self._ahead = None
        if self._host_ready():  # never wait here: the consumer should start on `current` now
            try:
                self._ahead = self._issue()  # this copy overlaps the consumer's work on `current`
            except StopIteration:
                pass
            except Exception as exc:  # a reader/transform error: deliver `current` first, as on the CPU
                self._failed = exc
        moved, event, tag = current
        consumer = torch.cuda.current_stream(self.device)
        consumer.wait_event(event)
        for value in moved.values():
            if isinstance(value, torch.Tensor):
                value.record_stream(consumer)
        return moved, tag

    def close(self) -> None:
        self._ahead = None
        self._stream.synchronize()
