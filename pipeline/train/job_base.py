"""What the image and the text job share: their common settings, the rank-side tail, the driver call.

A job is a config class derived from :class:`TrainJobConfig`, a per-rank function that builds
the model and its :class:`~pipeline.train.loop.Task` and ends in :func:`fit_job`, and a driver
function that calls :func:`run_job`::

    def train_x(config: XConfig) -> dict:
        with setup() as ctx:
            model = ...
            return fit_job(ctx, config, model, Task(...), must_match=(...))

    def run_x_training(config: XConfig, *, spark=None) -> dict:
        return run_job(train_x, config, spark=spark)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from torch import nn

from pipeline.errors import ConfigError
from pipeline.train.coverage import log_epoch_coverage
from pipeline.train.distributed import DistContext, DistributedConfig, run_distributed
from pipeline.train.loop import Task, fit
from pipeline.train.run import absolute_paths, prepare_run_dir

__all__ = ["TrainJobConfig", "fit_job", "run_job"]

C = TypeVar("C", bound="TrainJobConfig")


@dataclass(frozen=True)
class TrainJobConfig:
    """Settings every training job has (a job's class sets its own defaults where they differ)."""

    train_url: str = "data/train"
    """Training dataset. Defaults to ``"data/train"``."""
    eval_url: str | None = None
    """Held-out dataset evaluated after each epoch on rank 0. Defaults to ``None`` (none)."""
    run_dir: str = "runs/train"
    """Checkpoint, ``metrics.json`` and ``loss_curve.png``. Defaults to ``"runs/train"``."""
    epochs: int = 5
    """Epochs to train in total (a resumed run trains only the missing ones). Defaults to ``5``."""
    batch_size: int = 32
    """Rows per batch on each rank. Defaults to ``32``."""
    lr: float = 0.003
    """Peak AdamW learning rate (1 warm-up epoch, then cosine decay). Defaults to ``0.003``."""
    weight_decay: float = 0.0001
    """AdamW weight decay. Defaults to ``0.0001``."""
    seed: int = 0
    """Seed of the weights, the data order (per epoch) and dropout (per epoch and rank). Defaults to ``0``."""
    workers: int = 2
    """Loader threads per rank. Defaults to ``2``."""
    checkpoint_every: int | None = None
    """Also checkpoint every N steps (mid-epoch); ``None`` = after each epoch only. Defaults to ``None``."""
    resume: bool = True
    """Continue from ``run_dir/checkpoint.pt`` when it exists. Defaults to ``True``."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """Processes, GPUs, local or cluster mode."""

    _SIZES: ClassVar[tuple[str, ...]] = ()
    """The job's own settings that must be >= 1 (checked with ``epochs`` and ``batch_size``)."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", *self._SIZES):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


def fit_job(
    ctx: DistContext, config: TrainJobConfig, model: nn.Module, task: Task, *, must_match: Sequence[str]
) -> dict[str, Any]:
    """On each rank: say (rank 0) whether an epoch uses every sample, then :func:`~pipeline.train.loop.fit`."""
    if ctx.is_main:
        log_epoch_coverage(config.train_url, ctx.world_size, config.batch_size, drop_last=task.drop_last)
    return fit(ctx, config, model, task, must_match=must_match)


def run_job(train: Callable[[C], dict[str, Any]], config: C, *, spark: Any = None) -> dict[str, Any]:
    """Run ``train(config)`` through ``TorchDistributor`` as ``config.distributed`` says.

    Paths are made absolute first (ranks may run elsewhere); with ``resume`` off an old
    checkpoint in ``run_dir`` is removed.

    Args:
        train: The job's per-rank function.
        config: The job's settings.
        spark: The session for ``TorchDistributor``. Defaults to ``None`` (the active one).

    Returns:
        Rank 0's summary.
    """
    config = absolute_paths(config)
    prepare_run_dir(config.run_dir, resume=config.resume)
    dist = config.distributed
    return run_distributed(
        train,
        config,
        num_processes=dist.num_processes,
        use_gpu=dist.use_gpu,
        local_mode=dist.local_mode,
        spark=spark,
    )
