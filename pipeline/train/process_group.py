"""The rank side of a distributed run: join the process group, pick the device, always tear down.

Each process started by ``TorchDistributor`` (torchrun) calls :func:`setup` once::

    with setup() as ctx:          # ctx.rank, ctx.world_size, ctx.device, ctx.backend
        ...

It reads what torchrun puts in the environment; without it (a plain ``python`` run) it starts a
one-process group, so the same training code runs undistributed too.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import torch

__all__ = ["DistContext", "gpu_count", "setup"]

log = logging.getLogger(__name__)

USE_GPU_ENV = "PIPELINE_USE_GPU"
"""Set by :func:`pipeline.train.distributed.run_distributed` in each rank: ``"1"`` = GPUs, ``"0"`` = CPU."""
FAILED_AT = "_pipeline_failed_at"
"""Attribute stamped on an exception leaving :func:`setup`: when the rank failed (``time.time()``)."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the run: rank, world size and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the rank that logs, checkpoints and writes reports)."""
        return self.rank == 0

    def ensure_agreed(self, value: int, *, what: str, hint: str) -> None:
        """Raise on every rank unless all ranks hold the same ``value`` (a collective call).

        Ranks that disagree on, say, the epoch to resume from would run different numbers of
        collectives and hang until the process group's timeout; this turns that into an error.
        """
        import torch
        import torch.distributed as dist

        if self.world_size == 1 or not dist.is_initialized():
            return
        bounds = torch.tensor([value, -value], dtype=torch.int64, device=self.device)
        dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
        high, low = int(bounds[0]), -int(bounds[1])
        if high != low:
            raise PipelineError(
                f"ranks disagree on {what}: this rank has {value}, others {low}..{high}", hint=hint
            )


def gpu_count() -> int:
    """CUDA devices visible to this process (0 without CUDA or torch's CUDA build)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def setup(*, use_gpu: bool | None = None, timeout_s: float = 1800.0) -> Iterator[DistContext]:
    """Initialise the process group and pick the device from the environment; always tear down.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` as set by
    torchrun (which ``TorchDistributor`` uses). Without them (a plain ``python`` call) it starts a
    one-process group on 127.0.0.1, so the same training code also runs undistributed. With a
    GPU, rank ``r`` uses ``cuda:LOCAL_RANK`` and NCCL; without, the CPU and gloo. The process
    group is destroyed on exit, also when the body raises. If a group is already initialised it
    is reused and left alone.

    Args:
        use_gpu: Train on CUDA. Defaults to ``None``: what
            :func:`~pipeline.train.distributed.run_distributed` decided
            (``$PIPELINE_USE_GPU``), else whether CUDA is available.
        timeout_s: Seconds a collective may wait for the other ranks. Defaults to ``1800.0``.

    Yields:
        The :class:`DistContext` of this process.
    """
    import torch
    import torch.distributed as dist

    if use_gpu is None:
        env = os.environ.get(USE_GPU_ENV)
        use_gpu = env == "1" if env is not None else torch.cuda.is_available()
    if use_gpu and not torch.cuda.is_available():
        raise PipelineError(
            "use_gpu=True but this process sees no CUDA device",
            hint="check CUDA_VISIBLE_DEVICES and the torch build, or train with use_gpu=False",
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_gpu else torch.device("cpu")
    backend = "nccl" if use_gpu else "gloo"
    if dist.is_initialized():
        yield DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, dist.get_backend())
        return
    if use_gpu:
        torch.cuda.set_device(device)
    launched = all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    if launched:
        rank, world_size, init_method = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://"
    else:
        rank, world_size, init_method = 0, 1, f"tcp://127.0.0.1:{_free_port()}"
    log.info("rank %d/%d: %s process group on %s", rank, world_size, backend, device)
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if use_gpu else None,  # NCCL: bind the group to this rank's GPU eagerly
    )
    try:
        yield DistContext(rank, world_size, local_rank, device, backend)
    except BaseException as exc:
        # Stamp the failure before tearing down: destroying the group makes the other ranks fail
        # too, and the driver reports the rank that failed first.
        _stamp(exc)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _stamp(exc: BaseException) -> None:
    if not hasattr(exc, FAILED_AT):
        with contextlib.suppress(AttributeError):  # exceptions with __slots__
            setattr(exc, FAILED_AT, time.time())
