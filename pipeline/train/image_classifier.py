"""Train :class:`~pipeline.train.models.SmallCNN` on a converted image dataset, on every rank.

::

    with spark_session(...) as spark:
        result = run_image_training(ImageTrainConfig(train_url="data/demo/datasets/train", eval_url=...))

:func:`train_images` is the function each rank runs (through ``TorchDistributor``); it reads its
shard through :func:`pipeline.open_loader`, trains with DDP, and on rank 0 logs each epoch,
evaluates on the held-out set, checkpoints and writes ``metrics.json`` + ``loss_curve.png``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import load_config
from pipeline.dataset import normalize_url, read_provenance
from pipeline.errors import ConfigError, DatasetError
from pipeline.train.distributed import DistributedConfig, run_distributed, setup
from pipeline.train.metrics import RunningSums
from pipeline.train.models import SmallCNN, images_to_float
from pipeline.train.run import absolute_paths, cosine_lr, derive_seed, format_row, prepare_run_dir

__all__ = [
    "ImageTrainConfig",
    "evaluate_checkpoint",
    "evaluate_images",
    "load_image_config",
    "run_image_training",
    "train_images",
]

log = logging.getLogger(__name__)

_MUST_MATCH = ("train_url", "num_classes", "width", "dropout", "batch_size", "lr", "weight_decay", "seed")


@dataclass(frozen=True)
class ImageTrainConfig:
    """Settings of the image classifier job (``conf/train_images.yaml``)."""

    train_url: str = "data/demo/datasets/train"
    """Training dataset (fields ``image`` uint8 HxWx3 and ``label`` int64). Defaults to ``"data/demo/datasets/train"``."""
    eval_url: str | None = None
    """Held-out dataset evaluated after each epoch on rank 0. Defaults to ``None`` (none)."""
    run_dir: str = "runs/images"
    """Checkpoint, ``metrics.json`` and ``loss_curve.png``. Defaults to ``"runs/images"``."""
    epochs: int = 15
    """Epochs to train in total (a resumed run trains only the missing ones). Defaults to ``15``."""
    batch_size: int = 32
    """Rows per batch on each rank. Defaults to ``32``."""
    lr: float = 0.003
    """Peak AdamW learning rate (1 warm-up epoch, then cosine decay). Defaults to ``0.003``."""
    weight_decay: float = 0.0001
    """AdamW weight decay. Defaults to ``0.0001``."""
    width: int = 32
    """Channels of the CNN's first block. Defaults to ``32``."""
    dropout: float = 0.1
    """Dropout before the classifier head. Defaults to ``0.1``."""
    num_classes: int | None = None
    """Classes; ``None`` reads ``class_names`` from the dataset's provenance. Defaults to ``None``."""
    seed: int = 0
    """Seed of the weights, the data order (per epoch) and dropout (per epoch and rank). Defaults to ``0``."""
    workers: int = 2
    """Loader threads per rank. Defaults to ``2``."""
    resume: bool = True
    """Continue from ``run_dir/checkpoint.pt`` when it exists. Defaults to ``True``."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """Processes, GPUs, local or cluster mode."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


def load_image_config(path: str | None = None, **overrides: Any) -> ImageTrainConfig:
    """``conf/train_images.yaml`` (or ``path``) with ``overrides`` (``None`` = not given) on top."""
    return load_config(ImageTrainConfig, path or "train_images.yaml", overrides=overrides)


def _class_count(config: ImageTrainConfig) -> int:
    if config.num_classes is not None:
        return config.num_classes
    provenance = read_provenance(config.train_url) or {}
    names = provenance.get("class_names") or []
    if len(names) < 2:
        raise DatasetError(
            f"{config.train_url} has no class names in its provenance (found {names!r})",
            hint="convert an image-folder tree with `pipeline convert images`, or set num_classes",
        )
    return len(names)


def evaluate_images(model: nn.Module, url: str, device: torch.device, batch_size: int) -> dict[str, float]:
    """Loss and accuracy of ``model`` on the whole dataset at ``url``, read by this process alone."""
    from pipeline import open_loader

    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    # rank=0, world_size=1: this process reads every row, whatever the process group says.
    with (
        torch.no_grad(),
        open_loader(
            url, batch_size=batch_size, shuffle=False, num_epochs=1, rank=0, world_size=1, device=device
        ) as loader,
    ):
        for batch in loader:
            logits = model(images_to_float(batch["image"]))
            labels = batch["label"]
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(1) == labels).sum())
            count += len(labels)
    if count == 0:
        raise DatasetError(f"{url} has no rows to evaluate on")
    return {"eval_loss": loss_sum / count, "eval_accuracy": correct / count, "eval_samples": count}


