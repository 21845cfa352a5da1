"""The e2e tests' load: ``python -m tests.k8s.loadclient``, run in a network namespace of its own.

It sends ``--count`` V2 inference requests for iris to ``--url`` (the activator Service's IP), at
most ``--concurrency`` at once and at most ``--rate`` per second, none after ``--deadline``
seconds; bounded in count and in time. One JSON line per request on stdout::

    {"i": 0, "start": 1234.5, "end": 1234.6, "status": 200, "version": "1", "attempts": 1, "error": ""}

``start``/``end`` are ``time.monotonic()``, the clock the test's event loop reads (one clock per
machine), so the test can place its own events among the requests. ``version`` is the response's
``model_version`` (the revision: the canary's model server says 2). Then one summary line.

The client does what a client of Knative's activator must do (docs/kubernetes.md, "What a client
must do"): a request that failed before any response arrived (connection refused or reset, or
closed by a server that is shutting down) is retried, up to ``--retries`` times, on a new
connection, which the Service sends to a ready activator; every connection serves one request,
so none stays pinned to an activator that has left the Service. An HTTP status is an answer, never
retried: a non-2xx counts as a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

BODY = {
    "inputs": [
        {"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [6.8, 2.8, 4.8, 1.4]}
    ]
}
RETRIABLE = (aiohttp.ClientConnectionError,)  # refused, reset, disconnected: no response came


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.k8s.loadclient")
    p.add_argument("--url", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--rate", type=float, default=100.0, help="requests started per second, at most")
    p.add_argument("--deadline", type=float, default=120.0, help="no request starts after this (s)")
    p.add_argument("--timeout", type=float, default=60.0, help="per request, all attempts (s)")
    p.add_argument("--retries", type=int, default=3)
    return p.parse_args(list(argv))


async def one(session: aiohttp.ClientSession, args: argparse.Namespace, i: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "i": i,
        "start": time.monotonic(),
        "status": 0,
        "version": "",
        "attempts": 0,
        "error": "",
    }
    deadline = record["start"] + args.timeout
    while True:
        record["attempts"] += 1
        try:
            left = max(0.1, deadline - time.monotonic())
            async with session.post(
                args.url, json=BODY, timeout=aiohttp.ClientTimeout(total=left)
            ) as resp:
                body = await resp.read()
                record["status"] = resp.status
                if resp.status == 200:
                    record["version"] = str(json.loads(body).get("model_version", ""))
                else:
                    record["error"] = body[:200].decode(errors="replace")
            break
        except RETRIABLE as exc:
            record["error"] = repr(exc)
            if record["attempts"] > args.retries or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            record["error"] = repr(exc)
            break
    record["end"] = time.monotonic()
    return record


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    sem = asyncio.Semaphore(args.concurrency)
    sent = failed = 0

    async def send(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal failed
        try:
            record = await one(session, args, i)
        finally:
            sem.release()
        failed += record["status"] != 200
        print(json.dumps(record), flush=True)

    # one request per connection (force_close): see the module's docstring
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, limit=0)
    ) as session:
        tasks = []
        for i in range(args.count):
            await asyncio.sleep(max(0.0, started + i / args.rate - time.monotonic()))
            await sem.acquire()
            if time.monotonic() - started > args.deadline:
                sem.release()
                break
            tasks.append(asyncio.create_task(send(session, i)))
            sent += 1
        await asyncio.gather(*tasks)
    summary = {
        "summary": True,
        "sent": sent,
        "failed": failed,
        "seconds": time.monotonic() - started,
    }
    print(json.dumps(summary), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
