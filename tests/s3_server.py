"""A real S3 API server for tests: moto's standalone server on 127.0.0.1, plus a latency proxy.

Fixtures (import them into a test module: ``from tests.s3_server import s3_server, s3_env``):

* ``s3_server`` (session): ``moto.server`` in a child process on a free port of 127.0.0.1;
  yields its endpoint URL. Stopped at the end of the session.
* ``s3_env`` (function): points the ``AWS_*`` variables at the server, creates a fresh bucket
  and yields ``s3://<bucket>``.

:func:`start_latency_proxy` runs ``tests/s3_proxy.py`` (a TCP proxy adding a delay to each
request) in a child process. Everything binds 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["create_bucket", "s3_env", "s3_server", "start_latency_proxy", "start_moto", "stop"]

KEY = "testing"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def start_moto(env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start moto's S3 server on a free 127.0.0.1 port; returns ``(process, endpoint URL)``."""
    pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    _wait_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


def start_latency_proxy(endpoint: str, delay_ms: float) -> tuple[subprocess.Popen[bytes], str]:
    """Start a TCP proxy to ``endpoint`` that delays each request by ``delay_ms``."""
    target_port = endpoint.rsplit(":", 1)[1]
    port = _free_port()
    script = Path(__file__).with_name("s3_proxy.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port), target_port, str(delay_ms)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child started here (terminate, then kill after 10 s)."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def create_bucket(endpoint: str, name: str) -> None:
    """Create a bucket on the server (pyarrow cannot, without allow_bucket_creation)."""
    import boto3

    boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=KEY, region_name="us-east-1"
    ).create_bucket(Bucket=name)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    proc, endpoint = start_moto()
    try:
        yield endpoint
    finally:
        stop(proc)


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<fresh bucket>`` with the ``AWS_*`` variables pointing at the test server."""
    for name, value in {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    create_bucket(s3_server, bucket)
    return f"s3://{bucket}"
