"""What a training run shows while it runs: a progress line, MLflow and TensorBoard.

* :class:`Progress` -- rank 0's line ``epoch 2/5  step 40/120  312 samples/s  data wait 12%``:
  redrawn in place when stderr is a terminal; when the job's driver is on a terminal and the
  ranks' output is piped through it (``TorchDistributor``), the driver sets
  ``PIPELINE_PROGRESS=1`` and the line is printed every 10 seconds instead. Off in logs, under
  ``--json`` and in tests.
* :class:`Trackers` -- each epoch's metrics (loss, accuracy, the loader's figures) to MLflow when
  ``mlflow`` is installed and a run is active or ``MLFLOW_TRACKING_URI`` is set (the Databricks
  default), and to TensorBoard when asked (``tensorboard_dir`` in the job's config or
  ``PIPELINE_TENSORBOARD_DIR``). Both are optional imports; a missing one is skipped with a log
  line that names the install command.
* :func:`mlflow_run_for_ranks` -- the driver's side: the ranks are other processes, so a run
  active in the driver is not active in them; this puts its id and tracking URI in the
  environment the ranks inherit (``MLFLOW_RUN_ID``, as ``mlflow run`` does), and
  :class:`Trackers` then logs into that run (through ``MlflowClient``, without ending it).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = [
    "MLFLOW_RUN_ENV",
    "PROGRESS_ENV",
    "TENSORBOARD_ENV",
    "Progress",
    "Trackers",
    "mlflow_run_for_ranks",
]

log = logging.getLogger(__name__)

PROGRESS_ENV = "PIPELINE_PROGRESS"
"""``"1"``: print progress lines even though stderr is not a terminal (set by the job driver)."""
TENSORBOARD_ENV = "PIPELINE_TENSORBOARD_DIR"
"""Folder for TensorBoard event files, when the job's config does not name one."""
MLFLOW_RUN_ENV = "MLFLOW_RUN_ID"
"""An MLflow run the ranks log into (the driver's active run, or the one ``mlflow run`` started)."""

_LINE_EVERY_S = 10.0
_REDRAW_EVERY_S = 0.5


class Progress:
    """Rank 0's progress line (see the module docstring).

    Args:
        enabled: Show it at all (rank 0 only). Defaults to ``True``.
        stream: Where to write. Defaults to ``None`` (``sys.stderr``).
    """

    def __init__(self, *, enabled: bool = True, stream: Any = None) -> None:
        self._stream = stream or sys.stderr
        tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._mode = "tty" if tty else "lines" if os.environ.get(PROGRESS_ENV) == "1" else None
        if not enabled:
            self._mode = None
        self._last = 0.0
        self._drawn = False

    @property
    def enabled(self) -> bool:
        return self._mode is not None

    def update(
        self, *, epoch: int, epochs: int, step: int, steps: int, stats: Callable[[], Mapping[str, Any]]
    ) -> None:
        """Show the position and the loader's figures (``stats`` is ``loader.stats``), rate-limited."""
        if self._mode is None:
            return
        now = time.monotonic()
        if now - self._last < (_REDRAW_EVERY_S if self._mode == "tty" else _LINE_EVERY_S) and step < steps:
            return
        self._last = now
        figures = stats()
        current = figures.get("epoch") or figures
        line = (
            f"epoch {epoch + 1}/{epochs}  step {step}/{steps}  "
            f"{current.get('samples_per_s', 0.0):,.0f} samples/s  "
            f"data wait {100 * current.get('wait_fraction', 0.0):.0f}%"
        )
        if self._mode == "tty":
            self._stream.write("\r" + line.ljust(70))
            self._drawn = True
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def close(self) -> None:
        """End the redrawn line."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False


class Trackers:
    """MLflow and TensorBoard sinks for per-epoch metrics (rank 0 only; see the module docstring).

    Args:
        tensorboard_dir: Where to write TensorBoard events. Defaults to ``None``
            (``$PIPELINE_TENSORBOARD_DIR``, else no TensorBoard).
        run_name: Name of an MLflow run this class starts. Defaults to ``"pipeline-train"``.
    """

    def __init__(self, *, tensorboard_dir: str | None = None, run_name: str = "pipeline-train") -> None:
        self._mlflow: Any = None
        self._client: Any = None  # MlflowClient, logging into the run named by MLFLOW_RUN_ID
        self._run_id = os.environ.get(MLFLOW_RUN_ENV)
        self._started_run = False
        self._writer: Any = None
        self._run_name = run_name
        try:
            import mlflow
        except ImportError:
            mlflow = None
        if mlflow is not None and self._run_id and mlflow.active_run() is None:
            self._client = mlflow.tracking.MlflowClient()  # someone else's run: log into it, never end it
        elif mlflow is not None and (
            mlflow.active_run() is not None or os.environ.get("MLFLOW_TRACKING_URI")
        ):
            self._mlflow = mlflow
        folder = tensorboard_dir or os.environ.get(TENSORBOARD_ENV)
        if folder:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("TensorBoard asked for (%s) but not installed -- pip install tensorboard", folder)
            else:
                self._writer = SummaryWriter(log_dir=folder)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The run's settings, once (MLflow params; flat scalars only)."""
        if self._mlflow is None and self._client is None:
            return
        flat = {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool)) or v is None}
        try:
            if self._client is not None:
                for key, value in flat.items():
                    self._client.log_param(self._run_id, key, value)
            else:
                self._ensure_run()
                self._mlflow.log_params(flat)
        except Exception as exc:  # a param logged by an earlier attempt of a resumed run, a server hiccup
            log.warning("MLflow log_params failed: %s", exc)

    def log_epoch(self, row: Mapping[str, Any], step: int) -> None:
        """The numeric values of one epoch's row, at ``step`` (the epoch number)."""
        values = {
            k: float(v)
            for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        try:
            if self._client is not None:
                for key, value in values.items():
                    self._client.log_metric(self._run_id, key, value, step=step)
            elif self._mlflow is not None:
                self._ensure_run()
                self._mlflow.log_metrics(values, step=step)
        except Exception as exc:
            log.warning("MLflow log_metrics failed: %s", exc)
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)
            self._writer.flush()

    def _ensure_run(self) -> None:
        if self._mlflow.active_run() is None:
            self._mlflow.start_run(run_name=self._run_name)
            self._started_run = True

    def close(self) -> None:
        """End an MLflow run this object started; close the TensorBoard writer."""
        if self._started_run:
            self._mlflow.end_run()
            self._started_run = False
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@contextlib.contextmanager
def mlflow_run_for_ranks() -> Iterator[str | None]:
    """Driver side: while inside, ranks started from this process log into this process's active MLflow run.

    Sets ``MLFLOW_RUN_ID`` and ``MLFLOW_TRACKING_URI`` (which ``torchrun``'s ranks inherit in
    local mode) when ``mlflow`` is installed and a run is active; restores them on exit.

    Yields:
        The run's id, or ``None`` (no ``mlflow``, or no active run: nothing changes).
    """
    try:
        import mlflow
    except ImportError:
        yield None
        return
    run = mlflow.active_run()
    if run is None:
        yield None
        return
    names = (MLFLOW_RUN_ENV, "MLFLOW_TRACKING_URI")
    saved = {name: os.environ.get(name) for name in names}
    os.environ[MLFLOW_RUN_ENV] = run.info.run_id
    os.environ["MLFLOW_TRACKING_URI"] = str(mlflow.get_tracking_uri())
    try:
        yield run.info.run_id
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
