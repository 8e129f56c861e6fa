"""Training through Spark's ``TorchDistributor`` from datasets written by ``pipeline convert``."""

from pipeline.train.distributed import DistContext, TrainingError, run_distributed, setup

__all__ = ["DistContext", "TrainingError", "run_distributed", "setup"]
