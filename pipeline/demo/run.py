"""The end-to-end demo behind ``make demo`` (``pipeline demo``): real digits -> Spark conversion -> TorchDistributor training.

Stages, each timed:

1. **images** -- scikit-learn's bundled handwritten digits (1,797 8x8 images) written as an
   image-folder tree, split deterministically into ``train`` and ``heldout``.
2. **convert** -- both folders converted by :func:`pipeline.convert.images.convert_images` on the
   session's Spark, at the digits' fixed size (8x8).
3. **train** -- :class:`~pipeline.train.models.SmallCNN` trained through ``TorchDistributor``
   (2 CPU processes, or one per GPU), reading through :func:`pipeline.open_loader`. A
   preemption drill stops it in the middle of the middle epoch the way SIGTERM does: the ranks
   finish the step, save a checkpoint (model, optimizer, LR schedule, RNG, loader position) and
   exit 0.
4. **resume** -- the same training launched again continues from that checkpoint, at the next
   batch of the interrupted epoch, and trains to the end (weights equal to those of an
   uninterrupted run, which ``tests/test_demo.py`` checks on the demo itself).
5. **evaluate** -- held-out accuracy of the saved checkpoint, recomputed in the driver.

With ``run_demo(..., interrupt=False)`` steps 3 and 4 are one uninterrupted
training. A second run reuses what is still valid: the image folder when its manifest matches,
each dataset when its provenance says it was converted from that folder with the same row
count. Training always runs again (from scratch) -- it is what the demo shows.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.dataset import read_provenance
from pipeline.demo.sample_data import write_digits_folder
from pipeline.errors import ConfigError, PipelineError
from pipeline.train.distributed import DistributedConfig
from pipeline.train.image_classifier import ImageTrainConfig, evaluate_checkpoint, run_image_training

__all__ = ["DIGIT_SIZE", "AccuracyTooLow", "DemoConfig", "DemoResult", "run_demo"]

log = logging.getLogger(__name__)

SPLITS = ("train", "heldout")


class AccuracyTooLow(PipelineError):
    """The demo ran, but the model did not reach ``min_accuracy`` on the held-out digits.

    Attributes:
        result: The :class:`DemoResult` of the run.
    """

    def __init__(self, message: str, *, hint: str | None = None, result: DemoResult | None = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result


@dataclass(frozen=True)
class DemoConfig:
    """Settings of ``make demo`` (``conf/demo.yaml``)."""

    data_dir: str = "data/demo"
    """Image folders and converted datasets. Defaults to ``"data/demo"``."""
    run_dir: str = "runs/demo"
    """Checkpoint, metrics and loss curve of the training. Defaults to ``"runs/demo"``."""
    holdout_fraction: float = 0.2
    """Share of the digits held out for evaluation. Defaults to ``0.2``."""
    seed: int = 0
    """Seed of the split and of the training. Defaults to ``0``."""
    epochs: int = 12
    """Training epochs. Defaults to ``12``."""
    batch_size: int = 32
    """Rows per batch on each rank. Defaults to ``32``."""
    partitions: int = 4
    """Spark tasks (and Parquet files) per converted dataset. Defaults to ``4``."""
    limit: int | None = None
    """Use only this many digits (quick runs, tests). Defaults to ``None`` (all 1,797)."""
    min_accuracy: float = 0.95
    """Held-out accuracy below this makes the demo fail. Defaults to ``0.95``."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """Processes and GPUs (defaults: 2 CPU processes, or one per GPU)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_accuracy <= 1.0:
            raise ConfigError(f"min_accuracy must be in [0, 1], got {self.min_accuracy}")
        if self.partitions < 1:
            raise ConfigError(f"partitions must be >= 1, got {self.partitions}")


@dataclass
class DemoResult:
    """What the demo measured."""

    accuracy: float
    """Held-out accuracy after the last epoch."""
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds per stage."""
    reused: dict[str, bool] = field(default_factory=dict)
    """Stages whose output was already there and still valid."""
    counts: dict[str, int] = field(default_factory=dict)
    """Images per split."""
    training: dict[str, Any] = field(default_factory=dict)
    """The training summary (world size, device, history, paths); after the drill, the resumed run's."""
    preempted: dict[str, Any] = field(default_factory=dict)
    """The summary of the run the drill stopped (``status``, ``resume``, ``global_step``, ...); ``{}`` without one."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the per-epoch history)."""
        training = {k: v for k, v in self.training.items() if k != "history"}
        preempted = {k: v for k, v in self.preempted.items() if k not in ("history", "final")}
        return {
            "accuracy": self.accuracy,
            "stages": self.stages,
            "reused": self.reused,
            "counts": self.counts,
            "training": training,
            "preempted": preempted,
        }


