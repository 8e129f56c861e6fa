"""A real Spark standalone cluster on 127.0.0.1 for tests: one master, two workers.

``pip install pyspark`` ships no ``start-master.sh``, so the daemons are started with
``spark-class`` directly. Every process is bound to loopback and torn down on exit, also when the
start fails half-way.

    with standalone_cluster(tmp_path) as master_url:   # "spark://127.0.0.1:PORT"
        subprocess.run([spark_submit(), "--master", master_url, "jobs/x.py"], check=True)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

__all__ = ["cluster_env", "spark_bin", "standalone_cluster"]

_LOOPBACK = "127.0.0.1"


def spark_bin(name: str) -> str:
    """Path of a Spark launcher script (``spark-class``, ``spark-submit``) next to this Python."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        return s.getsockname()[1]


def cluster_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for cluster daemons and ``spark-submit``: loopback only, this interpreter."""
    env = dict(os.environ)
    env.update(
        SPARK_LOCAL_IP=_LOOPBACK,
        SPARK_MASTER_HOST=_LOOPBACK,
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
    )
    env.update(extra or {})
    return env


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    fh = open(log, "wb")  # noqa: SIM115 -- kept open for the daemon's life, closed by the Popen
    try:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finally:
        fh.close()


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def _master_state(ui_port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://{_LOOPBACK}:{ui_port}/json/", timeout=2) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None


def _wait_for(what: str, ready, procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{what}: a daemon exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                )
        time.sleep(0.25)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in logs if log.exists())
    raise TimeoutError(f"{what} not ready within {timeout:.0f} s\n{tails}")


@contextmanager
def standalone_cluster(
    workdir: Path,
    *,
    workers: int = 2,
    cores_per_worker: int = 1,
    memory_per_worker: str = "1g",
    timeout: float = 90,
) -> Iterator[str]:
    """Start a master and ``workers`` workers on 127.0.0.1; yield the master URL; stop them all.

    Args:
        workdir: Folder for the daemons' logs and the workers' scratch space.
        workers: Number of worker daemons. Defaults to ``2``.
        cores_per_worker: Cores each worker offers. Defaults to ``1``.
        memory_per_worker: Memory each worker offers. Defaults to ``"1g"``.
        timeout: Seconds to wait for the master and every worker to register. Defaults to ``90``.

    Yields:
        ``spark://127.0.0.1:PORT``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = cluster_env({"SPARK_LOG_DIR": str(workdir), "SPARK_WORKER_DIR": str(workdir / "work")})
    spark_class = spark_bin("spark-class")
    port, ui_port = _free_port(), _free_port()
    url = f"spark://{_LOOPBACK}:{port}"
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []
    with ExitStack() as stack:
        stack.callback(lambda: [_stop(p) for p in reversed(procs)])
        master_log = workdir / "master.log"
        procs.append(
            _start(
                [
                    spark_class,
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    _LOOPBACK,
                    "--port",
                    str(port),
                    "--webui-port",
                    str(ui_port),
                ],
                master_log,
                env,
            )
        )
        logs.append(master_log)
        _wait_for("Spark master", lambda: _master_state(ui_port) is not None, procs, logs, timeout)
        for i in range(workers):
            log = workdir / f"worker-{i}.log"
            cmd = [
                spark_class,
                "org.apache.spark.deploy.worker.Worker",
                url,
                "--host", _LOOPBACK,
                "--cores", str(cores_per_worker),
                "--memory", memory_per_worker,
                "--webui-port", str(_free_port()),
                "--work-dir", str(workdir / f"work-{i}"),
            ]  # fmt: skip
            procs.append(_start(cmd, log, env))
            logs.append(log)

        def all_alive() -> bool:
            state = _master_state(ui_port) or {}
            return sum(w.get("state") == "ALIVE" for w in state.get("workers", [])) >= workers

        _wait_for(f"{workers} Spark workers", all_alive, procs, logs, timeout)
        yield url
