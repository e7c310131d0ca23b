"""Kubernetes EndpointSlices (``discovery.k8s.io/v1``): list, then watch, per service, through kubernetes-asyncio.

Each watched service has a task of its own. It lists the slices labelled ``kubernetes.io/service-name=<service>``
in ``discovery.namespace``, publishes the merged set, then watches from the list's ``resourceVersion``, applying
every ``ADDED``/``MODIFIED``/``DELETED`` event at once. A watch that ends (the server's timeout) resumes from the
last ``resourceVersion`` seen (bookmarks included); ``410 Gone`` starts again from a fresh list; any other error
keeps the last good set, marks it stale and relists after a jittered backoff.

Which endpoints of a slice are routed to: those whose ``conditions`` say ``ready`` (unset counts as ready) and
not ``terminating`` (unset: not terminating), and not ``serving: false``. A terminating endpoint takes no new
calls; calls already in flight to it finish. Of an endpoint's ``addresses`` the first is used: the API declares
them fungible (the same pod), so using all would count one pod several times.

>>> from fastapi_mesh.settings import DiscoveryConfig
>>> discovery = KubernetesDiscovery(DiscoveryConfig(backend="kubernetes", namespace="shop", port_name="http"))
>>> discovery.backend, discovery.label_selector("cart")
('kubernetes', 'kubernetes.io/service-name=cart')
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from ..clock import Clock
from ..settings import DNS_LABEL, DiscoveryConfig
from .base import DiscoveryConfigError, Endpoint
from .sync import MAX_WATCHED_SERVICES, BackgroundDiscovery, MalformedAnswer

__all__ = ["KubernetesAPIError", "KubernetesDiscovery"]

logger = logging.getLogger("fastapi_mesh.discovery")

#: The label the EndpointSlice controller puts on every slice of a Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: Seconds the API server is asked to hold one watch open; each watch asks for between this and twice this
#: (as client-go does), so that many clients' watches do not all end at once.
WATCH_TIMEOUT = 300.0
#: A list call that has not answered in this many seconds has failed.
LIST_TIMEOUT = 30.0
#: Connecting to the API server.
CONNECT_TIMEOUT = 10.0
#: How long past its own timeout a watch may stay silent before the connection counts as lost.
WATCH_READ_SLACK = 30.0
#: A watch that ends sooner than this without a single event is not resumed at once, but after a backoff.
SHORT_WATCH = 1.0
#: Kubernetes Service names are DNS labels; anything else is not asked for (it would go into a label selector).
_SERVICE_NAME = DNS_LABEL  # a Service name is a DNS label
_ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
_SLICE_EVENTS = ("ADDED", "MODIFIED", "DELETED")
_HTTP_GONE = 410
_ERROR_BODY_CHARS = 200


class KubernetesAPIError(RuntimeError):
    """The API server answered with an error (an HTTP status, or an ``ERROR`` event in a watch).

    >>> str(KubernetesAPIError(403, "Forbidden", "endpointslices is forbidden"))
    'Kubernetes API answered 403 Forbidden: endpointslices is forbidden'
    """

    def __init__(self, status: int, reason: str | None = None, message: str | None = None) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        text = f"Kubernetes API answered {status}"
        if reason:
            text += f" {reason}"
        if message:
            text += f": {message}"
        super().__init__(text)


class _Gone(Exception):
    """The resourceVersion to go on from is too old (410 Gone): start again from a fresh list."""


class _Slices:
    """One service's view of its EndpointSlices: the last good endpoints of each slice, by slice name."""

    __slots__ = ("bad", "endpoints", "skipped", "version")

    def __init__(self) -> None:
        self.endpoints: dict[str, tuple[Endpoint, ...]] = {}
        #: Where the next watch starts (the list's, then the newest event's or bookmark's resourceVersion).
        self.version: str | None = None
        #: Why a slice contributes no endpoints (logged once per slice and reason).
        self.skipped: dict[str, str] = {}
        #: Slices whose newest version was malformed (their last good endpoints are kept).
        self.bad: set[str] = set()

    def merged(self) -> tuple[Endpoint, ...]:
        """Every slice's endpoints, in slice-name order; an address in two slices (as happens while the
        controller moves endpoints between slices) counts once."""
        seen: set[str] = set()
        merged: list[Endpoint] = []
        for name in sorted(self.endpoints):
            for endpoint in self.endpoints[name]:
                if endpoint.url not in seen:
                    seen.add(endpoint.url)
                    merged.append(endpoint)
        return tuple(merged)


class KubernetesDiscovery(BackgroundDiscovery):
    """Endpoints from the Kubernetes API's EndpointSlices, kept current by a watch per service.

    Configured in ``open`` from the in-cluster service account (when ``KUBERNETES_SERVICE_HOST`` is set and no
    ``discovery.kubeconfig`` is given), else from ``discovery.kubeconfig`` (``null``: ``$KUBECONFIG`` or
    ``~/.kube/config``). ``api_client`` replaces that with a configured ``kubernetes_asyncio.client.ApiClient``,
    which is then left open at ``close``.

    >>> from fastapi_mesh.settings import DiscoveryConfig
    >>> KubernetesDiscovery(DiscoveryConfig(backend="kubernetes", kubeconfig="/etc/mesh/kubeconfig")).sync_status()
    {}
    """

    backend = "kubernetes"

    def __init__(
        self,
        config: DiscoveryConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
        api_client: k8s_client.ApiClient | None = None,
    ) -> None:
        super().__init__(config, clock=clock, rng=rng, wall=wall)
        self._given_client = api_client
        self._client: k8s_client.ApiClient | None = None
        self._api: Any = None

    def label_selector(self, service: str) -> str:
        """The label selector that picks ``service``'s EndpointSlices."""
        return f"{SERVICE_NAME_LABEL}={service}"

    # ------------------------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._given_client is not None:
            self._client = self._given_client
        else:
            self._client = k8s_client.ApiClient(await self._configuration())
        api_type: Any = k8s_client.DiscoveryV1Api
        self._api = api_type(self._client)

    async def close(self) -> None:
        client, self._client, self._api = self._client, None, None
        if client is not None and client is not self._given_client:
            await client.close()

    async def _configuration(self) -> k8s_client.Configuration:
        configuration_type: Any = k8s_client.Configuration
        configuration: Any = configuration_type()
        kubeconfig = self.config.kubeconfig
        try:
            if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                load_incluster: Any = k8s_config.load_incluster_config
                load_incluster(client_configuration=configuration)
            else:
                load_kubeconfig: Any = k8s_config.load_kube_config
                await load_kubeconfig(config_file=kubeconfig, client_configuration=configuration, persist_config=False)
        except Exception as exc:
            where = (
                f"discovery.kubeconfig (MESH_DISCOVERY__KUBECONFIG) {kubeconfig!r}"
                if kubeconfig is not None
                else "the in-cluster service account"
                if os.environ.get("KUBERNETES_SERVICE_HOST")
                else "the default kubeconfig ($KUBECONFIG or ~/.kube/config; set discovery.kubeconfig, "
                "MESH_DISCOVERY__KUBECONFIG)"
            )
            raise DiscoveryConfigError(f"discovery backend 'kubernetes': cannot load {where}: {exc}") from None
        # Every watched service holds one connection open for its watch: the pool must not run out first.
        configuration.connection_pool_maxsize = MAX_WATCHED_SERVICES
        result: k8s_client.Configuration = configuration
        return result

    # ----------------------------------------------------------------------------------------- sync

    async def run(self, service: str) -> None:
        """List, then watch, until cancelled; relist after 410 Gone and (with backoff) after errors."""
        if not _SERVICE_NAME.match(service):
            self.failed(service, ValueError(f"{service!r} is not a Kubernetes service name; it is not watched"))
            return
        slices = _Slices()
        attempt = 0
        gone_in_a_row = 0
        while True:
            try:
                await self._list(service, slices)
                while True:
                    if await self._watch(service, slices):
                        attempt = gone_in_a_row = 0
                    else:  # it ended at once and said nothing: do not spin on a server that does that
                        await self.clock.sleep(self.backoff(attempt))
                        attempt += 1
            except asyncio.CancelledError:
                raise
            except _Gone:
                gone_in_a_row += 1
                if gone_in_a_row == 1:
                    logger.debug("discovery (%s): resourceVersion of %r expired; listing again", self.backend, service)
                    continue
                self.failed(service, KubernetesAPIError(_HTTP_GONE, "Gone", "the watch expires as soon as it starts"))
            except Exception as exc:
                self.failed(service, exc)
            await self.clock.sleep(self.backoff(attempt))
            attempt += 1

    async def _list(self, service: str, slices: _Slices) -> None:
        response = await self._api.list_namespaced_endpoint_slice(
            self.config.namespace,
            label_selector=self.label_selector(service),
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(total=LIST_TIMEOUT, sock_connect=CONNECT_TIMEOUT),
        )
        try:
            body = await response.read()
        finally:
            response.release()
        _check_status(response.status, response.reason, body)
        try:
            data = json.loads(body)
        except ValueError:
            raise MalformedAnswer("the EndpointSlice list is not JSON") from None
        if not isinstance(data, dict):
            raise MalformedAnswer("the EndpointSlice list is not a JSON object")
        items = data.get("items") or []
        if not isinstance(items, list):
            raise MalformedAnswer("the EndpointSlice list's items is not a list")
        metadata = data.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        previous = slices.endpoints
        slices.endpoints = {}
        slices.bad = set()
        problem: MalformedAnswer | None = None
        for item in items:
            try:
                name = _slice_name(item)
            except MalformedAnswer as exc:
                problem = problem or exc
                continue
            if not _labelled_for(item, service):
                continue
            try:
                slices.endpoints[name] = self._slice_endpoints(service, name, item, slices)
            except MalformedAnswer as exc:
                problem = problem or exc
                slices.bad.add(name)
                if name in previous:
                    slices.endpoints[name] = previous[name]
        slices.version = version if isinstance(version, str) and version else None
        slices.skipped = {name: why for name, why in slices.skipped.items() if name in slices.endpoints}
        self.succeeded(service, slices.merged())
        if problem is not None:
            self.failed(service, problem)

    async def _watch(self, service: str, slices: _Slices) -> bool:
        """One watch, until the server ends it. False when it ended at once without a single event."""
        timeout = WATCH_TIMEOUT * (1.0 + self.rng.random())
        response = await self._api.list_namespaced_endpoint_slice(
            self.config.namespace,
            label_selector=self.label_selector(service),
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=slices.version,
            timeout_seconds=int(timeout),
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT, sock_read=timeout + WATCH_READ_SLACK),
        )
        events = 0
        started = self.clock.now()
        try:
            if response.status != 200:
                _check_status(response.status, response.reason, await response.read())
            async for line in response.content:
                if line.strip():
                    self._apply(service, slices, line)
                    events += 1
        finally:
            response.close()
        return events > 0 or self.clock.now() - started >= SHORT_WATCH

    def _apply(self, service: str, slices: _Slices, line: bytes) -> None:
        """One watch event: update the slice it names and publish the merged set."""
        try:
            event = json.loads(line)
        except ValueError:
            raise MalformedAnswer("a watch event is not JSON") from None
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise MalformedAnswer("a watch event has no object")
        kind = event.get("type")
        obj: dict[str, Any] = event["object"]
        if kind == "ERROR":
            code = obj.get("code")
            if code == _HTTP_GONE:
                raise _Gone
            raise KubernetesAPIError(
                code if isinstance(code, int) else 500, _text(obj.get("reason")), _text(obj.get("message"))
            )
        metadata = obj.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        if kind == "BOOKMARK":
            if isinstance(version, str) and version:
                slices.version = version
            return
        if kind not in _SLICE_EVENTS:
            raise MalformedAnswer(f"unknown watch event type {kind!r}")
        name = _slice_name(obj)
        if isinstance(version, str) and version:
            slices.version = version
        if kind == "DELETED" or not _labelled_for(obj, service):
            slices.endpoints.pop(name, None)
            slices.bad.discard(name)
            slices.skipped.pop(name, None)
        else:
            try:
                endpoints = self._slice_endpoints(service, name, obj, slices)
            except MalformedAnswer as exc:
                slices.bad.add(name)
                self.failed(service, exc)  # this slice keeps its last good endpoints
                return
            slices.bad.discard(name)
            slices.endpoints[name] = endpoints
        self.succeeded(service, slices.merged())

    # ----------------------------------------------------------------------------------- conversion

    def _slice_endpoints(
        self, service: str, name: str, obj: Mapping[str, Any], slices: _Slices
    ) -> tuple[Endpoint, ...]:
        """The routable endpoints of one slice. Raises ``MalformedAnswer`` for a slice that breaks the schema;
        a well-formed slice with nothing usable (no matching port, say) gives none and is logged once."""
        endpoints, skipped = _convert(name, obj, self.config.port_name)
        if skipped is None:
            slices.skipped.pop(name, None)
        elif slices.skipped.get(name) != skipped:
            slices.skipped[name] = skipped
            logger.warning(
                "discovery (%s): EndpointSlice %r of %r gives no endpoints: %s", self.backend, name, service, skipped
            )
        return endpoints


