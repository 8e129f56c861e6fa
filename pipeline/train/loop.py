"""The per-rank training loop every job shares: resume, DDP, epochs, metrics, checkpoints.

A job builds its model inside :func:`~pipeline.train.process_group.setup` and describes what is
its own in a :class:`Task` (how a batch becomes a loss, how to evaluate); :func:`fit` does the
rest the same way for every job::

    with setup() as ctx:
        torch.manual_seed(config.seed)              # the same initial weights on every rank
        model = SmallCNN(...).to(ctx.device)
        return fit(ctx, config, model, task, must_match=(...))

One loader serves the whole run (``num_epochs=epochs``: the reader's own per-epoch order, and
its read-ahead into the next epoch while rank 0 evaluates). A checkpoint is saved after every
epoch, every ``config.checkpoint_every`` steps, and when SIGTERM or SIGINT arrives (preemption:
the step in progress finishes, the ranks agree to stop after the same step, the checkpoint is
written, and :func:`fit` returns with ``status="preempted"``). Resuming from a checkpoint saved
mid-epoch continues that epoch at the next batch: model, optimizer, LR scheduler, RNG states,
the loader's position and the epoch's running metric sums are all restored, so the run ends
with the same weights and metrics as one that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.errors import ConfigError, PipelineError
from pipeline.train.metrics import RunningSums, write_metrics
from pipeline.train.monitor import Progress, Trackers
from pipeline.train.preemption import Agreement, StopSignals, gather, rng_state, set_rng_state
from pipeline.train.process_group import DistContext
from pipeline.train.run import RunDir, cosine_lr, derive_seed, format_row, prepare_run_dir

__all__ = ["Step", "Task", "fit", "loader_line"]

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
    drop_last: bool = False
    """``False``: every sample every epoch (shards padded, last batch short); ``True``: full batches only."""


def fit(
    ctx: DistContext,
    config: Any,
    model: nn.Module,
    task: Task,
    *,
    must_match: Sequence[str],
) -> dict[str, Any]:
    """Train ``model`` on this rank for ``config.epochs``, resuming from ``config.run_dir``.

    Args:
        ctx: This rank's place in the process group.
        config: The job's settings: ``run_dir``, ``train_url``, ``epochs``, ``batch_size``, ``lr``,
            ``weight_decay``, ``seed``, ``workers`` (and ``eval_url`` for ``task.evaluate``;
            optional ``checkpoint_every``: steps between checkpoints, ``None``/``0`` = per epoch
            only; optional ``tensorboard_dir``; optional ``preemption_drill``: rank 0 asks to stop as
            on SIGTERM in the middle of the middle epoch, what ``pipeline demo`` shows). All of its fields are recorded in checkpoints and
            ``metrics.json`` (a dataclass, or any object with attributes).
        model: The model, on ``ctx.device``, initialised the same on every rank.
        task: The job's step and evaluation.
        must_match: Settings a checkpoint must share to be resumed from.

    Returns:
        Rank 0's summary: history, paths, timing, ``status`` (``"finished"`` or ``"preempted"``)
        (every rank returns its own view).
    """
    from torch.nn.parallel import DistributedDataParallel

    from pipeline import open_loader

    settings = config_dict(config)
    run = prepare_run_dir(config.run_dir, resume=True)  # the driver already applied resume=False
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    epochs = config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: cosine_lr(1.0, e, epochs))
    restored = run.resume(
        model=model, optimizer=optimizer, scheduler=scheduler, config=dict(settings), must_match=must_match
    )
    start, first_step = (restored.epoch, restored.step) if restored else (0, 0)
    hint = "run_dir must be on storage every rank sees (on a cluster: a shared or mounted folder)"
    ctx.ensure_agreed(start, what=f"the epoch to resume from ({config.run_dir}/checkpoint.pt)", hint=hint)
    ctx.ensure_agreed(first_step, what=f"the step to resume from ({config.run_dir}/checkpoint.pt)", hint=hint)
    if first_step and restored is not None and len(restored.ranks) != ctx.world_size:
        raise PipelineError(
            f"{run.checkpoint} was saved in the middle of epoch {start + 1} by {len(restored.ranks)} ranks; "
            f"this run has {ctx.world_size}",
            hint=f"resume with --num-processes {len(restored.ranks)} (a mid-epoch checkpoint resumes only on "
            "the same number of ranks), or use another run_dir",
        )
    history = restored.history if restored else []
    global_step = restored.global_step if restored else 0
    every = int(getattr(config, "checkpoint_every", None) or 0)
    if every < 0:
        raise ConfigError(f"checkpoint_every must be >= 1 steps (or None), got {every}")
    ddp = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    agreement = Agreement(ctx)
    progress = Progress(enabled=ctx.is_main)
    trackers = Trackers(tensorboard_dir=getattr(config, "tensorboard_dir", None)) if ctx.is_main else None
    if trackers is not None:
        trackers.log_params(settings)
    started = time.perf_counter()
    status, stopped_at = "finished", (epochs, 0)
    # With loader_on_device and a CUDA device the loader hands over batches already on the
    # GPU: it collates into pinned buffers and copies on a side stream, the equivalent of
    # `x.pin_memory().to(device, non_blocking=True)` one batch ahead of this loop.
    loader = open_loader(
        config.train_url,
        batch_size=config.batch_size,
        seed=config.seed,
        num_epochs=epochs,
        shuffle=True,
        drop_last=task.drop_last,
        device=ctx.device if task.loader_on_device else None,
        workers=config.workers,
        fields=list(task.fields),
    )
    try:
        with loader, StopSignals() as signals:
            _restore_loader(loader, restored, ctx.rank, start)
            steps = len(loader)
            drill = _drill_step(config, steps, epochs, global_step) if ctx.is_main else None
            rank_state = restored.ranks[ctx.rank] if restored is not None and first_step else None
            for epoch in range(start, epochs):
                step = first_step if epoch == start else 0
                sums = RunningSums(ctx.device)
                spent = 0.0
                if step and rank_state is not None:
                    sums.load(rank_state["sums"])
                    set_rng_state(rank_state["rng"], ctx.device)
                    spent = float(rank_state.get("seconds", 0.0))
                else:
                    torch.manual_seed(derive_seed(config.seed, epoch, ctx.rank))  # dropout; reproducible
                lr = optimizer.param_groups[0]["lr"]
                ddp.train()
                t0 = time.perf_counter() - spent
                stop = False
                while step < steps:
                    batch = next(loader)
                    loss, loss_sum, correct, count = task.step(ddp, batch)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if task.clip_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), task.clip_grad_norm)
                    optimizer.step()
                    sums.add(loss=loss_sum.detach(), correct=correct, n=count)
                    step += 1
                    global_step += 1
                    if global_step == drill:
                        signals.request(
                            f"preemption drill at epoch {epoch + 1}/{epochs}, step {step}/{steps}"
                        )
                    progress.update(epoch=epoch, epochs=epochs, step=step, steps=steps, stats=loader.stats)
                    stop = agreement.any(signals.received is not None)
                    if step < steps and (stop or (every and global_step % every == 0)):
                        ranks = gather(
                            ctx,
                            {
                                "loader": loader.state_dict(),
                                "rng": rng_state(ctx.device),
                                "sums": sums.local(),
                                "seconds": time.perf_counter() - t0,
                            },
                        )
                        if ctx.is_main:
                            run_save(
                                run,
                                model,
                                optimizer,
                                scheduler,
                                epoch,
                                step,
                                global_step,
                                history,
                                settings,
                                ranks,
                            )
                            write_metrics(
                                run.metrics,
                                history,
                                config=dict(settings),
                                status="preempted" if stop else "running",
                            )
                        torch.distributed.barrier()
                        if stop:
                            break
                if stop and step < steps:
                    status, stopped_at = "preempted", (epoch, step)
                    break
                row = _epoch_row(task, epoch, epochs, lr, sums.reduce(), loader.stats())
                scheduler.step()
                if ctx.is_main:
                    if task.evaluate is not None:
                        t_eval = time.perf_counter()
                        row.update(task.evaluate(model))
                        row["eval_seconds"] = time.perf_counter() - t_eval
                    row["seconds"] = time.perf_counter() - t0
                    if task.rate_key:
                        row[task.rate_key] = row[task.count_key] / max(row["seconds"], 1e-9)
                    history.append(row)
                    progress.close()
                    run.record_epoch(
                        model=model,
                        optimizer=optimizer,
                        epoch=epoch + 1,
                        history=history,
                        config=dict(settings),
                        title=task.title,
                        scheduler=scheduler,
                        global_step=global_step,
                        ranks=[{"loader": loader.state_dict()}],  # an epoch boundary: any rank's will do
                    )
                    if trackers is not None:
                        trackers.log_epoch(row, epoch + 1)
                    log.info("%s: %s", task.title, format_row(row))
                    log.info("%s: loader on rank 0: %s", task.title, loader_line(row["data"]))
                torch.distributed.barrier()
                if stop and epoch + 1 < epochs:
                    status, stopped_at = "preempted", (epoch + 1, 0)
                    break
    finally:
        progress.close()
        if trackers is not None:
            trackers.close()
    summary: dict[str, Any] = {
        "run_dir": str(run.path),
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "backend": ctx.backend,
        "status": status,
        "resumed_from_epoch": start,
        "resumed_from_step": first_step,
        "epochs_trained": (stopped_at[0] if status == "preempted" else epochs) - start,
        "global_step": global_step,
        "steps_per_epoch": steps,
        "train_seconds": time.perf_counter() - started,
        "final": history[-1] if history else {},
    }
    if status == "preempted":
        epoch, step = stopped_at
        summary["resume"] = (
            f"preempted at epoch {epoch + 1}/{epochs}, step {step}/{steps}: checkpoint saved in "
            f"{run.checkpoint}; run the same command again to resume from there (resume is on by default)"
        )
        if ctx.is_main:
            log.warning("%s", summary["resume"])
            write_metrics(run.metrics, history, config=dict(settings), **summary)
    elif ctx.is_main:
        run.finish(history, dict(settings), **summary)
    return {**summary, "history": history, "metrics": str(run.metrics), "loss_curve": str(run.loss_curve)}


def run_save(
    run: RunDir,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    step: int,
    global_step: int,
    history: list[dict[str, Any]],
    settings: Mapping[str, Any],
    ranks: list[dict[str, Any]],
) -> None:
    """Rank 0: a mid-epoch checkpoint (``epoch`` epochs finished, ``step`` steps of the next taken)."""
    from pipeline.train.checkpoint import save_checkpoint

    save_checkpoint(
        run.checkpoint,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        epoch=epoch,
        step=step,
        global_step=global_step,
        history=history,
        config=dict(settings),
        ranks=ranks,
    )


def _drill_step(config: Any, steps: int, epochs: int, done: int) -> int | None:
    """With ``config.preemption_drill``: the global step after which rank 0 asks to stop as on SIGTERM.

    The middle of the middle epoch (``epochs // 2``, from 0), unless this run starts past it (a resume).
    """
    if not getattr(config, "preemption_drill", False):
        return None
    at = (epochs // 2) * steps + max(1, steps // 2)
    return at if at > done else None


def _restore_loader(loader: Any, restored: Any, rank: int, start: int) -> None:
    """Put the loader where the checkpoint left it (the start of epoch ``start`` for old checkpoints)."""
    if restored is None:
        return
    states = [r["loader"] for r in restored.ranks if isinstance(r, dict) and "loader" in r]
    if states:
        loader.load_state_dict(states[rank] if rank < len(states) else states[0])
    elif start:
        state = loader.state_dict()
        loader.load_state_dict({**state, "epoch": start, "batches": 0})


def loader_line(figures: Mapping[str, Any]) -> str:
    """``read 0.02 s  decode 0.00 s ...  queues 1/2 batches, 0 reading, 512 rows buffered  RSS 441 MiB  CPU 28%``.

    Args:
        figures: The ``data`` entry of an epoch's row (rank 0's ``loader.stats()`` of that epoch).
    """
    stages = "  ".join(f"{name} {seconds:.2f} s" for name, seconds in figures["stages"].items())
    queues = figures["queues"]
    return (
        f"{stages}  queues {queues['prefetched']}/{queues['prefetch_capacity']} batches, "
        f"{queues['reading']} reading, {queues['buffered_rows']} rows buffered  "
        f"RSS {figures['rss_bytes'] / 2**20:,.0f} MiB  CPU {figures['cpu_percent']:.0f}%"
    )


def _epoch_row(
    task: Task, epoch: int, epochs: int, lr: float, totals: dict[str, float], stats: dict[str, Any]
) -> dict[str, Any]:
    n = max(totals.get("n", 0.0), 1.0)
    current = stats.get("epoch") or stats
    return {
        "epoch": epoch + 1,
        "epochs": epochs,
        "train_loss": totals.get("loss", float("nan")) / n,
        "train_accuracy": totals.get("correct", 0.0) / n,
        task.count_key: int(totals.get("n", 0)),
        "lr": lr,
        "data_samples_per_s": current["samples_per_s"],
        "data_wait_fraction": current["wait_fraction"],
        "data_bound_by": current["bound_by"],
        "data": {**current, "rss_bytes": stats["rss_bytes"], "queues": stats["queues"]},
    }


def config_dict(config: Any) -> dict[str, Any]:
    """The job's settings as recorded in checkpoints and ``metrics.json``."""
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))
