"""Train :class:`~pipeline.train.models.TinyCausalLM` on packed token sequences, on every rank.

The dataset is what ``pipeline convert text SRC DEST --seq-len N`` writes: one ``tokens`` field
(int32, length ``N``). Each sequence is split into inputs ``tokens[:-1]`` and next-token targets
``tokens[1:]``. Variable-length rows (converted without ``--seq-len``) work too: the loader pads
them and the padding is left out of the loss.

:func:`train_text` is the per-rank function, :func:`run_text_training` the driver call.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.dataset import read_provenance
from pipeline.errors import DatasetError
from pipeline.train.distributed import setup
from pipeline.train.job_base import TrainJobConfig, fit_job, run_job
from pipeline.train.loop import Task
from pipeline.train.metrics import RunningSums
from pipeline.train.models import TinyCausalLM

__all__ = ["TextTrainConfig", "run_text_training", "train_text"]


_IGNORE = -100
_MUST_MATCH = ("train_url", "vocab_size", "max_len", "d_model", "n_layers", "n_heads", "seed")


@dataclass(frozen=True)
class TextTrainConfig(TrainJobConfig):
    """Settings of the causal language model job (``conf/train_text.yaml``); the shared ones are
    :class:`~pipeline.train.job_base.TrainJobConfig`'s."""

    train_url: str = "data/corpus/train"
    """Training dataset with a ``tokens`` field. Defaults to ``"data/corpus/train"``."""
    run_dir: str = "runs/text"
    """Checkpoint, ``metrics.json`` and ``loss_curve.png``. Defaults to ``"runs/text"``."""
    batch_size: int = 16
    """Sequences per batch on each rank. Defaults to ``16``."""
    weight_decay: float = 0.01
    """AdamW weight decay. Defaults to ``0.01``."""
    d_model: int = 64
    """Embedding width. Defaults to ``64``."""
    n_layers: int = 2
    """Transformer blocks. Defaults to ``2``."""
    n_heads: int = 4
    """Attention heads. Defaults to ``4``."""
    max_len: int = 512
    """Longest sequence the model accepts (position embeddings). Defaults to ``512``."""
    vocab_size: int | None = None
    """Token ids; ``None`` reads the tokenizer's ``vocab_size`` from the provenance. Defaults to ``None``."""

    _SIZES: ClassVar[tuple[str, ...]] = ("d_model", "n_layers", "n_heads", "max_len")


def _vocab_size(config: TextTrainConfig) -> int:
    if config.vocab_size is not None:
        return config.vocab_size
    provenance = read_provenance(config.train_url) or {}
    size = (provenance.get("tokenizer") or {}).get("vocab_size")
    if not isinstance(size, int) or size < 2:
        raise DatasetError(
            f"{config.train_url} has no tokenizer vocab_size in its provenance",
            hint="convert it with `pipeline convert text`, or set vocab_size",
        )
    return size


def _inputs_and_targets(
    batch: dict[str, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` on ``device``; padding past a row's length is ignored by the loss."""
    tokens = batch["tokens"].long()
    targets = tokens[:, 1:].clone()
    lengths = batch.get("tokens_lengths")
    if lengths is not None:
        positions = torch.arange(1, tokens.shape[1], device=tokens.device)
        targets[positions.unsqueeze(0) >= lengths.to(tokens.device).unsqueeze(1)] = _IGNORE
    inputs = tokens[:, :-1]
    if device.type == "cuda":
        # Pinned host memory lets the copy run asynchronously, overlapping the previous step.
        inputs = inputs.pin_memory().to(device, non_blocking=True)
        targets = targets.pin_memory().to(device, non_blocking=True)
    return inputs, targets


def _step_sums(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    loss_sum = F.cross_entropy(flat_logits, flat_targets, ignore_index=_IGNORE, reduction="sum")
    valid = flat_targets != _IGNORE
    correct = (flat_logits.argmax(-1)[valid] == flat_targets[valid]).sum()
    return loss_sum, correct, valid.sum()


def evaluate_text(model: nn.Module, url: str, device: torch.device, batch_size: int) -> dict[str, float]:
    """Next-token loss, accuracy and perplexity on the whole dataset at ``url``, read by this process alone."""
    from pipeline import open_loader

    model.eval()
    sums = RunningSums(device)
    with (
        torch.no_grad(),
        open_loader(url, batch_size=batch_size, shuffle=False, num_epochs=1, rank=0, world_size=1) as loader,
    ):
        for batch in loader:
            inputs, targets = _inputs_and_targets(batch, device)
            loss_sum, correct, count = _step_sums(model(inputs), targets)
            sums.add(loss=loss_sum, correct=correct, n=count)
    totals = sums.reduce(across_ranks=False)  # only this rank evaluates
    if not totals.get("n"):
        raise DatasetError(f"{url} has no tokens to evaluate on")
    loss = totals["loss"] / totals["n"]
    return {
        "eval_loss": loss,
        "eval_accuracy": totals["correct"] / totals["n"],
        "eval_perplexity": math.exp(min(loss, 50)),
    }


def _text_step(
    ddp: nn.Module, batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    device = next(ddp.parameters()).device
    inputs, targets = _inputs_and_targets(batch, device)
    loss_sum, correct, count = _step_sums(ddp(inputs), targets)
    return loss_sum / count.clamp(min=1), loss_sum, correct, count


def train_text(config: TextTrainConfig) -> dict[str, Any]:
    """Train on this rank; the driver gets rank 0's summary (history, paths)."""
    with setup() as ctx:
        vocab_size = _vocab_size(config)
        config = dataclasses.replace(config, vocab_size=vocab_size)  # recorded in checkpoints as resolved
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        model = TinyCausalLM(
            vocab_size,
            config.max_len,
            d_model=config.d_model,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
        ).to(ctx.device)
        evaluate = None
        if config.eval_url:
            evaluate = partial(
                evaluate_text, url=config.eval_url, device=ctx.device, batch_size=config.batch_size
            )

        task = Task(
            "causal LM",
            ["tokens"],
            _text_step,
            evaluate,
            count_key="train_tokens",
            rate_key="tokens_per_s",
            loader_on_device=False,  # CPU batches; _inputs_and_targets does pin_memory() + non_blocking
            clip_grad_norm=1.0,
        )
        return fit_job(ctx, config, model, task, must_match=_MUST_MATCH)


def run_text_training(config: TextTrainConfig, *, spark: Any = None) -> dict[str, Any]:
    """Train through ``TorchDistributor`` as ``config.distributed`` says; return rank 0's summary.

    Args:
        config: The job's settings.
        spark: The session for ``TorchDistributor``. Defaults to ``None`` (the active one).
    """
    return run_job(train_text, config, spark=spark)
