"""A model server for the port tests that says who it is: every request is answered ``200`` with
the pod name (``$POD_NAME``) as its body, on ``127.0.0.1:$PORT``, HTTP/1.1 keep-alive.

Standard library only and no asyncio (it starts in ~20 ms): the tests start hundreds of them.
``ECHO_BIND_DELAY_S`` waits that long before binding; ``EADDRINUSE`` is reported and exits 3.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time


def _serve(conn: socket.socket, body: bytes) -> None:
    buf = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buf) < length:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            buf = buf[length:]
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )


def main() -> int:
    port = int(os.environ["PORT"])
    body = os.environ.get("POD_NAME", "").encode()
    time.sleep(float(os.environ.get("ECHO_BIND_DELAY_S", "0")))
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("127.0.0.1", port))
    except OSError as exc:
        print(f"echo_pod: cannot bind 127.0.0.1:{port}: {exc}", file=sys.stderr, flush=True)
        return 3
    server.listen(128)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_serve, args=(conn, body), daemon=True).start()


if __name__ == "__main__":
    raise SystemExit(main())
