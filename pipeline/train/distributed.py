"""Run one training function on N processes through Spark's ``TorchDistributor``.

The driver side is :func:`run_distributed`; the rank side is :func:`setup`::

    def train(cfg):
        with setup() as ctx:                       # process group + device, from the environment
            with pipeline.open_loader(url, device=ctx.device, ...) as loader:   # rank/world picked up
                ...
        return metrics                              # rank 0's value comes back to the driver

    metrics = run_distributed(train, cfg, num_processes=2)   # CPU: 2 gloo processes
    metrics = run_distributed(train, cfg, use_gpu=True)      # one NCCL process per GPU

With GPUs on the driver (``local_mode=True``) there is one process per GPU and the backend is
NCCL; otherwise N CPU processes use gloo. The same function runs unchanged with
``local_mode=False``, one process per Spark task on the cluster's executors.

Each rank's outcome reaches the driver through one channel, a
:class:`~pipeline.train.rank_reports.ReportInbox` that the driver opens for the run (in local
mode on 127.0.0.1, on a cluster at ``spark.driver.host``): rank 0 sends its return value, a
failing rank a record of its exception (type, message, hint, host, traceback, time). The driver
returns rank 0's value, or raises :class:`TrainingError` with the root-cause rank's traceback (a
:class:`~pipeline.errors.PipelineError` from a rank keeps its class and hint).

Why not what ``TorchDistributor`` itself returns and raises (read in pyspark 4.3's ``pyspark/ml/torch``):

* **Results.** Every rank process runs the script ``TorchDistributor`` generates, and each one
  pickles *its own* return value into the same ``output.pickle``. In local mode (and on an
  executor running several GPU ranks) ``run`` returns the value of whichever rank wrote last,
  not rank 0's. Ranks could be made to agree only with one more collective after the user's
  function has torn its process group down.
* **Errors.** ``pyspark.ml.torch.torch_run_process_wrapper`` exits 0 whatever ``torchrun``
  returned, so ``run`` raises only "TorchDistributor failed during training" (or, when another
  rank had already written ``output.pickle``, returns as if nothing failed). The ranks' output,
  tracebacks included, goes to the driver's ``sys.stdout`` (local mode) or through its log
  stream to ``sys.stderr`` (cluster), never into the exception; reading it back would mean
  replacing the driver's ``sys.stdout``/``sys.stderr`` for the whole process.

So the ranks report over a socket of their own, and ``TorchDistributor``'s return value is not
used (each rank hands it ``None``). Its exception is kept as :attr:`TrainingError.launcher_output`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pipeline.errors as errors
from pipeline.errors import ConfigError, PipelineError
from pipeline.train.process_group import FAILED_AT, USE_GPU_ENV, DistContext, gpu_count, setup
from pipeline.train.rank_reports import InboxAddress, ReportInbox, send_report

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "DistContext",
    "DistributedConfig",
    "TrainingError",
    "gpu_count",
    "gpu_spark_settings",
    "resolve_use_gpu",
    "run_distributed",
    "setup",
]

log = logging.getLogger(__name__)

# Errors a rank gets because another rank went away: reported after the root cause.
_PEER_ERROR = re.compile(r"gloo|nccl|connection (closed|reset)|broken pipe|timed out", re.IGNORECASE)


class TrainingError(RuntimeError):
    """A rank of a distributed run failed; the message carries that rank's traceback.

    Attributes:
        rank: The failing rank (the earliest failure when several ranks failed), or ``None``
            when no rank recorded an error (e.g. a process was killed).
        remote_traceback: The failing rank's formatted traceback, or ``""``.
        launcher_output: What ``TorchDistributor`` raised, or ``""`` when it returned (it says
            little: the ranks' own output goes to the driver's stdout/stderr).
    """

    def __init__(self, message: str, *, rank: int | None, remote_traceback: str, launcher_output: str):
        super().__init__(message)
        self.rank = rank
        self.remote_traceback = remote_traceback
        self.launcher_output = launcher_output


@dataclass(frozen=True)
class DistributedConfig:
    """How a training job is spread over processes (the ``distributed:`` section of its config)."""

    num_processes: int | None = None
    """Processes (ranks). Defaults to ``None``: one per GPU with GPUs in local mode, else 2."""
    use_gpu: bool | None = None
    """Train on GPUs with NCCL. Defaults to ``None``: auto (GPUs when there are any)."""
    local_mode: bool = True
    """Processes on the driver (``True``) or on the cluster's executors. Defaults to ``True``."""

    def __post_init__(self) -> None:
        if self.num_processes is not None and self.num_processes < 1:
            raise ConfigError(f"num_processes must be >= 1, got {self.num_processes}")


# ------------------------------------------------- in each rank: run the function, report the outcome


