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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.dataset import normalize_url, read_provenance
from pipeline.errors import ConfigError, DatasetError
from pipeline.train.coverage import log_epoch_coverage
from pipeline.train.distributed import DistributedConfig, run_distributed, setup
from pipeline.train.loop import Task, fit
from pipeline.train.models import SmallCNN, images_to_float
from pipeline.train.run import absolute_paths, prepare_run_dir

__all__ = [
    "ImageTrainConfig",
    "evaluate_checkpoint",
    "evaluate_images",
    "run_image_training",
    "train_images",
]


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
    checkpoint_every: int | None = None
    """Also checkpoint every N steps (mid-epoch); ``None`` = after each epoch only. Defaults to ``None``."""
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


def _image_step(
    ddp: nn.Module, batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    images, labels = images_to_float(batch["image"]), batch["label"]
    logits = ddp(images)
    loss = F.cross_entropy(logits, labels)
    return loss, loss.detach() * len(labels), (logits.argmax(1) == labels).sum(), len(labels)


def train_images(config: ImageTrainConfig) -> dict[str, Any]:
    """Train on this rank; the driver gets rank 0's summary (history, accuracy, paths).

    Call through :func:`run_image_training` (or :func:`~pipeline.train.distributed.run_distributed`);
    called directly it trains in one process.
    """
    with setup() as ctx:
        num_classes = _class_count(config)
        config = dataclasses.replace(config, num_classes=num_classes)  # recorded in checkpoints as resolved
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        model = SmallCNN(num_classes, width=config.width, dropout=config.dropout).to(ctx.device)
        evaluate = None
        if config.eval_url:
            eval_url = config.eval_url

            def evaluate(m: nn.Module) -> dict[str, float]:
                return evaluate_images(m, eval_url, ctx.device, 256)

        task = Task("image classifier", ["image", "label"], _image_step, evaluate)
        if ctx.is_main:  # say up front whether each epoch uses every sample
            log_epoch_coverage(config.train_url, ctx.world_size, config.batch_size, drop_last=task.drop_last)
        return fit(ctx, config, model, task, must_match=_MUST_MATCH)


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
