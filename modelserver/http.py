"""HTTP plumbing every model server here shares (the built-in one and the examples): JSON error
bodies, and serving an app until SIGTERM with a graceful shutdown.

The shutdown sequence follows STYLE.md §5: on SIGTERM (or SIGINT) the server calls ``on_drain``
(readiness starts answering 503 while requests are still served), then ``runner.cleanup()`` stops
listening and waits up to ``shutdown_timeout_s`` for the in-flight requests to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

logger = logging.getLogger("zeroserve.modelserver.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, reason: str, **headers: str) -> web.Response:
    """A refusal with a body that says why: ``{"error": reason}``."""
    return web.json_response({"error": reason}, status=status, headers=headers or None)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's own refusals (unknown path 404, wrong method 405, body too large 413) into
    JSON bodies like the handlers' own, keeping the ``Allow`` header of a 405."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            reason = f"method {request.method} is not allowed on {request.path}; allowed: {allowed}"
            return json_error(exc.status, reason, Allow=allowed)
        if isinstance(exc, web.HTTPNotFound) and exc.text == "404: Not Found":
            return json_error(exc.status, f"no route for {request.path}")
        return json_error(exc.status, exc.text or exc.reason)


async def serve_until_signal(
    app: web.Application,
    *,
    host: str,
    port: int,
    startup_delay_s: float = 0.0,
    shutdown_timeout_s: float = 30.0,
    on_drain: Callable[[], None] | None = None,
    stop: asyncio.Event | None = None,
    **runner_kwargs: Any,
) -> None:
    """Serve ``app`` on host:port until SIGTERM/SIGINT (or ``stop`` is set), then shut down
    gracefully.

    ``startup_delay_s`` is waited before listening (a signal during it ends the wait at once). The
    bound port is logged as ``listening on HOST:PORT`` (PORT=0 picks a free one).
    """
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if startup_delay_s > 0:
            logger.info("loading the model for %.3gs before listening", startup_delay_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=startup_delay_s)
            if stop.is_set():
                logger.info("stopped while loading")
                return
        runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=shutdown_timeout_s, **runner_kwargs
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            for bound_host, bound_port in _bound_addresses(runner):
                logger.info(
                    "listening on %s:%d", bound_host, bound_port, extra={"port": bound_port}
                )
            await stop.wait()
            logger.info("shutdown signal received: draining")
            if on_drain is not None:
                on_drain()
        finally:
            # Stops listening, waits for in-flight requests (up to shutdown_timeout_s), then runs
            # the app's cleanup.
            await runner.cleanup()
        logger.info("stopped")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _bound_addresses(runner: web.AppRunner) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            out.append((str(address[0]), int(address[1])))
    return out
