"""What both training jobs share: seeds per epoch, the LR schedule and the run folder's files.

A run folder holds ``checkpoint.pt`` (rank 0, after every epoch, every ``checkpoint_every``
steps and on SIGTERM/SIGINT), ``metrics.json`` (the per-epoch history plus a summary) and
``loss_curve.png``. Running a job again on the same folder resumes from the checkpoint, in the
middle of an epoch if it was saved there: nothing already trained is trained again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.dataset import normalize_url
from pipeline.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from pipeline.train.metrics import plot_loss_curve, write_metrics

__all__ = ["RunDir", "absolute_paths", "cosine_lr", "derive_seed", "format_row", "prepare_run_dir"]

log = logging.getLogger(__name__)

_URL_FIELDS = ("train_url", "eval_url")


def derive_seed(*parts: int) -> int:
    """One 32-bit seed mixed from several integers at once.

    Unlike ``seed + epoch``, ``(1, 2)`` and ``(2, 1)`` give unrelated seeds.
    """
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def cosine_lr(base_lr: float, epoch: int, epochs: int, *, warmup: int = 1) -> float:
    """Learning rate of ``epoch`` (from 0): linear warm-up, then cosine decay to 5% of ``base_lr``."""
    if epoch < warmup:
        return base_lr * (epoch + 1) / (warmup + 1)
    progress = (epoch - warmup) / max(1, epochs - warmup)
    return base_lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def absolute_paths(config: Any) -> Any:
    """``config`` with dataset URLs and ``run_dir`` made absolute, as the driver sees them.

    Ranks may run in another working directory (Spark executors); resolve before shipping.
    """
    changes: dict[str, Any] = {}
    for name in _URL_FIELDS:
        value = getattr(config, name, None)
        if value:
            changes[name] = normalize_url(value)
    changes["run_dir"] = str(Path(config.run_dir).expanduser().resolve())
    return dataclasses.replace(config, **changes)


def format_row(row: dict[str, Any]) -> str:
    """One log line for an epoch's metrics: ``epoch 3/10  train_loss 0.1234  ...``."""
    parts = []
    for key, value in row.items():
        if key in ("epoch", "epochs") or isinstance(value, (dict, list)):
            continue
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return f"epoch {row['epoch']}/{row.get('epochs', '?')}  " + "  ".join(parts)


@dataclass(frozen=True)
class RunDir:
    """The files of one training run."""

    path: Path

    @property
    def checkpoint(self) -> Path:
        """``checkpoint.pt``: model, optimizer, finished epochs, history, config."""
        return self.path / "checkpoint.pt"

    @property
    def metrics(self) -> Path:
        """``metrics.json``: the per-epoch history and the run's summary."""
        return self.path / "metrics.json"

    @property
    def loss_curve(self) -> Path:
        """``loss_curve.png``: the ``*_loss`` series against the epoch."""
        return self.path / "loss_curve.png"

    def resume(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: dict[str, Any],
        must_match: tuple[str, ...],
        scheduler: Any = None,
    ) -> Checkpoint | None:
        """Load the checkpoint if there is one; refuse one trained with different settings.

        Args:
            model: The bare model, already on its device.
            optimizer: Its optimizer.
            config: This run's config as a mapping.
            must_match: Keys whose value must equal the checkpoint's (the model's shape, the data).
            scheduler: The LR scheduler. Defaults to ``None``.

        Raises:
            PipelineError: A key in ``must_match`` differs, or the checkpoint does not fit the model.
        """
        expected = {key: config.get(key) for key in must_match}
        return load_checkpoint(
            self.checkpoint, model=model, optimizer=optimizer, expected=expected, scheduler=scheduler
        )

    def record_epoch(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        epoch: int,
        history: list[dict[str, Any]],
        config: dict[str, Any],
        title: str,
        **position: Any,
    ) -> None:
        """Rank 0, after an epoch: checkpoint, metrics JSON and loss curve.

        ``position`` goes to :func:`save_checkpoint` (``scheduler``, ``global_step``, ``ranks``).
        """
        save_checkpoint(
            self.checkpoint,
            model=model,
            optimizer=optimizer,
            epoch=epoch,
            history=history,
            config=config,
            **position,
        )
        write_metrics(self.metrics, history, config=config, status="running")
        plot_loss_curve(self.loss_curve, history, title=title)

    def finish(self, history: list[dict[str, Any]], config: dict[str, Any], **summary: Any) -> None:
        """Rank 0, at the end: the final metrics JSON (``status: "finished"``) and loss curve."""
        write_metrics(self.metrics, history, config=config, **{**summary, "status": "finished"})


def prepare_run_dir(path: str | os.PathLike[str], *, resume: bool) -> RunDir:
    """The run folder, created; without ``resume`` an old checkpoint there is removed first."""
    run = RunDir(Path(path))
    run.path.mkdir(parents=True, exist_ok=True)
    if not resume and run.checkpoint.exists():
        log.info("resume is off: removing %s", run.checkpoint)
        run.checkpoint.unlink()
    return run