class _RankCall:
    """Runs the user's function in a rank; reports rank 0's value or a failure to the driver."""

    def __init__(self, fn: Callable[..., Any], use_gpu: bool, log_level: int, inbox: InboxAddress) -> None:
        self.fn = fn
        self.use_gpu = use_gpu
        self.log_level = log_level
        self.inbox = inbox

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        os.environ[USE_GPU_ENV] = "1" if self.use_gpu else "0"
        rank = int(os.environ.get("RANK", "0"))
        if not logging.getLogger().handlers:  # a fresh torchrun process: log like the driver does
            logging.basicConfig(format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")
            logging.getLogger("pipeline").setLevel(self.log_level)
        try:
            result = self.fn(*args, **kwargs)
            if rank == 0:
                from pyspark import cloudpickle

                send_report(self.inbox, "result", rank, cloudpickle.dumps(result))
        except BaseException as exc:
            self._report_failure(rank, exc)
            raise
        finally:
            _destroy_process_group()
        # The driver has rank 0's value already; TorchDistributor pickles what every rank returns
        # into one shared file, so hand it nothing to race on.
        return None

    def _report_failure(self, rank: int, exc: BaseException) -> None:
        record = {
            "rank": rank,
            "time": getattr(exc, FAILED_AT, time.time()),
            "host": socket.gethostname(),
            "module": type(exc).__module__,
            "type": type(exc).__qualname__,
            "message": getattr(exc, "message", str(exc)),
            "hint": getattr(exc, "hint", None),
            "traceback": traceback.format_exc(),
        }
        try:
            send_report(self.inbox, "error", rank, json.dumps(record).encode())
        except OSError as send_error:  # the rank's own traceback still reaches its output
            log.warning(
                "rank %d could not report its failure to the driver at %s:%d: %s",
                rank,
                self.inbox.host,
                self.inbox.port,
                send_error,
            )


def _destroy_process_group() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # tearing down after a failure must not mask it
        log.debug("destroy_process_group failed", exc_info=True)


# ----------------------------------------------------------------------------- driver side


def resolve_use_gpu(use_gpu: bool | None, *, local_mode: bool, spark: SparkSession | None = None) -> bool:
    """Decide whether a run uses GPUs: the given value, else what the driver or cluster offers.

    Args:
        use_gpu: ``True``/``False`` is returned as is. ``None`` means auto.
        local_mode: Auto in local mode means "this machine has CUDA"; on a cluster it means
            "``spark.task.resource.gpu.amount`` is set".
        spark: The session whose settings are read on a cluster. Defaults to ``None`` (the
            active session).
    """
    if use_gpu is not None:
        return use_gpu
    if local_mode:
        return gpu_count() > 0
    from pipeline.spark import active_session

    session = spark or active_session()
    amount = session.conf.get("spark.task.resource.gpu.amount", "0") if session else "0"
    return float(amount or 0) > 0


def gpu_spark_settings(workdir: str | os.PathLike[str], *, count: int | None = None) -> dict[str, str]:
    """Spark settings that let ``TorchDistributor`` see this machine's GPUs in local mode.

    ``TorchDistributor(use_gpu=True, local_mode=True)`` reads the driver's GPU resources, which
    Spark only knows when a discovery script is configured. This writes one (it lists
    the indices in ``CUDA_VISIBLE_DEVICES`` when it is set, else ``nvidia-smi``'s) under ``workdir`` and returns the settings to put in
    ``SparkConfig.extra``. Returns ``{}`` when no GPU is visible.

    Args:
        workdir: Folder for the discovery script.
        count: GPUs to declare. Defaults to ``None`` (:func:`gpu_count`).
    """
    count = gpu_count() if count is None else count
    if count == 0:
        return {}
    script = Path(workdir) / "get_gpus_resources.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(
        "#!/bin/sh\n"
        '# Spark GPU discovery: prints {"name": "gpu", "addresses": ["0", ...]}\n'
        "# CUDA_VISIBLE_DEVICES, when set, is what this process may use: declare those, not every GPU\n"
        'if [ -n "$CUDA_VISIBLE_DEVICES" ]; then\n'
        "  ADDRS=$(echo \"$CUDA_VISIBLE_DEVICES\" | sed -e 's/ //g' -e 's/,/\",\"/g')\n"
        "else\n"
        "  ADDRS=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed -e ':a' -e 'N' -e'$!ba' "
        "-e 's/\\n/\",\"/g')\n"
        "fi\n"
        'echo {\\"name\\": \\"gpu\\", \\"addresses\\":[\\"$ADDRS\\"]}\n',
        encoding="utf-8",
    )
    script.chmod(0o755)
    return {
        "spark.driver.resource.gpu.amount": str(count),
        "spark.driver.resource.gpu.discoveryScript": str(script),
    }


