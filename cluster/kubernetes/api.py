"""The thin port to the Kubernetes API, and its implementation over ``kubernetes.aio``.

Everything in :mod:`cluster.kubernetes` talks to the API server through :class:`KubeApi`: a few
verbs on plain JSON objects (dicts), so the adapters can be tested against any API server that
keeps the real semantics, and so that no generated model class leaks into the rest of the code.
:class:`AioKubeApi` implements it with the official client's asyncio API (``kubernetes.aio``,
part of the ``kubernetes`` package since 36): its configuration loading (in-cluster or a
kubeconfig), authentication and connection pool, but raw JSON requests, and our own watch loop
(:mod:`cluster.kubernetes.informer`) rather than ``kubernetes.aio.watch``, which silently
re-watches after a 410 without re-listing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp

Obj = dict[str, Any]
"""A Kubernetes object as JSON."""

PatchType = Literal["json", "merge", "strategic", "apply"]
_PATCH_CONTENT_TYPES: Mapping[PatchType, str] = {
    "json": "application/json-patch+json",
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "apply": "application/apply-patch+yaml",
}


@dataclass(frozen=True, slots=True)
class Resource:
    """A namespaced API resource: ``Resource("apps", "v1", "deployments")``; group "" is core."""

    group: str
    version: str
    plural: str

    def path(self, namespace: str | None, name: str = "", subresource: str = "") -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        path = (
            f"{base}/namespaces/{namespace}/{self.plural}" if namespace else f"{base}/{self.plural}"
        )
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


DEPLOYMENTS = Resource("apps", "v1", "deployments")
CONFIGMAPS = Resource("", "v1", "configmaps")
PODS = Resource("", "v1", "pods")
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices")
LEASES = Resource("coordination.k8s.io", "v1", "leases")


class ApiError(Exception):
    """The API server answered with an error status (``status``, ``reason``, ``message``)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFoundError(ApiError):
    """404: the object does not exist."""


class ConflictError(ApiError):
    """409: the object changed since it was read (resourceVersion), or it already exists."""


class GoneError(ApiError):
    """410: the resourceVersion is too old (compacted); list again."""


def api_error(status: int, body: object) -> ApiError:
    """The error for an answer: the subclass for 404/409/410, the message from a Status body."""
    reason, message = "", ""
    if isinstance(body, Mapping):
        reason = str(body.get("reason", ""))
        message = str(body.get("message", ""))
    cls = {404: NotFoundError, 409: ConflictError, 410: GoneError}.get(status, ApiError)
    return cls(status, reason, message)


