"""The shuffle/shard plan: which rows of which row group each rank reads, in which order.

Pure functions of ``(seed, epoch, rank, world_size, row-group sizes, options)``; they read no
files and touch no global state, so every rank computes the same global order by itself.

Policy (the same as ``torch.utils.data.DistributedSampler``):

1. The row groups of the dataset are ordered -- stored order, or a permutation drawn from
   ``np.random.default_rng([seed, epoch])`` -- and their rows form one global stream.
2. The stream is cut into ``world_size`` contiguous ranges of equal length ``k``:
   ``drop_last=False`` pads: ``k = ceil(rows / world_size)`` and the stream wraps around to its
   start for the few missing rows (at most ``world_size - 1`` rows are read twice per epoch);
   ``drop_last=True`` drops: ``k = rows // world_size`` and the tail (at most
   ``world_size - 1`` rows, different ones each shuffled epoch) is not read that epoch.
3. Rank ``r`` reads ``[r * k, (r + 1) * k)`` as work items -- slices of row groups.

Every rank therefore reads exactly ``k`` rows per epoch, and yields the same number of batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

__all__ = ["WorkItem", "epoch_order", "epoch_plan", "rows_per_rank"]


@dataclass(frozen=True)
class WorkItem:
    """Rows ``[start, stop)`` of row group ``piece`` (an index into the dataset's row groups)."""

    epoch: int
    piece: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def rows_per_rank(total_rows: int, world_size: int, drop_last: bool) -> int:
    """Rows each rank reads per epoch: ``total // world`` when dropping, else the ceiling."""
    if drop_last:
        return total_rows // world_size
    return -(-total_rows // world_size)


def epoch_order(num_pieces: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order of row groups in epoch ``epoch`` (the same on every rank)."""
    if not shuffle:
        return np.arange(num_pieces)
    return np.random.default_rng([seed, epoch]).permutation(num_pieces)


def epoch_plan(
    sizes: Sequence[int],
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    drop_last: bool = False,
    max_item_rows: int | None = None,
) -> list[WorkItem]:
    """The work items rank ``rank`` reads in epoch ``epoch``, in reading order.

    Args:
        sizes: Rows of each row group (after any predicate), in stored order.
        seed: Seed of the shuffle.
        epoch: Epoch number, from 0.
        rank: This process's rank. Defaults to ``0``.
        world_size: Number of ranks. Defaults to ``1``.
        shuffle: Permute the row groups; ``False`` keeps the stored order. Defaults to ``True``.
        drop_last: Drop the uneven tail instead of padding by wrapping around. Defaults to ``False``.
        max_item_rows: Split items into consecutive pieces of at most this many rows (the
            order of rows is unchanged). Defaults to ``None`` (one item per row-group slice).

    Returns:
        Work items whose row counts sum to :func:`rows_per_rank`.

    Raises:
        ValueError: ``rank`` is outside ``[0, world_size)`` or a size is negative.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    sizes_arr = np.asarray(sizes, dtype=np.int64)
    if (sizes_arr < 0).any():
        raise ValueError(f"row-group sizes must be >= 0, got {sizes_arr.min()}")
    total = int(sizes_arr.sum())
    k = rows_per_rank(total, world_size, drop_last)
    if total == 0 or k == 0:
        return []
    order = epoch_order(len(sizes_arr), seed=seed, epoch=epoch, shuffle=shuffle)
    order = order[sizes_arr[order] > 0]
    ordered_sizes = sizes_arr[order]
    starts = np.concatenate([[0], np.cumsum(ordered_sizes)])  # offsets in the global stream
    items: list[WorkItem] = []
    begin = rank * k
    end = begin + k
    while begin < end:
        lap_begin = begin % total  # position inside one pass of the stream (wraps when padding)
        take = min(end - begin, total - lap_begin)
        items.extend(_slice(order, starts, epoch, lap_begin, lap_begin + take))
        begin += take
    if max_item_rows is not None:
        if max_item_rows < 1:
            raise ValueError(f"max_item_rows must be >= 1, got {max_item_rows}")
        items = [part for item in items for part in _split(item, max_item_rows)]
    return items


def _split(item: WorkItem, max_rows: int) -> list[WorkItem]:
    """``item`` as consecutive items of at most ``max_rows`` rows, sized as evenly as possible."""
    if item.rows <= max_rows:
        return [item]
    parts = -(-item.rows // max_rows)
    bounds = [item.start + (item.rows * k) // parts for k in range(parts + 1)]
    return [WorkItem(epoch=item.epoch, piece=item.piece, start=a, stop=b) for a, b in pairwise(bounds)]


def _slice(order: np.ndarray, starts: np.ndarray, epoch: int, lo: int, hi: int) -> list[WorkItem]:
    """Work items covering global positions ``[lo, hi)`` of one pass of the stream."""
    first = int(np.searchsorted(starts, lo, side="right")) - 1
    items = []
    i = first
    while i < len(order) and starts[i] < hi:
        a = max(lo, int(starts[i])) - int(starts[i])
        b = min(hi, int(starts[i + 1])) - int(starts[i])
        if b > a:
            items.append(WorkItem(epoch=epoch, piece=int(order[i]), start=a, stop=b))
        i += 1
    return items
