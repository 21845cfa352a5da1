"""The websocket endpoint where activators push their stats (reference §2.3, Knative's statserver).

One text message is one batch (``metrics.stat.encode_batch``). Each decoded batch goes to a sink
(the autoscaler records the stats and pokes revisions at zero). Kubelet probes get 200; a bad
message is logged and skipped, the connection stays; on shutdown every open socket is closed with
code 1012 (service restart) so activators reconnect to the next autoscaler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import WSCloseCode, WSMsgType, web

from metrics.stat import StatError, WireStat, decode_batch

log = logging.getLogger("zeroserve.autoscaler")

StatSink = Callable[[list[WireStat]], None]

SINK_KEY: web.AppKey[StatSink] = web.AppKey("stat_sink")
SOCKETS_KEY: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("stat_sockets")

# Knative's network.IsKubeletProbe: the kubelet's User-Agent, or the probe header.
_KUBELET_UA_PREFIX = "kube-probe/"


def _is_kubelet_probe(request: web.Request) -> bool:
    return (
        request.headers.get("User-Agent", "").startswith(_KUBELET_UA_PREFIX)
        or "K-Kubelet-Probe" in request.headers
    )


async def handle_stats(request: web.Request) -> web.StreamResponse:
    """``GET /``: a kubelet probe gets 200; anything else is upgraded to the stat websocket."""
    if _is_kubelet_probe(request):
        return web.Response(text="ok")
    ws = web.WebSocketResponse(heartbeat=None, max_msg_size=8 * 1024 * 1024)
    await ws.prepare(request)
    sink = request.app[SINK_KEY]
    sockets = request.app[SOCKETS_KEY]
    sockets.add(ws)
    peer = request.remote or ""
    try:
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            try:
                batch = decode_batch(msg.data)
            except StatError as exc:
                log.warning("stat message skipped", extra={"peer": peer, "error": str(exc)})
                continue
            sink(batch)
    finally:
        sockets.discard(ws)
    return ws


async def close_sockets(app: web.Application, reason: str = "autoscaler shutting down") -> int:
    """Close every activator socket with 1012 (service restart) so the activators reconnect:
    on shutdown, and when this replica stops leading (the Service then routes to the new leader).
    Returns how many sockets were closed."""
    live = app[SOCKETS_KEY]
    sockets = tuple(live)
    for ws in sockets:
        await ws.close(code=WSCloseCode.SERVICE_RESTART, message=reason.encode())
    return len(sockets)


async def _close_sockets(app: web.Application) -> None:
    await close_sockets(app)


def build_stat_app(sink: StatSink) -> web.Application:
    """The aiohttp app served on :8080: the websocket on ``/`` feeding ``sink``."""
    app = web.Application()
    app[SINK_KEY] = sink
    app[SOCKETS_KEY] = set()
    app.router.add_get("/", handle_stats)
    app.on_shutdown.append(_close_sockets)
    return app
