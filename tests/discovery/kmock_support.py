"""A Kubernetes API for the ``kubernetes`` discovery tests: kmock's in-memory emulator, with what it lacks added.

kmock (``kmock.KubernetesEmulator``) keeps the objects and turns creates, patches and deletes into watch
events. ``ApiServer`` adds, following the API conventions:

- ``watch=True`` / ``allowWatchBookmarks=True`` (how kubernetes-asyncio spells booleans in a query) are read
  as ``true``, which is all kmock recognises;
- ``resourceVersion``: every write gets the next number, a list answers the current one, and a watch sends
  only what is newer than the version it starts from (kmock numbers nothing and replays everything);
- ``expire()``: versions before now are compacted away; a watch resuming from one gets an ``ERROR`` event
  with code 410 (Gone), as the API server sends;
- ``bookmark()``: a ``BOOKMARK`` event carrying the current resourceVersion to every open watch;
- ``end_watches()``: open watches end normally, as when their ``timeoutSeconds`` run out (which is honoured
  too);
- ``failing``: list and watch requests get that HTTP status with a ``Status`` body while it is set.

kmock does not filter by label selector: slices of every service in the namespace reach the watch, as they
would reach a client whose selector the server ignored; the backend checks the label itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.test_utils
import aiohttp.web
import attrs
import kmock

SLICES = "discovery.k8s.io/v1/endpointslices"
SLICES_PATH = "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
_END = "END-OF-WATCH"
#: Seconds a stopping server waits for the requests it is serving (an open watch) before it cuts them.
STOP_TIMEOUT = 0.5


def _version(value: Any) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator with resourceVersions, 410 Gone, bookmarks, watch timeouts and an error switch."""

    #: The newest resourceVersion handed out.
    revision: int = 0
    #: A watch starting from a resourceVersion below this gets 410 Gone.
    expired_before: int = 0
    #: While set, list and watch requests get this HTTP status.
    failing: int | None = None
    #: Every request as the client sent it: (method, path, query).
    log: list[tuple[str, str, dict[str, str]]] = attrs.field(factory=list)
    #: Watches being served now.
    open_watches: int = 0

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources[SLICES] = kmock.ResourceInfo()  # known before any slice exists: a list answers, empty

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        query = dict(raw_request.rel_url.query)
        self.log.append((raw_request.method, raw_request.path, query))
        if self.failing is not None and raw_request.method == "GET":
            code = self.failing
            return aiohttp.web.json_response(_status(code, "InternalError", "the API is failing"), status=code)
        fixed = {key: value.lower() if value in ("True", "False") else value for key, value in query.items()}
        if fixed != query:
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.with_query(fixed))
        return await super().__call__(raw_request)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.action in (kmock.action.CREATE, kmock.action.UPDATE) and isinstance(request.data, dict):
            self.revision += 1
            request.data.setdefault("metadata", {})["resourceVersion"] = str(self.revision)
        elif request.action == kmock.action.DELETE and request.resource is not None:
            key = (request.resource, request.namespace, request.name or "")
            if key in self.objects and not self.objects[key].deleted:
                self.revision += 1
                self.objects[key].patch({"metadata": {"resourceVersion": str(self.revision)}})
        return await super()._handle(request)

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        answer: Any = await super()._serve_list(request)
        answer["metadata"]["resourceVersion"] = str(self.revision)
        answer.update(apiVersion="discovery.k8s.io/v1", kind="EndpointSliceList")
        return answer  # type: ignore[no-any-return]

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        yield b""  # the headers go out at once, as the API server sends them
        since = _version(request.params.get("resourceVersion"))
        if since is not None and since < self.expired_before:
            yield {"type": "ERROR", "object": _status(410, "Expired", f"too old resource version: {since}")}
            return
        timeout = _version(request.params.get("timeoutSeconds"))
        deadline = asyncio.get_running_loop().time() + (timeout if timeout is not None else 3600)
        assert request.resource is not None
        bus = self._buses[request.resource]
        marker = await bus.mark()  # before the snapshot: nothing written in between is lost
        events: Any = bus.stream(since=marker)
        self.open_watches += 1
        try:
            for (resource, namespace, _), obj in list(self.objects.items()):
                ours = resource == request.resource and namespace == request.namespace and not obj.deleted
                if ours and self._newer(obj.raw, since):
                    yield {"type": "ADDED", "object": obj.raw}
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                try:
                    event = await asyncio.wait_for(anext(events), max(remaining, 0))
                except TimeoutError:
                    return
                if event.get("type") == _END:
                    return
                if event.get("type") == "BOOKMARK":
                    yield event
                    continue
                metadata = event.get("object", {}).get("metadata", {})
                if metadata.get("namespace") == request.namespace and self._newer(event["object"], since):
                    yield event
        finally:
            self.open_watches -= 1
            await events.aclose()
            with contextlib.suppress(ValueError):
                await bus.unmark(marker)

    @staticmethod
    def _newer(obj: dict[str, Any], since: int | None) -> bool:
        version = _version(obj.get("metadata", {}).get("resourceVersion"))
        return since is None or version is None or version > since

    async def _broadcast(self, event: dict[str, Any]) -> None:
        for bus in list(self._buses.values()):
            await bus.put(event)

    async def bookmark(self) -> str:
        """Move the resourceVersion on (as writes elsewhere would) and send it to every watch as a bookmark."""
        self.revision += 10
        version = str(self.revision)
        await self._broadcast(
            {
                "type": "BOOKMARK",
                "object": {
                    "kind": "EndpointSlice",
                    "apiVersion": "discovery.k8s.io/v1",
                    "metadata": {"resourceVersion": version},
                },
            }
        )
        return version

    async def end_watches(self) -> None:
        """End every open watch normally (its timeout ran out)."""
        await self._broadcast({"type": _END})

    def expire(self) -> None:
        """Compact the history: every resourceVersion handed out so far is too old to watch from."""
        self.revision += 10
        self.expired_before = self.revision

    def requests_of(self, kind: str) -> list[dict[str, str]]:
        """The queries of the ``list`` or ``watch`` requests for EndpointSlices, oldest first."""
        return [
            query
            for method, path, query in self.log
            if method == "GET"
            and path.endswith("/endpointslices")
            and (query.get("watch") == "True") == (kind == "watch")
        ]