def _check_status(status: int, reason: str | None, body: bytes) -> None:
    if 200 <= status < 300:
        return
    if status == _HTTP_GONE:
        raise _Gone
    message: str | None = None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):  # a Status object
        message = _text(data.get("message"))
    elif body:
        message = body[:_ERROR_BODY_CHARS].decode("utf-8", "replace").strip() or None
    raise KubernetesAPIError(status, reason, message)


def _text(value: Any) -> str | None:
    return value[:_ERROR_BODY_CHARS] if isinstance(value, str) and value else None


def _slice_name(obj: Any) -> str:
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        raise MalformedAnswer("an EndpointSlice without metadata.name")
    return name


def _labelled_for(obj: Mapping[str, Any], service: str) -> bool:
    """Whether the slice carries ``service``'s label (checked here too: a slice relabelled away leaves)."""
    labels = obj["metadata"].get("labels")
    return isinstance(labels, dict) and labels.get(SERVICE_NAME_LABEL) == service


def _convert(name: str, obj: Mapping[str, Any], port_name: str | None) -> tuple[tuple[Endpoint, ...], str | None]:
    """A slice's routable endpoints, and why it gives none when it is well formed but unusable."""
    where = f"EndpointSlice {name!r}"
    address_type = obj.get("addressType")
    if not isinstance(address_type, str):
        raise MalformedAnswer(f"{where}: addressType missing")
    if address_type not in _ADDRESS_TYPES:
        return (), f"address type {address_type!r} is not supported"
    port, skipped = _pick_port(where, obj.get("ports"), port_name)
    if port is None:
        return (), skipped
    number = port.get("port")
    if number is None:
        return (), "its port has no number (all ports), so there is nothing to call"
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
        raise MalformedAnswer(f"{where}: port {number!r} is not a port number")
    scheme = "https" if port.get("appProtocol") == "https" else "http"
    entries = obj.get("endpoints") or []
    if not isinstance(entries, list):
        raise MalformedAnswer(f"{where}: endpoints is not a list")
    endpoints: list[Endpoint] = []
    for entry in entries:
        endpoint = _endpoint(where, entry, address_type, scheme, number)
        if endpoint is not None:
            endpoints.append(endpoint)
    return tuple(endpoints), None


