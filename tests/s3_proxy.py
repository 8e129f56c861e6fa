"""A TCP proxy on 127.0.0.1 that adds a fixed delay to every request (tests only).

Usage: ``python s3_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS``. Each chunk sent by the client
(an HTTP request, or its first packet) is held ``DELAY_MS`` before it is forwarded; responses
pass through at once. Runs until terminated.

With ``$PIPELINE_S3_PROXY_LOG`` set to a file name, every request and response chunk is logged
there as one JSON line (``{"t", "conn", "req": "GET /b/k", "range"}`` when a request arrives,
``{"t", "conn", "bytes"}`` for each response chunk): ``benchmarks/bench_s3.py --trace`` reads
it to count the round trips of an open and an epoch.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import sys
import threading
import time
from typing import Any

_METHODS = (b"GET ", b"HEAD ", b"PUT ", b"POST ", b"DELETE ")


class _Log:
    def __init__(self, path: str | None) -> None:
        self._fh = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - lives as long as the proxy
        self._lock = threading.Lock()

    def write(self, **record: Any) -> None:
        if self._fh is None:
            return
        record["t"] = time.time()
        with self._lock:
            self._fh.write(json.dumps(record) + "\n")

    def request(self, conn: int, data: bytes) -> None:
        if self._fh is None or not data.startswith(_METHODS):
            return
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        method, target = head[0].split(" ")[:2]
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        self.write(conn=conn, req=f"{method} {target}", range=headers.get("range"))


def _pipe(src: socket.socket, dst: socket.socket, delay: float, conn: int, log: _Log, upstream: bool) -> None:
    try:
        while True:
            data = src.recv(1 << 16)
            if not data:
                break
            if upstream:
                log.write(conn=conn, bytes=len(data))
            else:
                log.request(conn, data)
            if delay:
                time.sleep(delay)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def main() -> None:
    listen_port, target_port, delay_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    log = _Log(os.environ.get("PIPELINE_S3_PROXY_LOG"))
    server = socket.create_server(("127.0.0.1", listen_port))
    for conn in itertools.count():
        client, _ = server.accept()
        upstream = socket.create_connection(("127.0.0.1", target_port))
        for a, b, d, up in ((client, upstream, delay_ms / 1000, False), (upstream, client, 0.0, True)):
            threading.Thread(target=_pipe, args=(a, b, d, conn, log, up), daemon=True).start()


if __name__ == "__main__":
    main()