@dataclass(frozen=True)
class _DrillConfig(ImageTrainConfig):
    """The image job's settings plus the drill: rank 0 asks to stop mid-run as on SIGTERM."""

    preemption_drill: bool = True


DIGIT_SIZE = (8, 8)
"""Height and width of the digits: converted with this fixed size, the ``image`` field has one shape."""


def _dataset_is_current(dest: Path, src: str, rows: int) -> bool:
    if not (dest / "_common_metadata").exists():
        return False
    try:
        provenance = read_provenance(dest) or {}
    except PipelineError:
        return False
    return (
        provenance.get("kind") == "images"
        and provenance.get("source") == src
        and (provenance.get("counts") or {}).get("rows") == rows
        and list((provenance.get("options") or {}).get("size") or ()) == list(DIGIT_SIZE)
    )


def run_demo(spark: Any, config: DemoConfig, *, interrupt: bool = True) -> DemoResult:
    """Run the stages on ``spark``; raise if held-out accuracy is below ``min_accuracy``.

    Args:
        spark: The SparkSession for conversion and for ``TorchDistributor``.
        config: The demo's settings.
        interrupt: Stop the training midway as SIGTERM would, then resume it. Defaults to
            ``True``.

    Returns:
        The :class:`DemoResult`.

    Raises:
        AccuracyTooLow: The model did not reach ``config.min_accuracy``.
    """
    from pipeline.convert.common import ConvertConfig
    from pipeline.convert.images import ImageOptions, convert_images

    data = Path(config.data_dir).expanduser().resolve()
    result = DemoResult(accuracy=float("nan"))

    t0 = time.perf_counter()
    folder = write_digits_folder(
        data / "images", holdout_fraction=config.holdout_fraction, seed=config.seed, limit=config.limit
    )
    result.stages["images"] = time.perf_counter() - t0
    result.reused["images"] = bool(folder["reused"])
    result.counts = dict(folder["counts"])

    t0 = time.perf_counter()
    urls: dict[str, str] = {}
    reused_all = True
    settings = ConvertConfig(overwrite=True, partitions=config.partitions)
    for split in SPLITS:
        dest = data / "datasets" / split
        src = str(folder[split])
        if folder["reused"] and _dataset_is_current(dest, src, folder["counts"][split]):
            log.info("dataset %s is up to date (provenance matches %s)", dest, src)
        else:
            reused_all = False
            convert_images(spark, src, str(dest), ImageOptions(size=DIGIT_SIZE), settings=settings)
        urls[split] = str(dest)
    result.stages["convert"] = time.perf_counter() - t0
    result.reused["convert"] = reused_all

    t0 = time.perf_counter()
    train_config = ImageTrainConfig(
        train_url=urls["train"],
        eval_url=urls["heldout"],
        run_dir=config.run_dir,
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=config.seed,
        resume=False,
        distributed=config.distributed,
    )
    if interrupt:  # the same settings, plus the drill
        drill = _DrillConfig(**{f.name: getattr(train_config, f.name) for f in fields(ImageTrainConfig)})
        result.training = run_image_training(drill, spark=spark)
    else:
        result.training = run_image_training(train_config, spark=spark)
    result.stages["train"] = time.perf_counter() - t0
    if result.training["status"] == "preempted":
        log.info("%s", result.training["resume"])
        result.preempted = result.training
        t0 = time.perf_counter()
        result.training = run_image_training(dataclasses.replace(train_config, resume=True), spark=spark)
        result.stages["resume"] = time.perf_counter() - t0

    # The saved checkpoint, evaluated again here in the driver: what a user would deploy.
    t0 = time.perf_counter()
    scores = evaluate_checkpoint(Path(result.training["run_dir"]) / "checkpoint.pt", urls["heldout"])
    result.stages["evaluate"] = time.perf_counter() - t0
    result.accuracy = scores["eval_accuracy"]
    if result.accuracy < config.min_accuracy:
        raise AccuracyTooLow(
            f"held-out accuracy {result.accuracy:.4f} is below min_accuracy {config.min_accuracy}",
            hint="train longer (--epochs) or check the stages above",
            result=result,
        )
    return result
