"""A TCP proxy on 127.0.0.1 that adds a fixed delay to every request (tests only).

Usage: ``python s3_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS``. Each chunk sent by the client
(an HTTP request, or its first packet) is held ``DELAY_MS`` before it is forwarded; responses
pass through at once. Runs until terminated.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time


def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
    try:
        while True:
            data = src.recv(1 << 16)
            if not data:
                break
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
    server = socket.create_server(("127.0.0.1", listen_port))
    while True:
        client, _ = server.accept()
        upstream = socket.create_connection(("127.0.0.1", target_port))
        for a, b, d in ((client, upstream, delay_ms / 1000), (upstream, client, 0.0)):
            threading.Thread(target=_pipe, args=(a, b, d), daemon=True).start()


if __name__ == "__main__":
    main()