def run_distributed(
    fn: Callable[..., Any],
    *args: Any,
    num_processes: int | None = None,
    use_gpu: bool | None = None,
    local_mode: bool = True,
    spark: SparkSession | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``fn(*args, **kwargs)`` on every rank through ``TorchDistributor``; return rank 0's value.

    Args:
        fn: A picklable function (module-level, or anything cloudpickle handles). It calls
            :func:`setup` to join the process group. Its value on rank 0 must be picklable.
        *args: Positional arguments of ``fn``.
        num_processes: Processes (ranks). Defaults to ``None``: the number of GPUs when GPUs are
            used in local mode, else 2.
        use_gpu: One process per GPU with NCCL. Defaults to ``None``: see :func:`resolve_use_gpu`.
        local_mode: Run the processes on the driver (``True``) or as barrier tasks on the
            cluster's executors (``False``). Defaults to ``True``.
        spark: The session ``TorchDistributor`` uses. Defaults to ``None`` (the active session).
        **kwargs: Keyword arguments of ``fn``.

    Returns:
        What ``fn`` returned on rank 0.

    Raises:
        TrainingError: A rank failed; the message has its exception and traceback.
        PipelineError: The failing rank raised a user error (``DatasetError`` etc.), re-raised
            with the same class and hint, prefixed with the rank; or no Spark session is active.
        ValueError: ``num_processes`` is not a positive integer.
    """
    from pyspark.ml.torch.distributor import TorchDistributor

    from pipeline.spark import active_session

    session = spark or active_session()
    if session is None:
        raise PipelineError(
            "run_distributed needs an active SparkSession for TorchDistributor",
            hint="call it inside `with pipeline.spark.spark_session(...)`",
        )
    gpu = resolve_use_gpu(use_gpu, local_mode=local_mode, spark=session)
    if num_processes is None:
        num_processes = max(gpu_count(), 1) if gpu and local_mode else 2
    if not isinstance(num_processes, int) or isinstance(num_processes, bool) or num_processes < 1:
        raise ValueError(f"num_processes must be a positive integer, got {num_processes!r}")
    if gpu and local_mode and "gpu" not in session.sparkContext.resources:
        raise PipelineError(
            "use_gpu=True in local mode, but the Spark driver has no GPU resources configured",
            hint="build the session with SparkConfig(extra=gpu_spark_settings(workdir)) "
            "(pipeline.train.distributed), or pass use_gpu=False",
        )

    mode = "local" if local_mode else f"cluster {session.sparkContext.master}"
    log.info(
        "training on %d %s process(es) (%s, %s)",
        num_processes,
        "GPU" if gpu else "CPU",
        "nccl" if gpu else "gloo",
        mode,
    )
    distributor = TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=gpu)
    launcher_error: Exception | None = None
    with ReportInbox("127.0.0.1" if local_mode else _driver_host(session)) as inbox:
        level = logging.getLogger("pipeline").getEffectiveLevel()
        try:
            distributor.run(_RankCall(fn, gpu, level, inbox.address), *args, **kwargs)
        except Exception as exc:
            launcher_error = exc
    records = _error_records(inbox.errors)
    # TorchDistributor also returns normally when a rank failed after another wrote its output
    if launcher_error is not None or records:
        raise _rank_failure(records, str(launcher_error or "")) from None
    if 0 not in inbox.results:
        raise TrainingError(
            "distributed training ended without rank 0's result reaching the driver",
            rank=None,
            remote_traceback="",
            launcher_output="",
        )
    from pyspark import cloudpickle

    return cloudpickle.loads(inbox.results[0])


def _driver_host(session: SparkSession) -> str:
    """The address executors reach the driver at (what TorchDistributor's log stream uses)."""
    try:
        host = session.conf.get("spark.driver.host", None)
    except Exception:  # Spark Connect without the setting
        host = None
    return host or socket.gethostname()


def _error_records(reports: dict[int, bytes]) -> dict[int, dict[str, Any]]:
    records = {}
    for rank, body in reports.items():
        try:
            records[rank] = json.loads(body)
        except ValueError:
            log.warning("rank %d sent an unreadable error report", rank)
    return records


def _rank_failure(records: dict[int, dict[str, Any]], launcher_output: str) -> Exception:
    """The error to raise for failed ranks: the root cause's, with its traceback.

    Args:
        records: ``rank -> record`` of every rank that reported a failure.
        launcher_output: What ``TorchDistributor`` raised (``""`` when it returned).
    """
    if not records:
        return TrainingError(
            "distributed training failed and no rank reported an exception (a process was killed, "
            "could not start, or could not reach the driver: on a cluster the executors must reach "
            f"spark.driver.host); TorchDistributor said:\n{launcher_output[-4000:]}",
            rank=None,
            remote_traceback="",
            launcher_output=launcher_output,
        )
    first = min(
        records.values(),
        key=lambda r: (bool(_PEER_ERROR.search(f"{r['type']} {r['message']}")), r.get("time", 0.0)),
    )
    rank = int(first["rank"])
    others = sorted(set(records) - {rank})
    also = f" (ranks {others} failed too)" if others else ""
    error_cls = getattr(errors, first["type"], None) if first["module"] == errors.__name__ else None
    if isinstance(error_cls, type) and issubclass(error_cls, PipelineError):
        return error_cls(f"rank {rank}: {first['message']}{also}", hint=first.get("hint"))
    message = (
        f"rank {rank} failed on {first['host']}: {first['type']}: {first['message']}{also}\n\n"
        f"Traceback from rank {rank}:\n{first['traceback']}"
    )
    return TrainingError(
        message, rank=rank, remote_traceback=first["traceback"], launcher_output=launcher_output
    )
