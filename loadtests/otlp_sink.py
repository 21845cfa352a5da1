"""An OTLP/HTTP trace sink for benchmarks: answers every ``POST /v1/traces`` 200 with an empty
``ExportTraceServiceResponse`` (what a collector answers), keeps nothing, counts the bytes.

    python -m loadtests.otlp_sink --port N
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    received = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        _Sink.received += len(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.otlp_sink")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    ThreadingHTTPServer(("127.0.0.1", args.port), _Sink).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
