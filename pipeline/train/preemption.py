"""Stopping a distributed run cleanly, and the per-rank state a mid-epoch resume needs.

* :class:`StopSignals` turns SIGTERM/SIGINT into a request to stop after the current step
  (:meth:`StopSignals.request` makes the same request without a signal: the demo's drill).
* :class:`Agreement` makes every rank stop after the same step: after each step the ranks
  all-reduce one flag (on a gloo group, so that an NCCL run does not synchronise the GPU).
* :func:`rng_state` / :func:`set_rng_state` and :func:`gather` collect what each rank must save.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping
from typing import Any

import torch

from pipeline.train.process_group import DistContext

__all__ = ["Agreement", "StopSignals", "gather", "rng_state", "set_rng_state"]

log = logging.getLogger(__name__)


class StopSignals:
    """Turns SIGTERM/SIGINT into a request to stop after the current step (main thread only)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            if signum == signal.SIGINT:  # Ctrl-C twice: stop now, without a checkpoint
                self._restore()
                signal.raise_signal(signum)
            return  # SIGTERM again (the process group's and the driver's copy): already stopping
        self.received = signum
        log.warning("%s received: finishing this step, then saving a checkpoint", signal.Signals(signum).name)

    def request(self, why: str) -> None:
        """Stop after this step as if SIGTERM had arrived (a preemption drill); logs ``why``."""
        if self.received is None:
            self.received = signal.SIGTERM
            log.warning("%s: stopping as on SIGTERM: finishing this step, then saving a checkpoint", why)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc: object) -> None:
        self._restore()


class Agreement:
    """Whether any rank wants to stop, agreed by all ranks after each step (CPU collective)."""

    def __init__(self, ctx: DistContext) -> None:
        import torch.distributed as dist

        self._group = None
        self._active = ctx.world_size > 1 and dist.is_initialized()
        if self._active and ctx.backend != "gloo":
            self._group = dist.new_group(backend="gloo")  # no GPU sync for a one-int flag

    def any(self, flag: bool) -> bool:
        if not self._active:
            return flag
        import torch.distributed as dist

        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._group)
        return bool(value.item())


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather(ctx: DistContext, payload: dict[str, Any]) -> list[dict[str, Any]]:
    import torch.distributed as dist

    if ctx.world_size == 1 or not dist.is_initialized():
        return [payload]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, payload)
    return gathered
