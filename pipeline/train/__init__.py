"""Training through Spark's ``TorchDistributor`` from datasets written by ``pipeline convert``.

Modules, from the driver down to a training step:

* :mod:`~pipeline.train.distributed` -- :func:`run_distributed`: a function on N ranks (CPU/gloo or
  one per GPU/NCCL, local or on a cluster); a failing rank's traceback surfaces in the driver.
* :mod:`~pipeline.train.rank_reports` -- the driver's inbox for rank 0's result and failing ranks'
  errors (one channel, local and cluster mode).
* :mod:`~pipeline.train.job_base` -- what the image and text jobs share (``TrainJobConfig``,
  ``fit_job``, ``run_job``).
* :mod:`~pipeline.train.process_group` -- :func:`setup`: process group and device from the
  environment, always torn down.
* :mod:`~pipeline.train.models` -- ``SmallCNN`` and ``TinyCausalLM``.
* :mod:`~pipeline.train.image_classifier`, :mod:`~pipeline.train.text_lm` -- the two training
  jobs (per-rank function + driver call + config); :mod:`~pipeline.train.jobs` -- the driver
  side of a job (SIGTERM passed on to the ranks, the report); the command is ``pipeline train``.
* :mod:`~pipeline.train.checkpoint`, :mod:`~pipeline.train.metrics`, :mod:`~pipeline.train.run`
  -- checkpoint and resume, metrics JSON and loss curve, the run folder.

The demo and its sample data live in :mod:`pipeline.demo`.
"""

from pipeline.train.distributed import DistributedConfig, TrainingError, run_distributed
from pipeline.train.process_group import DistContext, setup

__all__ = ["DistContext", "DistributedConfig", "TrainingError", "run_distributed", "setup"]