def evaluate_checkpoint(
    checkpoint: str | Path, url: str, *, device: str = "cpu", batch_size: int = 256
) -> dict[str, float]:
    """Rebuild the model saved in ``checkpoint`` and evaluate it on ``url`` in this process.

    Args:
        checkpoint: A ``checkpoint.pt`` written by :func:`train_images`.
        url: Dataset with ``image`` and ``label`` fields.
        device: Where to run the model. Defaults to ``"cpu"``.
        batch_size: Rows per batch. Defaults to ``256``.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved = state["config"]
    model = SmallCNN(saved["num_classes"], width=saved["width"], dropout=saved["dropout"])
    model.load_state_dict(state["model"])
    return evaluate_images(model.to(device), normalize_url(url), torch.device(device), batch_size)


def train_images(config: ImageTrainConfig) -> dict[str, Any]:
    """Train on this rank; the driver gets rank 0's summary (history, accuracy, paths).

    Call through :func:`run_image_training` (or :func:`~pipeline.train.distributed.run_distributed`);
    called directly it trains in one process.
    """
    from torch.nn.parallel import DistributedDataParallel

    from pipeline import open_loader

    settings = dataclasses.asdict(config)
    with setup() as ctx:
        run = prepare_run_dir(config.run_dir, resume=True)  # the driver already applied resume=False
        num_classes = _class_count(config)
        settings["num_classes"] = num_classes
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        model = SmallCNN(num_classes, width=config.width, dropout=config.dropout).to(ctx.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        restored = run.resume(model=model, optimizer=optimizer, config=settings, must_match=_MUST_MATCH)
        start = restored.epoch if restored else 0
        ctx.ensure_agreed(
            start,
            what=f"the epoch to resume from ({config.run_dir}/checkpoint.pt)",
            hint="run_dir must be on storage every rank sees (on a cluster: a shared or mounted folder)",
        )
        history = restored.history if restored else []
        ddp = DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
        started = time.perf_counter()
        for epoch in range(start, config.epochs):
            t0 = time.perf_counter()
            lr = cosine_lr(config.lr, epoch, config.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(derive_seed(config.seed, epoch, ctx.rank))  # dropout; reproducible on resume
            sums = RunningSums(ctx.device)
            ddp.train()
            # With a CUDA device the loader hands over batches that are already on the GPU: it
            # collates into pinned buffers and copies on a side stream, the equivalent of
            # `x.pin_memory().to(device, non_blocking=True)` one batch ahead of this loop.
            with open_loader(
                config.train_url,
                batch_size=config.batch_size,
                seed=derive_seed(config.seed, epoch),
                num_epochs=1,
                shuffle=True,
                drop_last=True,  # every rank takes the same number of steps (DDP needs it)
                device=ctx.device,
                workers=config.workers,
                fields=["image", "label"],
            ) as loader:
                for batch in loader:
                    images, labels = images_to_float(batch["image"]), batch["label"]
                    logits = ddp(images)
                    loss = F.cross_entropy(logits, labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    sums.add(
                        loss=loss.detach() * len(labels),
                        correct=(logits.argmax(1) == labels).sum(),
                        n=len(labels),
                    )
            totals = sums.reduce()  # every rank: all-reduce over the process group
            n = max(totals.get("n", 0.0), 1.0)
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "epochs": config.epochs,
                "train_loss": totals.get("loss", float("nan")) / n,
                "train_accuracy": totals.get("correct", 0.0) / n,
                "train_samples": int(totals.get("n", 0)),
                "lr": lr,
            }
            if ctx.is_main:
                if config.eval_url:
                    t_eval = time.perf_counter()
                    row.update(evaluate_images(model, config.eval_url, ctx.device, 256))
                    row["eval_seconds"] = time.perf_counter() - t_eval
                row["seconds"] = time.perf_counter() - t0
                history.append(row)
                log.info("%s", format_row(row))
                run.record_epoch(
                    model=model,
                    optimizer=optimizer,
                    epoch=epoch + 1,
                    history=history,
                    config=settings,
                    title="image classifier",
                )
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


def run_image_training(config: ImageTrainConfig, *, spark: Any = None) -> dict[str, Any]:
    """Train through ``TorchDistributor`` as ``config.distributed`` says; return rank 0's summary.

    Paths are made absolute first (ranks may run elsewhere); with ``resume`` off an old
    checkpoint in ``run_dir`` is removed.

    Args:
        config: The job's settings.
        spark: The session for ``TorchDistributor``. Defaults to ``None`` (the active one).
    """
    config = absolute_paths(config)
    prepare_run_dir(config.run_dir, resume=config.resume)
    dist = config.distributed
    return run_distributed(
        train_images,
        config,
        num_processes=dist.num_processes,
        use_gpu=dist.use_gpu,
        local_mode=dist.local_mode,
        spark=spark,
    )
