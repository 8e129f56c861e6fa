"""Per-epoch metrics: summed over ranks, logged, written as JSON and drawn as a loss curve.

The loss curve has a second panel when the history holds the loader's figures
(``data_wait_fraction``, ``data_samples_per_s``): how much of each epoch the training loop
waited for data, beside the loss it reached.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["RunningSums", "plot_loss_curve", "write_metrics"]


class RunningSums:
    """Sums of named values over the batches of one epoch, all-reduced across ranks at the end.

    Call :meth:`add` per batch with sums (e.g. ``loss * n``, correct predictions, ``n``); they stay
    on the device, so no per-batch ``.item()`` stalls the GPU. :meth:`reduce` sums them over all
    ranks (when a process group is initialised) and returns Python floats.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._sums: dict[str, torch.Tensor] = {}

    def add(self, **values: torch.Tensor | float) -> None:
        """Add each value (a tensor scalar or a number) to its running sum."""
        for name, value in values.items():
            value = torch.as_tensor(value, dtype=torch.float64, device=self.device).detach()
            if name in self._sums:
                self._sums[name] += value
            else:
                self._sums[name] = value.clone()

    def local(self) -> dict[str, float]:
        """This rank's sums as floats (for a checkpoint); no collective."""
        return {name: float(value) for name, value in self._sums.items()}

    def load(self, sums: Mapping[str, float]) -> None:
        """Start from ``sums`` (what :meth:`local` returned before an interruption)."""
        self._sums = {
            name: torch.tensor(float(value), dtype=torch.float64, device=self.device)
            for name, value in sums.items()
        }

    def reduce(self, *, across_ranks: bool = True) -> dict[str, float]:
        """The sums as floats: over all ranks (every rank must call this), or this rank's own.

        Args:
            across_ranks: All-reduce over the process group when one is initialised.
                Defaults to ``True``.
        """
        import torch.distributed as dist

        names = sorted(self._sums)
        if not names:
            return {}
        stacked = torch.stack([self._sums[n] for n in names])
        if across_ranks and dist.is_available() and dist.is_initialized():
            dist.all_reduce(stacked)
        return dict(zip(names, stacked.tolist(), strict=True))


def write_metrics(path: str | os.PathLike[str], history: Sequence[Mapping[str, Any]], **summary: Any) -> Path:
    """Write ``{"epochs": history, **summary}`` as indented JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**summary, "epochs": list(history)}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def plot_loss_curve(
    path: str | os.PathLike[str], history: Sequence[Mapping[str, Any]], *, title: str = "loss"
) -> Path:
    """Draw every ``*_loss`` series of ``history`` against the epoch as a PNG.

    With the loader's figures in ``history`` (``data_wait_fraction``, ``data_samples_per_s``), a
    second panel beside the loss shows the share of each epoch spent waiting for data and the
    samples per second. Uses matplotlib's Agg canvas directly (no pyplot, no display, no global
    backend switch).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _series(history, "data_wait_fraction")
    figure = Figure(figsize=(11 if data else 6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 2 if data else 1, 1)
    keys = sorted({k for row in history for k in row if k.endswith("_loss")})
    for key in keys:
        points = [
            (row["epoch"], row[key])
            for row in history
            if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o", label=key.replace("_", " "))
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.set_title(title)
    if keys:
        axes.legend()
    axes.grid(alpha=0.3)
    if data:
        _plot_data(figure.add_subplot(1, 2, 2), history, data)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _series(history: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, float]]:
    return [
        (row["epoch"], row[key])
        for row in history
        if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])
    ]


def _plot_data(axes: Any, history: Sequence[Mapping[str, Any]], wait: list[tuple[float, float]]) -> None:
    xs, ys = zip(*wait, strict=True)
    axes.bar(xs, [100 * y for y in ys], color="tab:orange", alpha=0.6, label="waiting for data (%)")
    axes.set_ylim(0, 100)
    axes.set_xlabel("epoch")
    axes.set_ylabel("data wait (% of the epoch)")
    axes.set_title("loader")
    rate = _series(history, "data_samples_per_s")
    if rate:
        twin = axes.twinx()
        rx, ry = zip(*rate, strict=True)
        twin.plot(rx, ry, marker="o", color="tab:blue", label="samples/s (rank 0)")
        twin.set_ylabel("samples/s")
        twin.set_ylim(bottom=0)
        twin.legend(loc="upper right")
    axes.legend(loc="upper left")