@dataclass(frozen=True, slots=True)
class ListResult:
    items: list[Obj]
    resource_version: str


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One watch event: ``ADDED``, ``MODIFIED``, ``DELETED`` or ``BOOKMARK`` and the object."""

    type: str
    object: Obj


class KubeApi(Protocol):
    """The verbs zeroserve uses. Errors are :class:`ApiError`s; transport errors are ``OSError``
    or ``aiohttp.ClientError``; both are retried by the callers that loop."""

    async def list(
        self,
        resource: Resource,
        namespace: str | None,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> ListResult: ...

    def watch(
        self,
        resource: Resource,
        namespace: str | None,
        *,
        resource_version: str,
        label_selector: str = "",
        field_selector: str = "",
        timeout_s: int = 300,
    ) -> AsyncIterator[WatchEvent]:
        """Events after ``resource_version``, with bookmarks; raises :class:`GoneError` on 410."""
        ...

    async def get(self, resource: Resource, namespace: str, name: str) -> Obj: ...

    async def create(self, resource: Resource, namespace: str, body: Obj) -> Obj: ...

    async def replace(self, resource: Resource, namespace: str, name: str, body: Obj) -> Obj: ...

    async def patch(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        body: object,
        *,
        patch_type: PatchType = "merge",
        subresource: str = "",
    ) -> Obj: ...


def _query(**params: str | int | bool) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        if value == "" or value is None:
            continue
        out.append((key, str(value).lower() if isinstance(value, bool) else str(value)))
    return out


def watch_event(line: bytes | str) -> WatchEvent:
    """Parse one line of a watch stream; an ``ERROR`` event raises its :class:`ApiError`."""
    data = json.loads(line)
    kind, obj = data.get("type", ""), data.get("object") or {}
    if kind == "ERROR":
        raise api_error(int(obj.get("code", 500)), obj)
    return WatchEvent(kind, obj)


class AioKubeApi:
    """:class:`KubeApi` over ``kubernetes.aio``'s ``ApiClient`` (configuration, auth, pool)."""

    def __init__(self, api_client: Any) -> None:
        self._client = api_client

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> AioKubeApi:
        """In-cluster config when running in a pod (and no kubeconfig is named), else a kubeconfig."""
        from kubernetes.aio import client, config

        configuration = client.Configuration()
        if kubeconfig is None and _in_cluster():
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        return cls(client.ApiClient(configuration))

    async def close(self) -> None:
        await self._client.close()
        # TLS connections finish closing (close_notify) in the loop's next turns: give them
        # those turns, as aiohttp's graceful shutdown does, so none is left to a closed loop
        await asyncio.sleep(0.25)

    async def _request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: object = None,
        content_type: str = "application/json",
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> Any:
        method_, url, headers, body_, _ = await self._client.param_serialize(
            method,
            path,
            query_params=list(query),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        return await self._client.call_api(
            method_,
            url,
            header_params=headers,
            body=body_,
            _request_timeout=client_timeout or aiohttp.ClientTimeout(total=30),
        )

    async def _json(self, method: str, path: str, **kwargs: Any) -> Obj:
        resp = await self._request(method, path, **kwargs)
        raw = await resp.read()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"message": raw.decode(errors="replace")}
        if resp.status >= 400:
            raise api_error(resp.status, data)
        return data if isinstance(data, dict) else {}

    async def list(
        self,
        resource: Resource,
        namespace: str | None,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> ListResult:
        q = _query(labelSelector=label_selector, fieldSelector=field_selector)
        data = await self._json("GET", resource.path(namespace), query=q)
        return ListResult(
            items=list(data.get("items") or []),
            resource_version=str(data.get("metadata", {}).get("resourceVersion", "")),
        )

    async def watch(
        self,
        resource: Resource,
        namespace: str | None,
        *,
        resource_version: str,
        label_selector: str = "",
        field_selector: str = "",
        timeout_s: int = 300,
    ) -> AsyncIterator[WatchEvent]:
        q = _query(
            watch=True,
            allowWatchBookmarks=True,
            resourceVersion=resource_version,
            labelSelector=label_selector,
            fieldSelector=field_selector,
            timeoutSeconds=timeout_s,
        )
        # The server ends the watch after timeoutSeconds; the client gives it a margin.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_s + 30)
        resp = await self._request("GET", resource.path(namespace), query=q, client_timeout=timeout)
        try:
            if resp.status >= 400:
                raw = await resp.read()
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"message": raw.decode(errors="replace")}
                raise api_error(resp.status, body)
            content = resp.response.content
            while line := await content.readline():
                if line.strip():
                    yield watch_event(line)
        finally:
            resp.response.release()

    async def get(self, resource: Resource, namespace: str, name: str) -> Obj:
        return await self._json("GET", resource.path(namespace, name))

    async def create(self, resource: Resource, namespace: str, body: Obj) -> Obj:
        return await self._json("POST", resource.path(namespace), body=body)

    async def replace(self, resource: Resource, namespace: str, name: str, body: Obj) -> Obj:
        return await self._json("PUT", resource.path(namespace, name), body=body)

    async def patch(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        body: object,
        *,
        patch_type: PatchType = "merge",
        subresource: str = "",
        field_manager: str = "zeroserve",
        dry_run: bool = False,
    ) -> Obj:
        query = _query(fieldManager=field_manager) if patch_type == "apply" else []
        if patch_type == "apply":
            query.append(("force", "true"))
        if dry_run:
            query.append(("dryRun", "All"))
        return await self._json(
            "PATCH",
            resource.path(namespace, name, subresource),
            query=query,
            body=body,
            content_type=_PATCH_CONTENT_TYPES[patch_type],
        )

    async def delete(
        self, resource: Resource, namespace: str, name: str, *, grace_period_s: int | None = None
    ) -> Obj:
        """Not part of :class:`KubeApi` (zeroserve deletes nothing); for tests and tools."""
        query = _query(gracePeriodSeconds=grace_period_s) if grace_period_s is not None else []
        return await self._json("DELETE", resource.path(namespace, name), query=query)


def _in_cluster() -> bool:
    import os

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )
