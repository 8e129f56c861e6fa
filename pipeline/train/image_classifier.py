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
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.dataset import normalize_url, read_provenance
from pipeline.errors import DatasetError
from pipeline.train.distributed import setup
from pipeline.train.job_base import TrainJobConfig, fit_job, run_job
from pipeline.train.loop import Task
from pipeline.train.models import SmallCNN, images_to_float

__all__ = [
    "ImageTrainConfig",
    "evaluate_checkpoint",
    "evaluate_images",
    "run_image_training",
    "train_images",
]


_MUST_MATCH = ("train_url", "num_classes", "width", "dropout", "batch_size", "lr", "weight_decay", "seed")


@dataclass(frozen=True)
class ImageTrainConfig(TrainJobConfig):
    """Settings of the image classifier job (``conf/train_images.yaml``); the shared ones are
    :class:`~pipeline.train.job_base.TrainJobConfig`'s."""

    train_url: str = "data/demo/datasets/train"
    """Training dataset (fields ``image`` uint8 HxWx3 and ``label`` int64). Defaults to ``"data/demo/datasets/train"``."""
    run_dir: str = "runs/images"
    """Checkpoint, ``metrics.json`` and ``loss_curve.png``. Defaults to ``"runs/images"``."""
    epochs: int = 15
    """Epochs to train in total (a resumed run trains only the missing ones). Defaults to ``15``."""
    width: int = 32
    """Channels of the CNN's first block. Defaults to ``32``."""
    dropout: float = 0.1
    """Dropout before the classifier head. Defaults to ``0.1``."""
    num_classes: int | None = None
    """Classes; ``None`` reads ``class_names`` from the dataset's provenance. Defaults to ``None``."""

    _SIZES: ClassVar[tuple[str, ...]] = ("width",)


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
            evaluate = partial(evaluate_images, url=config.eval_url, device=ctx.device, batch_size=256)
        task = Task("image classifier", ["image", "label"], _image_step, evaluate)
        return fit_job(ctx, config, model, task, must_match=_MUST_MATCH)


def run_image_training(config: ImageTrainConfig, *, spark: Any = None) -> dict[str, Any]:
    """Train through ``TorchDistributor`` as ``config.distributed`` says; return rank 0's summary.

    Paths are made absolute first (ranks may run elsewhere); with ``resume`` off an old
    checkpoint in ``run_dir`` is removed (:func:`~pipeline.train.job_base.run_job`).

    Args:
        config: The job's settings.
        spark: The session for ``TorchDistributor``. Defaults to ``None`` (the active one).
    """
    return run_job(train_images, config, spark=spark)