def _pick_port(where: str, ports: Any, port_name: str | None) -> tuple[dict[str, Any] | None, str | None]:
    if ports is None:
        ports = []
    if not isinstance(ports, list) or not all(isinstance(p, dict) for p in ports):
        raise MalformedAnswer(f"{where}: ports is not a list of ports")
    if port_name is None:
        if len(ports) == 1:
            return ports[0], None
        return None, f"it has {len(ports)} ports and discovery.port_name is not set to choose one"
    for port in ports:
        if (port.get("name") or "") == port_name:  # an unnamed port (a Service's only port) is named ""
            return port, None
    names = ", ".join(repr(p.get("name") or "") for p in ports) or "none"
    return None, f"no port named {port_name!r} (its ports: {names})"


def _endpoint(where: str, entry: Any, address_type: str, scheme: str, port: int) -> Endpoint | None:
    if not isinstance(entry, dict):
        raise MalformedAnswer(f"{where}: an endpoint is not an object")
    addresses = entry.get("addresses")
    if not isinstance(addresses, list) or not addresses or not all(isinstance(a, str) for a in addresses):
        raise MalformedAnswer(f"{where}: an endpoint without addresses")
    conditions = entry.get("conditions") or {}
    if not isinstance(conditions, dict):
        raise MalformedAnswer(f"{where}: conditions is not an object")
    ready, serving, terminating = (conditions.get(key) for key in ("ready", "serving", "terminating"))
    if any(value is not None and not isinstance(value, bool) for value in (ready, serving, terminating)):
        raise MalformedAnswer(f"{where}: a condition is not true, false or unset")
    # Unset ready counts as ready and unset terminating as not terminating (the API's reading of nil).
    if ready is False or serving is False or terminating is True:
        return None
    zone = entry.get("zone")
    if zone is not None and not isinstance(zone, str):
        raise MalformedAnswer(f"{where}: zone is not a string")
    metadata: dict[str, str] = {}
    target = entry.get("targetRef")
    if isinstance(target, dict) and isinstance(target.get("name"), str) and target.get("kind", "Pod") == "Pod":
        metadata["pod"] = target["name"]
    node = entry.get("nodeName")
    if isinstance(node, str) and node:
        metadata["node"] = node
    address = addresses[0]
    host = f"[{address}]" if address_type == "IPv6" else address
    try:
        return Endpoint(f"{scheme}://{host}:{port}", zone=zone or None, metadata=metadata)
    except ValueError:
        raise MalformedAnswer(f"{where}: {address!r} is not an {address_type} address") from None
