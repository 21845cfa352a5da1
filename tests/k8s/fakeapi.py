"""An in-repo Kubernetes API server for tests: aiohttp on 127.0.0.1, keeping the real semantics.

Not a mock: it stores objects and answers the REST API as kube-apiserver does for what zeroserve
uses. One global resourceVersion counter (etcd's revision), stamped on every write; list
returns the current version; watch replays the history after the given version, then streams
live events, sends BOOKMARK events when asked (``allowWatchBookmarks``), ends after
``timeoutSeconds``, and answers an ERROR event with a 410 Status when the version was compacted
away (:meth:`FakeApiServer.compact`). Writes with a stale ``metadata.resourceVersion`` and creates
of an existing name get 409; unknown objects 404. Label selectors (``=``, ``==``, ``!=``, ``in``,
``notin``, ``key``, ``!key``) and the ``metadata.name``/``metadata.namespace`` field selectors
filter lists and watches. ``deployments/<name>/scale`` is the scale subresource (autoscaling/v1
Scale; GET, PUT, JSON and merge PATCH).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

Obj = dict[str, Any]

_PATH = re.compile(
    r"^/(?:api/(?P<cv>v1)|apis/(?P<group>[^/]+)/(?P<gv>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[a-z]+))?$"
)
KINDS = {
    "deployments": "Deployment",
    "configmaps": "ConfigMap",
    "pods": "Pod",
    "endpointslices": "EndpointSlice",
    "leases": "Lease",
    "services": "Service",
}


def status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _requirement(expr: str) -> Callable[[dict[str, str]], bool]:
    expr = expr.strip()
    if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", expr):
        key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := re.fullmatch(r"([\w./-]+)\s*(!=|==|=)\s*([\w./-]*)", expr):
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if expr.startswith("!"):
        return lambda labels: expr[1:] not in labels
    return lambda labels: expr in labels


def parse_label_selector(selector: str) -> Callable[[dict[str, str]], bool]:
    # split on commas not inside parentheses
    parts = re.split(r",(?![^(]*\))", selector) if selector else []
    reqs = [_requirement(p) for p in parts if p.strip()]
    return lambda labels: all(r(labels) for r in reqs)


def parse_field_selector(selector: str) -> Callable[[Obj], bool]:
    reqs: list[tuple[str, str, bool]] = []
    for part in filter(None, (p.strip() for p in selector.split(","))):
        m = re.fullmatch(r"metadata\.(name|namespace)\s*(!=|==|=)\s*(.*)", part)
        if not m:
            raise ValueError(f"field label not supported: {part}")
        reqs.append((m.group(1), m.group(3), m.group(2) != "!="))
    return lambda obj: all((obj["metadata"].get(f) == v) == eq for f, v, eq in reqs)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(target: Obj, ops: list[Obj]) -> Obj:
    """RFC 6902 for object paths (add, replace, remove, test)."""
    doc = copy.deepcopy(target)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            if op["op"] == "replace" and last not in parent:
                raise KeyError(op["path"])
            parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[last]
        elif op["op"] == "test":
            if parent.get(last) != op["value"]:
                raise ValueError(op["path"])
        else:
            raise ValueError(op["op"])
    return doc


@dataclass
class _Event:
    rv: int
    resource: str
    type: str
    object: Obj


class FakeApiServer:
    """The server; ``url`` once :meth:`start` returned. Tests may write objects directly with
    :meth:`put` (what a controller would do) and drop history with :meth:`compact`."""

    def __init__(self, *, bookmark_interval_s: float = 0.2, bookmarks: bool = True) -> None:
        self.bookmarks = bookmarks
        """False: ignore allowWatchBookmarks (a server that sends none, which is allowed)."""
        self.open = asyncio.Event()
        self.open.set()
        self.rv = 0
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {}
        self.history: list[_Event] = []
        self.compacted = 0
        self.bookmark_interval_s = bookmark_interval_s
        self.requests: list[tuple[str, str]] = []
        self.fail_next: list[int] = []
        """Statuses to answer the next requests with (an injected outage), first first."""
        # Set, and replaced by a fresh one, on every change: a watch waits on the one it saw
        # before reading the history. (An asyncio.Condition waited on through wait_for could,
        # cancelled at shutdown, leave its lock unacquired and hang the loop's close.)
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._watches: set[web.StreamResponse] = set()
        self._dropped: set[web.StreamResponse] = set()
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- direct access (a controller's writes) -------------------------------------------------

    def _store(self, resource: str) -> dict[tuple[str, str], Obj]:
        return self.objects.setdefault(resource, {})

    async def put(self, resource: str, obj: Obj, namespace: str = "default") -> Obj:
        """Create or overwrite ``obj`` (no version check), as a controller's status write."""
        meta = obj["metadata"]
        key = (meta.get("namespace") or namespace, meta["name"])
        kind = "MODIFIED" if key in self._store(resource) else "ADDED"
        return await self._write(resource, key, obj, kind)

    async def delete(self, resource: str, namespace: str, name: str) -> None:
        obj = self._store(resource).pop((namespace, name))
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        await self._record(resource, "DELETED", obj)

    def get(self, resource: str, namespace: str, name: str) -> Obj | None:
        return self._store(resource).get((namespace, name))

    async def drop_watches(self) -> None:
        """End every open watch (a network blip or an API server restart)."""
        self._dropped |= self._watches
        self._notify()

    def compact(self) -> None:
        """Forget the history up to now: watches from an older version get 410 Gone."""
        self.compacted = self.rv
        self.history.clear()

    async def _write(self, resource: str, key: tuple[str, str], obj: Obj, kind: str) -> Obj:
        obj = copy.deepcopy(obj)
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.rv)
        meta.setdefault("namespace", key[0])
        meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        meta.setdefault("uid", f"uid-{resource}-{key[0]}-{key[1]}-{self.rv}")
        obj.setdefault("kind", KINDS.get(resource, ""))
        self._store(resource)[key] = obj
        await self._record(resource, kind, obj)
        return obj

    async def _record(self, resource: str, kind: str, obj: Obj) -> None:
        self.history.append(_Event(self.rv, resource, kind, obj))
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- REST ------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await self.open.wait()
        self.requests.append((request.method, request.path_qs))
        if self.fail_next:
            code = self.fail_next.pop(0)
            return web.json_response(status(code, "InternalError", "injected"), status=code)
        m = _PATH.match(request.path)
        if not m or m["plural"] not in KINDS:
            return web.json_response(status(404, "NotFound", "no such path"), status=404)
        resource, ns, name, sub = m["plural"], m["ns"] or "", m["name"], m["sub"]
        if sub and not (sub == "scale" and resource == "deployments") and sub != "status":
            return web.json_response(status(404, "NotFound", f"no subresource {sub}"), status=404)
        try:
            if request.method == "GET" and name is None:
                if request.query.get("watch") in ("true", "1"):
                    return await self._watch(request, resource, ns)
                return self._list(request, resource, ns)
            if request.method == "POST" and name is None:
                return await self._create(request, resource, ns)
            if name is None:
                return web.json_response(status(405, "MethodNotAllowed", "method"), status=405)
            return await self._one(request, resource, ns, name, sub)
        except ValueError as exc:
            return web.json_response(status(400, "BadRequest", str(exc)), status=400)

    def _selected(self, request: web.Request, resource: str, ns: str) -> list[Obj]:
        labels = parse_label_selector(request.query.get("labelSelector", ""))
        fields = parse_field_selector(request.query.get("fieldSelector", ""))
        return [
            o
            for (ons, _), o in sorted(self._store(resource).items())
            if (not ns or ons == ns) and labels(o["metadata"].get("labels") or {}) and fields(o)
        ]

    def _list(self, request: web.Request, resource: str, ns: str) -> web.Response:
        return web.json_response(
            {
                "kind": KINDS[resource] + "List",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.rv)},
                "items": self._selected(request, resource, ns),
            }
        )

    async def _watch(self, request: web.Request, resource: str, ns: str) -> web.StreamResponse:
        labels = parse_label_selector(request.query.get("labelSelector", ""))
        fields = parse_field_selector(request.query.get("fieldSelector", ""))
        bookmarks = self.bookmarks and request.query.get("allowWatchBookmarks") == "true"
        timeout = float(request.query.get("timeoutSeconds", "1800"))
        raw_rv = request.query.get("resourceVersion", "")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)

        async def send(kind: str, obj: Obj) -> None:
            await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        if raw_rv in ("", "0"):
            # "start at most recent": synthetic ADDED for the current state, then changes
            since = self.rv
            for obj in self._selected(request, resource, ns):
                await send("ADDED", obj)
        else:
            since = int(raw_rv)
            if since < self.compacted:
                await send(
                    "ERROR",
                    status(410, "Expired", f"too old resource version: {since} ({self.compacted})"),
                )
                return resp
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._watches.add(resp)
        try:
            while loop.time() < deadline and resp not in self._dropped:
                changed = self._changed  # (before the history is read: no change is missed)
                if since < self.compacted:
                    await send("ERROR", status(410, "Expired", "too old resource version"))
                    return resp
                for ev in [e for e in self.history if e.rv > since]:
                    since = ev.rv
                    ons = ev.object["metadata"].get("namespace", "")
                    if (
                        ev.resource == resource
                        and (not ns or ons == ns)
                        and labels(ev.object["metadata"].get("labels") or {})
                        and fields(ev.object)
                    ):
                        await send(ev.type, ev.object)
                if bookmarks:
                    # the last version this watch has fully seen (a write may be in flight)
                    meta = {"resourceVersion": str(since)}
                    await send("BOOKMARK", {"kind": KINDS[resource], "metadata": meta})
                wait = min(self.bookmark_interval_s, deadline - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), max(0.0, wait))
        except ConnectionResetError:
            return resp
        finally:
            self._watches.discard(resp)
            self._dropped.discard(resp)
        return resp

    async def _create(self, request: web.Request, resource: str, ns: str) -> web.Response:
        obj = await request.json()
        name = obj.get("metadata", {}).get("name")
        if not name:
            return web.json_response(status(422, "Invalid", "metadata.name: Required"), status=422)
        if (ns, name) in self._store(resource):
            return web.json_response(
                status(409, "AlreadyExists", f'{resource} "{name}" already exists'), status=409
            )
        obj["metadata"].pop("resourceVersion", None)
        obj["metadata"]["namespace"] = ns
        return web.json_response(await self._write(resource, (ns, name), obj, "ADDED"), status=201)

    async def _one(
        self, request: web.Request, resource: str, ns: str, name: str, sub: str | None
    ) -> web.Response:
        current = self._store(resource).get((ns, name))
        if current is None:
            return web.json_response(
                status(404, "NotFound", f'{resource} "{name}" not found'), status=404
            )
        if request.method == "GET":
            return web.json_response(_scale(current) if sub == "scale" else current)
        if request.method == "DELETE":
            await self.delete(resource, ns, name)
            return web.json_response(status(200, "", "deleted") | {"status": "Success"})
        body = await request.json()
        view = _scale(current) if sub == "scale" else current
        if request.method == "PUT":
            new = body
            want = (body.get("metadata") or {}).get("resourceVersion")
            if want and want != current["metadata"]["resourceVersion"]:
                return web.json_response(
                    status(
                        409,
                        "Conflict",
                        "the object has been modified; please apply your "
                        "changes to the latest version and try again",
                    ),
                    status=409,
                )
        elif request.method == "PATCH":
            ctype = request.headers.get("Content-Type", "")
            try:
                if ctype.startswith("application/json-patch+json"):
                    new = json_patch(view, body)
                elif ctype.startswith("application/merge-patch+json"):
                    new = merge_patch(view, body)
                else:
                    return web.json_response(status(415, "UnsupportedMediaType", ctype), status=415)
            except (KeyError, IndexError, ValueError) as exc:
                return web.json_response(status(422, "Invalid", str(exc)), status=422)
        else:
            return web.json_response(status(405, "MethodNotAllowed", "method"), status=405)
        if sub == "scale":
            replicas = (new.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                return web.json_response(
                    status(422, "Invalid", "spec.replicas: must be >= 0"), status=422
                )
            updated = copy.deepcopy(current)
            updated["spec"]["replicas"] = replicas
            written = await self._write(resource, (ns, name), updated, "MODIFIED")
            return web.json_response(_scale(written))
        new["metadata"]["name"], new["metadata"]["namespace"] = name, ns
        return web.json_response(await self._write(resource, (ns, name), new, "MODIFIED"))


def _scale(deployment: Obj) -> Obj:
    meta = deployment["metadata"]
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in ("name", "namespace", "resourceVersion") if k in meta},
        "spec": {"replicas": deployment.get("spec", {}).get("replicas", 1)},
        "status": {"replicas": deployment.get("status", {}).get("replicas", 0)},
    }
