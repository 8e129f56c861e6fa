"""Run a generator in a background thread, ``depth`` items ahead of its consumer.

The thread stops when the generator ends, when it raises (the exception, with its original
traceback, is re-raised by :meth:`Prefetcher.get` in the consumer's thread), or when
:meth:`Prefetcher.close` is called: the stop flag is checked between items and while waiting
for queue space, and the generator is closed in the thread that ran it, so its ``finally``
blocks (which shut down reader pools) run there.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["Prefetcher"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_POLL_S = 0.05


class _End:
    pass


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher(Generic[T]):
    """A bounded, stoppable producer thread.

    Args:
        produce: Called in the thread; returns the generator to drain.
        depth: Items produced ahead of the consumer.
        name: Thread name.
    """

    def __init__(
        self, produce: Callable[[], Iterator[T]], depth: int, name: str = "pipeline-prefetch"
    ) -> None:
        self._produce = produce
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def stopping(self) -> threading.Event:
        """Set when the consumer asked to stop; long waits in the producer should watch it."""
        return self._stop

    def start(self) -> None:
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        iterator = None
        try:
            iterator = self._produce()
            for item in iterator:
                if not self._put(item):
                    return
            self._put(_End())
        except BaseException as exc:  # reaches the consumer, raised there
            self._put(_Failed(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # the original error, if any, is already on its way
                    log.exception("error while closing the producer")

    def depth(self) -> int:
        """Items produced and waiting for the consumer."""
        return self._queue.qsize()

    def ready(self) -> bool:
        """Whether :meth:`get` would return (or raise) without waiting."""
        return self._done or not self._queue.empty()

    def get(self) -> T:
        """The next item; raises ``StopIteration`` at the end, or the producer's exception."""
        if self._done:
            raise StopIteration
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S * 4)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._done = True
                    raise StopIteration from None
        if isinstance(item, _End):
            self._done = True
            raise StopIteration
        if isinstance(item, _Failed):
            self._done = True
            raise item.error
        return item  # type: ignore[return-value]

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread and wait for it (and the pools it owns) to finish."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        while self._thread.is_alive():
            try:  # unblock a producer waiting for space
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(_POLL_S)
            if time.monotonic() > deadline:
                log.warning("thread %s did not stop within %.0f s", self._thread.name, timeout)
                break
        self._done = True