# ------------------------------------------------------------------------------------------------- slices


def endpoint(
    address: str = "127.0.0.1",
    *,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
    zone: str | None = None,
    pod: str | None = None,
    node: str | None = None,
) -> dict[str, Any]:
    """One entry of a slice's ``endpoints``; a condition given as None is left out (unset)."""
    given = (("ready", ready), ("serving", serving), ("terminating", terminating))
    conditions = {key: value for key, value in given if value is not None}
    entry: dict[str, Any] = {"addresses": [address], "conditions": conditions}
    if zone is not None:
        entry["zone"] = zone
    if pod is not None:
        entry["targetRef"] = {"kind": "Pod", "namespace": "default", "name": pod}
    if node is not None:
        entry["nodeName"] = node
    return entry


def endpoint_slice(
    name: str,
    service: str,
    port: int,
    endpoints: list[dict[str, Any]],
    *,
    port_name: str | None = "http",
    address_type: str | None = "IPv4",
    app_protocol: str | None = None,
    namespace: str = "default",
) -> dict[str, Any]:
    """An EndpointSlice of ``service`` as the EndpointSlice controller writes it."""
    port_entry: dict[str, Any] = {"name": port_name, "port": port, "protocol": "TCP"}
    if app_protocol is not None:
        port_entry["appProtocol"] = app_protocol
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "ports": [port_entry],
        "endpoints": endpoints,
    }


class _QuickStopServer(aiohttp.test_utils.RawTestServer):
    """kmock's aiohttp test server, but stopping within a second even while a watch is being served."""

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> aiohttp.web.ServerRunner:
        server = aiohttp.web.Server(self._handler, loop=self._loop, debug=debug, **kwargs)
        return aiohttp.web.ServerRunner(server, debug=debug, shutdown_timeout=STOP_TIMEOUT, **kwargs)


class Cluster:
    """The API server of one test: write slices over HTTP (as the controller would), control its faults."""

    def __init__(self, api: ApiServer, kubeconfig_dir: Path, namespace: str = "default") -> None:
        self.api = api
        self.namespace = namespace
        self.kubeconfig_dir = kubeconfig_dir
        self.server: kmock.Server | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Serve on 127.0.0.1: the first time at an ephemeral port, afterwards at the same port again."""
        self.server = kmock.Server(self.api, port=self.port, server_cls=_QuickStopServer)
        await self.server.__aenter__()
        self.port = self.server.port

    async def stop(self) -> None:
        """Stop serving: connections are refused until ``start``."""
        if self.server is not None:
            server, self.server = self.server, None
            await self.api.end_watches()
            await server.__aexit__(None, None, None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return write_kubeconfig(self.kubeconfig_dir / "kubeconfig", self.url)

    def _path(self, name: str | None = None) -> str:
        path = SLICES_PATH.format(namespace=self.namespace)
        return f"{path}/{name}" if name else path

    @property
    def _client(self) -> aiohttp.ClientSession:
        assert self.server is not None, "the API server is stopped"
        return self.server.client

    async def create(self, body: dict[str, Any]) -> None:
        async with self._client.post(self._path(), json=body) as response:
            assert response.status == 200, await response.text()

    async def patch(self, name: str, changes: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self._client.patch(self._path(name), data=json.dumps(changes), headers=headers) as response:
            assert response.status == 200, await response.text()

    async def delete(self, name: str) -> None:
        async with self._client.delete(self._path(name)) as response:
            assert response.status == 200, await response.text()

    def change_quietly(self, name: str, changes: dict[str, Any]) -> None:
        """Change a slice in the store without a watch event (an event lost to compaction, or made while the
        server was unreachable)."""
        self.api.revision += 1
        changes = {**changes, "metadata": {"resourceVersion": str(self.api.revision)}}
        self.api.objects[SLICES, self.namespace, name].patch(changes)


def write_kubeconfig(path: Path, server_url: str) -> Path:
    """A kubeconfig (JSON is valid YAML) with one cluster at ``server_url`` and no credentials."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server_url}}],
        "users": [{"name": "test", "user": {}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "default"}}],
        "current-context": "test",
    }
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def running_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """An ``ApiServer`` on 127.0.0.1 at an ephemeral port; ``cluster.kubeconfig`` points at it."""
    async with ApiServer() as api:
        cluster = Cluster(api, tmp_path)
        await cluster.start()
        try:
            yield cluster
        finally:
            await cluster.stop()
