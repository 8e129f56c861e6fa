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

An exception in any rank is recorded by the wrapper that runs the function (a JSON file in a
folder shared with the driver in local mode, a marked line in the task output on a cluster) and
re-raised in the driver as :class:`TrainingError` carrying that rank's traceback, rather than
``TorchDistributor``'s "Command [...] failed with return code 1".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pipeline.errors as errors
from pipeline.errors import ConfigError, PipelineError
from pipeline.train.process_group import FAILED_AT, USE_GPU_ENV, DistContext, gpu_count, setup

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

_ERROR_MARK = "PIPELINE_RANK_ERROR"
_ERROR_LINE = re.compile(_ERROR_MARK + r" (\{.*\})")
_RESULT_FILE = "result-rank0.pkl"
_MARKER_TRACEBACK_CHARS = 2500
# Errors a rank gets because another rank went away: reported after the root cause.
_PEER_ERROR = re.compile(r"gloo|nccl|connection (closed|reset)|broken pipe|timed out", re.IGNORECASE)


class TrainingError(RuntimeError):
    """A rank of a distributed run failed; the message carries that rank's traceback.

    Attributes:
        rank: The failing rank (the earliest failure when several ranks failed), or ``None``
            when no rank recorded an error (e.g. a process was killed).
        remote_traceback: The failing rank's formatted traceback, or ``""``.
        launcher_output: What ``TorchDistributor`` reported (the tail of the processes' output).
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


# ------------------------------------------------- in each rank: run the function, record a failure


class _RankCall:
    """Runs the user's function in a rank; records a failure where the driver can find it."""

    def __init__(
        self, fn: Callable[..., Any], use_gpu: bool, exchange_dir: str | None, log_level: int
    ) -> None:
        self.fn = fn
        self.use_gpu = use_gpu
        self.exchange_dir = exchange_dir
        self.log_level = log_level

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        os.environ[USE_GPU_ENV] = "1" if self.use_gpu else "0"
        rank = int(os.environ.get("RANK", "0"))
        if not logging.getLogger().handlers:  # a fresh torchrun process: log like the driver does
            logging.basicConfig(format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")
            logging.getLogger("pipeline").setLevel(self.log_level)
        try:
            result = self.fn(*args, **kwargs)
        except BaseException as exc:
            self._record(rank, exc)
            raise
        finally:
            _destroy_process_group()
        if rank == 0 and self.exchange_dir is not None:
            from pyspark import cloudpickle

            Path(self.exchange_dir, _RESULT_FILE).write_bytes(cloudpickle.dumps(result))
        return result

    def _record(self, rank: int, exc: BaseException) -> None:
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
        if self.exchange_dir is not None:
            Path(self.exchange_dir, f"error-rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")
        # On a cluster the driver only sees the task output, streamed line by line and cut at
        # 4000 characters: one marked line, with the traceback's end if it is long.
        short = {**record, "traceback": record["traceback"][-_MARKER_TRACEBACK_CHARS:]}
        print(f"{_ERROR_MARK} {json.dumps(short)}", file=sys.stderr, flush=True)


class _MarkerCapture:
    """Wraps ``sys.stdout``/``sys.stderr`` in the driver: forwards everything, keeps marked lines.

    On a cluster the ranks' output reaches the driver only through ``TorchDistributor``'s log
    stream, which writes it to the driver's ``sys.stderr``; the failure itself arrives as
    "TorchDistributor failed during training" without it.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._partial = ""
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        if _ERROR_MARK in text or self._partial:
            *complete, self._partial = (self._partial + text).split("\n")
            self.lines.extend(line for line in complete if _ERROR_MARK in line)
            if _ERROR_MARK not in self._partial:
                self._partial = ""
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _capture_rank_markers() -> Iterator[list[str]]:
    """Collect marked lines written to ``sys.stdout``/``sys.stderr`` while the block runs."""
    out, err = _MarkerCapture(sys.stdout), _MarkerCapture(sys.stderr)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    lines: list[str] = []
    try:
        yield lines
    finally:
        sys.stdout, sys.stderr = saved
        lines.extend(out.lines + err.lines + [p for p in (out._partial, err._partial) if p])


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
            :func:`setup` to join the process group.
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

    exchange_dir = tempfile.mkdtemp(prefix="pipeline-ranks-") if local_mode else None
    mode = "local" if local_mode else f"cluster {session.sparkContext.master}"
    log.info(
        "training on %d %s process(es) (%s, %s)",
        num_processes,
        "GPU" if gpu else "CPU",
        "nccl" if gpu else "gloo",
        mode,
    )
    try:
        distributor = TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=gpu)
        rank_call = _RankCall(fn, gpu, exchange_dir, logging.getLogger("pipeline").getEffectiveLevel())
        try:
            with _capture_rank_markers() as streamed:
                output = distributor.run(rank_call, *args, **kwargs)
        except Exception as exc:
            raise _rank_failure(exc, exchange_dir, "\n".join(streamed)) from None
        if exchange_dir is not None:
            result = Path(exchange_dir, _RESULT_FILE)
            if result.exists():
                from pyspark import cloudpickle

                return cloudpickle.loads(result.read_bytes())
        return output
    finally:
        if exchange_dir is not None:
            shutil.rmtree(exchange_dir, ignore_errors=True)


def _rank_failure(exc: Exception, exchange_dir: str | None, streamed: str = "") -> Exception:
    """Turn TorchDistributor's failure into an error that shows the failing rank's traceback.

    Rank records come from the exchange folder (local mode), then from marked lines in the
    streamed rank output and in the exception's text (cluster mode).
    """
    launcher_output = str(exc)
    records: dict[int, dict[str, Any]] = {}
    if exchange_dir is not None:
        for path in sorted(Path(exchange_dir).glob("error-rank*.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                records[int(record["rank"])] = record
            except (OSError, ValueError, KeyError):
                continue
    for match in _ERROR_LINE.finditer(streamed + "\n" + launcher_output):
        try:
            record = json.loads(match.group(1))
            records.setdefault(int(record["rank"]), record)
        except (ValueError, KeyError):
            continue
    if not records:
        return TrainingError(
            "distributed training failed and no rank recorded an exception (a process was killed "
            f"or could not start); launcher output:\n{launcher_output[-4000:]}",
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
