"""A list-then-watch cache of one kind of object (client-go's reflector + store, in small).

The loop: list (remember the list's resourceVersion), then watch from it with bookmarks, resuming
from the last resourceVersion seen whenever the watch ends or the connection drops. On 410 Gone
(the version was compacted) it lists again and emits only the difference with its cache: objects
that appeared, changed (another resourceVersion) or disappeared. An event whose object has the
resourceVersion already cached is dropped. So each change reaches the handler exactly once, even
across re-lists. Errors back off exponentially (0.2 s doubling to 30 s, reset by a good watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import aiohttp

from cluster.kubernetes.api import ApiError, GoneError, KubeApi, Obj, Resource

log = logging.getLogger("zeroserve.kubernetes")

ObjKey = tuple[str, str]
"""(namespace, name)"""


def obj_key(obj: Obj) -> ObjKey:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def resource_version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


@dataclass(frozen=True, slots=True)
class Change:
    """One change to the cache: ``object`` is the new object (the last known one if deleted)."""

    type: Literal["added", "modified", "deleted"]
    object: Obj

    @property
    def key(self) -> ObjKey:
        return obj_key(self.object)


Handler = Callable[[Sequence[Change]], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    initial_s: float = 0.2
    max_s: float = 30.0
    factor: float = 2.0


class Informer:
    """Keeps :meth:`items` equal to the server's objects matching the selectors.

    Handlers are called on the event loop with each batch of changes, after the cache is updated
    (one batch for a re-list's difference, one per watch event otherwise).
    """

    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str = "",
        field_selector: str = "",
        watch_timeout_s: int = 300,
        backoff: Backoff | None = None,
    ) -> None:
        self._api = api
        self.resource = resource
        self.namespace = namespace
        self._label_selector = label_selector
        self._field_selector = field_selector
        self._watch_timeout_s = watch_timeout_s
        self._backoff = backoff or Backoff()
        self._items: dict[ObjKey, Obj] = {}
        self._rv = ""
        self._handlers: list[Handler] = []
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.lists = 0
        """How many times it listed (1 + one per 410 or lost resourceVersion)."""

    # -- reading -----------------------------------------------------------------------------

    def items(self) -> Mapping[ObjKey, Obj]:
        return MappingProxyType(self._items)

    def get(self, namespace: str, name: str) -> Obj | None:
        return self._items.get((namespace, name))

    @property
    def resource_version(self) -> str:
        return self._rv

    def add_handler(self, handler: Handler) -> Callable[[], None]:
        self._handlers.append(handler)
        return lambda: self._handlers.remove(handler) if handler in self._handlers else None

    async def wait_synced(self) -> None:
        """Return once the first list is in the cache."""
        await self._synced.wait()

    # -- running -----------------------------------------------------------------------------

    def start(self, *, resume: bool = False) -> None:
        """Run in the background. ``resume``: after a :meth:`stop`, watch on from the last
        version seen instead of listing first (a 410 then re-lists)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self.run(resume=resume), name=f"informer-{self.resource}"
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self, *, resume: bool = False) -> None:
        """List and watch until cancelled."""
        delay = self._backoff.initial_s
        need_list = not (resume and self._synced.is_set())
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                await self._watch()
                delay = self._backoff.initial_s
            except GoneError:
                log.info(
                    "resourceVersion expired, listing again",
                    extra={"resource": str(self.resource), "resource_version": self._rv},
                )
                need_list = True
            except (TimeoutError, ApiError, aiohttp.ClientError, OSError, ValueError) as exc:
                log.warning(
                    "list/watch failed, backing off",
                    extra={"resource": str(self.resource), "error": str(exc), "delay_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(self._backoff.max_s, delay * self._backoff.factor)

    async def _relist(self) -> None:
        result = await self._api.list(
            self.resource,
            self.namespace,
            label_selector=self._label_selector,
            field_selector=self._field_selector,
        )
        self.lists += 1
        fresh = {obj_key(o): o for o in result.items}
        changes: list[Change] = []
        for key, old in list(self._items.items()):
            if key not in fresh:
                del self._items[key]
                changes.append(Change("deleted", old))
        for key, obj in fresh.items():
            old_obj = self._items.get(key)
            if old_obj is None:
                changes.append(Change("added", obj))
            elif resource_version(old_obj) != resource_version(obj):
                changes.append(Change("modified", obj))
            self._items[key] = obj
        self._rv = result.resource_version
        self._synced.set()
        self._emit(changes)

    async def _watch(self) -> None:
        events = self._api.watch(
            self.resource,
            self.namespace,
            resource_version=self._rv,
            label_selector=self._label_selector,
            field_selector=self._field_selector,
            timeout_s=self._watch_timeout_s,
        )
        async for event in events:
            obj = event.object
            rv = resource_version(obj)
            if event.type == "BOOKMARK":
                self._rv = rv or self._rv
                continue
            key = obj_key(obj)
            old = self._items.get(key)
            if event.type in ("ADDED", "MODIFIED"):
                self._items[key] = obj
                if old is None:
                    self._emit([Change("added", obj)])
                elif resource_version(old) != rv:
                    self._emit([Change("modified", obj)])
            elif event.type == "DELETED" and old is not None:
                del self._items[key]
                self._emit([Change("deleted", obj)])
            if rv:
                self._rv = rv

    def _emit(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        for handler in list(self._handlers):
            try:
                handler(changes)
            except Exception:
                log.exception("informer handler failed", extra={"resource": str(self.resource)})
