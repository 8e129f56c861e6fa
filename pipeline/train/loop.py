"""The per-rank training loop every job shares: resume, DDP, epochs, metrics, checkpoints.

A job builds its model inside :func:`~pipeline.train.process_group.setup` and describes what is
its own in a :class:`Task` (how a batch becomes a loss, how to evaluate); :func:`fit` does the
rest the same way for every job::

    with setup() as ctx:
        torch.manual_seed(config.seed)              # the same initial weights on every rank
        model = SmallCNN(...).to(ctx.device)
        return fit(ctx, config, settings, model, task, must_match=(...))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.train.metrics import RunningSums
from pipeline.train.process_group import DistContext
from pipeline.train.run import cosine_lr, derive_seed, format_row, prepare_run_dir

__all__ = ["Step", "Task", "fit"]

log = logging.getLogger(__name__)

Step = Callable[
    [nn.Module, dict[str, Any]], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | int]
]
"""``step(ddp_model, batch) -> (loss to backpropagate, loss sum, correct, count)`` for one batch."""


@dataclass(frozen=True)
class Task:
    """What one training job does differently from the others."""

    title: str
    """Title of the loss curve (and of the job in logs)."""
    fields: Sequence[str]
    """Dataset fields the loader reads."""
    step: Step
    """Forward pass and loss of one batch (see :data:`Step`)."""
    evaluate: Callable[[nn.Module], dict[str, float]] | None
    """Held-out metrics of the bare model, computed on rank 0 after each epoch; ``None`` = none."""
    count_key: str = "train_samples"
    """Row key of what ``count`` counts (samples, tokens)."""
    rate_key: str | None = None
    """Row key of ``count`` per second of the epoch; ``None`` = not recorded."""
    loader_on_device: bool = True
    """Let the loader deliver batches on the rank's device (pinned, side-stream copies)."""
    clip_grad_norm: float | None = None
    """Clip the gradients' norm to this before each step; ``None`` = no clipping."""


def fit(
    ctx: DistContext,
    config: Any,
    settings: Mapping[str, Any],
    model: nn.Module,
    task: Task,
    *,
    must_match: Sequence[str],
) -> dict[str, Any]:
    """Train ``model`` on this rank for ``config.epochs``, resuming from ``config.run_dir``.

    Args:
        ctx: This rank's place in the process group.
        config: The job's settings: ``run_dir``, ``train_url``, ``epochs``, ``batch_size``, ``lr``,
            ``weight_decay``, ``seed``, ``workers`` (and ``eval_url`` for ``task.evaluate``).
        settings: Settings recorded in checkpoints and ``metrics.json``.
        model: The model, on ``ctx.device``, initialised the same on every rank.
        task: The job's step and evaluation.
        must_match: Settings a checkpoint must share to be resumed from.

    Returns:
        Rank 0's summary: history, paths, timing (every rank returns its own view).
    """
    from torch.nn.parallel import DistributedDataParallel

    from pipeline import open_loader

    run = prepare_run_dir(config.run_dir, resume=True)  # the driver already applied resume=False
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    restored = run.resume(model=model, optimizer=optimizer, config=settings, must_match=must_match)
    start = restored.epoch if restored else 0
    ctx.ensure_agreed(
        start,
        what=f"the epoch to resume from ({config.run_dir}/checkpoint.pt)",
        hint="run_dir must be on storage every rank sees (on a cluster: a shared or mounted folder)",
    )
    history = restored.history if restored else []
    ddp = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    started = time.perf_counter()
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        lr = cosine_lr(config.lr, epoch, config.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(derive_seed(config.seed, epoch, ctx.rank))  # dropout; reproducible on resume
        sums = RunningSums(ctx.device)
        ddp.train()
        # With loader_on_device and a CUDA device the loader hands over batches already on the
        # GPU: it collates into pinned buffers and copies on a side stream, the equivalent of
        # `x.pin_memory().to(device, non_blocking=True)` one batch ahead of this loop.
        with open_loader(
            config.train_url,
            batch_size=config.batch_size,
            seed=derive_seed(config.seed, epoch),
            num_epochs=1,
            shuffle=True,
            drop_last=True,  # every rank takes the same number of steps (DDP needs it)
            device=ctx.device if task.loader_on_device else None,
            workers=config.workers,
            fields=list(task.fields),
        ) as loader:
            for batch in loader:
                loss, loss_sum, correct, count = task.step(ddp, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if task.clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), task.clip_grad_norm)
                optimizer.step()
                sums.add(loss=loss_sum.detach(), correct=correct, n=count)
        totals = sums.reduce()  # every rank: all-reduce over the process group
        n = max(totals.get("n", 0.0), 1.0)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "epochs": config.epochs,
            "train_loss": totals.get("loss", float("nan")) / n,
            "train_accuracy": totals.get("correct", 0.0) / n,
            task.count_key: int(totals.get("n", 0)),
            "lr": lr,
        }
        if ctx.is_main:
            if task.evaluate is not None:
                t_eval = time.perf_counter()
                row.update(task.evaluate(model))
                row["eval_seconds"] = time.perf_counter() - t_eval
            row["seconds"] = time.perf_counter() - t0
            if task.rate_key:
                row[task.rate_key] = row[task.count_key] / max(row["seconds"], 1e-9)
            history.append(row)
            run.record_epoch(
                model=model,
                optimizer=optimizer,
                epoch=epoch + 1,
                history=history,
                config=settings,
                title=task.title,
            )
            log.info("%s: %s", task.title, format_row(row))
        torch.distributed.barrier()
    summary = {
        "run_dir": str(run.path),
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "backend": ctx.backend,
        "resumed_from_epoch": start,
        "epochs_trained": config.epochs - start,
        "train_seconds": time.perf_counter() - started,
        "final": history[-1] if history else {},
    }
    if ctx.is_main:
        run.finish(history, settings, **summary)
    return {**summary, "history": history, "metrics": str(run.metrics), "loss_curve": str(run.loss_curve)}
