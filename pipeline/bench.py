"""Measure a loader: samples/s, MB/s, batch wait time p50/p99 and peak RSS.

Used by ``pipeline bench`` and ``benchmarks/bench_loader.py``::

    result = measure(lambda: pipeline.open_loader(url, batch_size=64, num_epochs=1))
    print(result.samples_per_s)

*Batch wait* is the time the training loop spends inside ``next(loader)`` -- what a GPU would
idle for if the step itself took no time. For this package's loader, the result also carries
``loader.stats()``'s time per stage (read, decode, transform, shuffle, collate, h2d) and the
stage that bounds the throughput.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["BenchResult", "batch_rows", "measure", "tensor_bytes"]


@dataclass(frozen=True)
class BenchResult:
    """What one measured pass over a loader delivered."""

    rows: int
    batches: int
    seconds: float
    samples_per_s: float
    mb_per_s: float
    """Megabytes (10^6) per second of batch tensors handed to the training loop."""
    wait_p50_ms: float
    wait_p99_ms: float
    peak_rss_mb: float
    """Peak resident memory of this process so far, in MiB."""
    cpu_percent: float
    """CPU time of this process (all threads) over wall time, in percent of one core."""
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds per stage, summed over the stage's threads (``loader.stats()``; empty for other loaders)."""
    bound_by: str | None = None
    """The stage that bounds throughput (``loader.stats()``); ``None`` for other loaders."""
    wait_fraction: float | None = None
    """Share of the wall time spent waiting for batches (``loader.stats()``)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def batch_rows(batch: Any) -> int:
    """Rows in a batch: a dict of tensors/lists, a tensor, or a tuple/list of those."""
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], (torch.Tensor, np.ndarray)):
        batch = batch[0]
    return len(batch)


def tensor_bytes(batch: Any) -> int:
    """Bytes of the tensors and arrays in a batch (lists of strings are not counted)."""
    values: Iterable[Any] = batch.values() if isinstance(batch, dict) else [batch]
    total = 0
    for value in values:
        if isinstance(value, torch.Tensor):
            total += value.element_size() * value.nelement()
        elif isinstance(value, np.ndarray):
            total += value.nbytes
    return total


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux


def measure(open_fn: Callable[[], Any], *, max_batches: int | None = None) -> BenchResult:
    """Iterate the loader ``open_fn()`` returns (a context manager or a plain iterable) and time it.

    Args:
        open_fn: Builds the loader; its construction (listing files, reading footers) is timed
            too, as a training job would wait for it.
        max_batches: Stop after this many batches. Defaults to ``None`` (until exhausted).

    Returns:
        The :class:`BenchResult`.
    """
    waits: list[float] = []
    rows = nbytes = 0
    start = time.perf_counter()
    cpu_start = os.times()
    loader = open_fn()
    context = loader if hasattr(loader, "__enter__") else _Nothing(loader)
    figures: dict[str, Any] = {}
    with context as opened:
        iterator = iter(opened)
        while max_batches is None or len(waits) < max_batches:
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            waits.append(time.perf_counter() - t0)
            rows += batch_rows(batch)
            nbytes += tensor_bytes(batch)
        if callable(getattr(opened, "stats", None)):
            figures = opened.stats()
    seconds = time.perf_counter() - start
    cpu_end = os.times()
    cpu = (cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system)
    wait_ms = np.asarray(waits) * 1e3 if waits else np.zeros(1)
    return BenchResult(
        rows=rows,
        batches=len(waits),
        seconds=round(seconds, 4),
        samples_per_s=round(rows / seconds, 1) if seconds > 0 else 0.0,
        mb_per_s=round(nbytes / 1e6 / seconds, 2) if seconds > 0 else 0.0,
        wait_p50_ms=round(float(np.percentile(wait_ms, 50)), 3),
        wait_p99_ms=round(float(np.percentile(wait_ms, 99)), 3),
        peak_rss_mb=round(_peak_rss_mb(), 1),
        cpu_percent=round(100 * cpu / seconds, 1) if seconds > 0 else 0.0,
        stages=dict(figures.get("stages", {})),
        bound_by=figures.get("bound_by"),
        wait_fraction=figures.get("wait_fraction"),
    )


class _Nothing:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc: object) -> None:
        close = getattr(self.value, "close", None)
        if close is not None:
            close()
