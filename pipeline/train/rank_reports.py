"""How each rank's outcome reaches the driver: a small TCP inbox that lives for one run.

The driver opens a :class:`ReportInbox` around ``TorchDistributor.run``; each rank sends at most
one report to its :class:`InboxAddress` with :func:`send_report`: rank 0 its return value
(``"result"``), a failing rank its error record (``"error"``)::

    with ReportInbox("127.0.0.1") as inbox:          # driver
        ...                                          # ranks: send_report(inbox.address, "result", 0, body)
    inbox.results[0], inbox.errors

Why not ``TorchDistributor``'s own return value and exception is in
:mod:`pipeline.train.distributed`. The same inbox serves local mode (ranks on the driver) and
cluster mode (ranks on the executors, which reach the driver at ``spark.driver.host`` as
``TorchDistributor``'s own log stream does).

A report is ``token (16 bytes) | kind (1 byte) | rank (4 bytes) | length (8 bytes) | body``:
the inbox reads a body only after the run's random token matched, never unpickles anything
(bodies stay bytes for the caller), and answers one byte once the report is stored, so a rank
that got the answer knows the driver holds its report before its process exits.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import socket
import socketserver
import threading
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["InboxAddress", "ReportInbox", "send_report"]

log = logging.getLogger(__name__)

Kind = Literal["result", "error"]
_KINDS: dict[str, bytes] = {"result": b"R", "error": b"E"}
_TOKEN_BYTES = 16
_ACK = b"\x06"
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class InboxAddress:
    """Where ranks send their reports (shipped to every rank with the function)."""

    host: str
    port: int
    token: bytes


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True  # a rank killed in the middle of a report must not hold up close()
    allow_reuse_address = True

    def __init__(self, host: str, inbox: ReportInbox) -> None:
        super().__init__((host, 0), _Handler)
        self.inbox = inbox


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        inbox: ReportInbox = self.server.inbox  # type: ignore[attr-defined]
        sock: socket.socket = self.request
        sock.settimeout(_TIMEOUT_S)
        try:
            if not hmac.compare_digest(_recv_exact(sock, _TOKEN_BYTES), inbox.address.token):
                log.warning("ignored a report from %s: not this run's token", self.client_address)
                return
            code = _recv_exact(sock, 1)
            kind = next((k for k, c in _KINDS.items() if c == code), None)
            rank = int.from_bytes(_recv_exact(sock, 4), "big")
            body = _recv_exact(sock, int.from_bytes(_recv_exact(sock, 8), "big"))
        except OSError as exc:  # the rank went away mid-report (killed by torchrun, network)
            log.warning("a rank's report from %s broke off: %s", self.client_address, exc)
            return
        if kind is None:
            log.warning("ignored a report of unknown kind from rank %d", rank)
            return
        inbox._store(kind, rank, body)
        sock.sendall(_ACK)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    parts, left = [], size
    while left:
        part = sock.recv(min(left, 1 << 20))
        if not part:
            raise ConnectionError(f"connection closed {size - left} of {size} bytes into a report")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


class ReportInbox:
    """Collects the ranks' reports of one run; a context manager that listens while open.

    Args:
        host: Address to listen on, one the ranks can reach. Defaults to ``"127.0.0.1"`` (ranks
            on this machine).

    Attributes:
        results: ``rank -> body`` of the ``"result"`` reports.
        errors: ``rank -> body`` of the ``"error"`` reports.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.results: dict[int, bytes] = {}
        self.errors: dict[int, bytes] = {}
        self._token = secrets.token_bytes(_TOKEN_BYTES)
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> InboxAddress:
        """Where to send reports (only while the inbox is open)."""
        if self._server is None:
            raise RuntimeError("the report inbox is not open; use it as a context manager")
        return InboxAddress(self.host, self._server.server_address[1], self._token)

    def __enter__(self) -> ReportInbox:
        self._server = _Server(self.host, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="rank-reports", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    def _store(self, kind: str, rank: int, body: bytes) -> None:
        with self._lock:
            (self.results if kind == "result" else self.errors)[rank] = body


def send_report(address: InboxAddress, kind: Kind, rank: int, body: bytes) -> None:
    """Send one report and wait until the driver has stored it.

    Raises:
        OSError: The driver cannot be reached or did not confirm the report.
    """
    header = address.token + _KINDS[kind] + rank.to_bytes(4, "big") + len(body).to_bytes(8, "big")
    where = f"the driver at {address.host}:{address.port}"
    try:
        with socket.create_connection((address.host, address.port), timeout=_TIMEOUT_S) as sock:
            sock.sendall(header)
            sock.sendall(body)
            confirmed = sock.recv(1) == _ACK
    except OSError as exc:
        raise ConnectionError(f"rank {rank} cannot send its {kind} report to {where}: {exc}") from exc
    if not confirmed:
        raise ConnectionError(f"{where} did not confirm rank {rank}'s {kind} report")
