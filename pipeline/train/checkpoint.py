"""Save a training run from rank 0 and resume it on every rank.

A checkpoint is one ``torch.save`` file holding the model, optimizer and LR-scheduler state,
the position (finished epochs, and steps of the next epoch already taken), the metrics history,
the config it was trained with and, per rank, what a mid-epoch resume needs: the loader's state,
the RNG states and the epoch's running metric sums. It is written to a temporary name, flushed
to disk and renamed, so a crash or a kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import PipelineError

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint", "unwrap"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` restored besides the weights."""

    epoch: int
    """Epochs finished when it was saved; training resumes with this epoch index."""
    history: list[dict[str, Any]]
    """Per-epoch metrics up to ``epoch``."""
    config: dict[str, Any]
    """The config the run was started with."""
    step: int = 0
    """Steps of epoch ``epoch`` already taken (``0``: saved at an epoch boundary)."""
    global_step: int = 0
    """Steps taken since the run started."""
    ranks: list[dict[str, Any]] = field(default_factory=list)
    """Per rank (index = rank): ``loader`` state, ``rng`` states, running ``sums`` of the epoch."""
    scheduler: dict[str, Any] | None = None
    """The LR scheduler's state (already restored when a scheduler was given)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside ``DistributedDataParallel`` (or the model itself)."""
    return getattr(model, "module", model)


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, Any]],
    config: Mapping[str, Any],
    scheduler: Any = None,
    step: int = 0,
    global_step: int = 0,
    ranks: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a checkpoint atomically (call it from rank 0 only).

    Args:
        path: The checkpoint file.
        model: The model, bare or wrapped in DDP.
        optimizer: Its optimizer.
        epoch: Epochs finished.
        history: Per-epoch metrics so far.
        config: The run's config, as a mapping.
        scheduler: The LR scheduler. Defaults to ``None``.
        step: Steps of epoch ``epoch`` already taken. Defaults to ``0`` (an epoch boundary).
        global_step: Steps since the run started. Defaults to ``0``.
        ranks: Per-rank resume state (loader, RNG, running sums). Defaults to ``None``.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "step": step,
        "global_step": global_step,
        "history": list(history),
        "config": dict(config),
        "ranks": list(ranks or []),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    log.debug("saved checkpoint %s (epoch %d, step %d)", path, epoch, step)
    return path


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    expected: Mapping[str, Any] | None = None,
    scheduler: Any = None,
) -> Checkpoint | None:
    """Restore ``model`` (and ``optimizer``) from ``path``; ``None`` when there is no checkpoint.

    Args:
        path: The checkpoint file.
        model: The bare model (before wrapping in DDP) to load the weights into.
        optimizer: Its optimizer. Defaults to ``None`` (weights only).
        expected: Config values the checkpoint must have been trained with (the model's shape,
            the data), checked before anything is loaded. Defaults to ``None`` (no check).
        scheduler: The LR scheduler to restore. Defaults to ``None``.

    Raises:
        PipelineError: The file is not a checkpoint, it was trained with other ``expected``
            values, or it holds a different model.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, OSError, ValueError) as exc:
        raise PipelineError(
            f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}",
            hint="delete it, or pick another run_dir",
        ) from None
    saved = state.get("config", {}) if isinstance(state, dict) else {}
    for key, value in (expected or {}).items():
        if saved.get(key) != value:
            raise PipelineError(
                f"{path} was trained with {key}={saved.get(key)!r}, this run has {key}={value!r}",
                hint="use another run_dir, delete the checkpoint, or turn resume off",
            )
    try:
        unwrap(model).load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise PipelineError(
            f"cannot resume from {path}: {str(exc).splitlines()[0]}",
            hint="it was written by a different model or config; pick a new run_dir or turn resume off",
        ) from None
    step = int(state.get("step", 0))
    log.info("resuming from %s (epoch %d%s)", path, state["epoch"], f", step {step}" if step else "")
    return Checkpoint(
        epoch=int(state["epoch"]),
        history=list(state["history"]),
        config=dict(state["config"]),
        step=step,
        global_step=int(state.get("global_step", 0)),
        ranks=list(state.get("ranks", [])),
        scheduler=state.get("scheduler"),
    )
