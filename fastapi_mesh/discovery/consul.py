"""Consul discovery: blocking queries on ``/v1/health/service/<name>?passing`` keep each watched service
current the moment Consul's catalog changes; with ``discovery.register`` this service also registers itself
with the local agent (an HTTP check on ``/health/ready``) at start-up and deregisters at shutdown.

>>> from fastapi_mesh.settings import DiscoveryConfig, MtlsConfig
>>> config = DiscoveryConfig(backend="consul", consul_url="http://127.0.0.1:8500", tags=["v2"])
>>> consul = ConsulDiscovery(config, service_name="api-gateway", mtls=MtlsConfig())
>>> consul.query_params(0)
[('passing', '1'), ('index', '0'), ('wait', '300s'), ('tag', 'v2')]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx

from ..clock import Clock
from ..security.files import FollowedKeyPair, client_tls_context
from ..settings import DiscoveryConfig, MtlsConfig
from .base import Endpoint, url_host
from .sync import Answer, BackgroundDiscovery, MalformedAnswer, clip, short_error

__all__ = ["ConsulDiscovery", "ConsulError", "consul_ssl_context", "go_duration"]

logger = logging.getLogger("fastapi_mesh.discovery")

#: Consul stretches a blocking query's ``wait`` by up to ``wait / 16``; the read timeout allows for that
#: plus this margin, so a query that waits out its full time is never taken for a failure.
READ_TIMEOUT_MARGIN = 5.0
#: Connecting to the agent (it normally runs on the same host).
CONNECT_TIMEOUT = 5.0
#: Registration at start-up: the agent is local, so this is generous; start-up never waits longer.
REGISTER_TIMEOUT = 5.0
#: Deregistration at shutdown is best effort: Consul removes a registration whose check stays critical
#: (``deregister_critical_after``) anyway.
DEREGISTER_TIMEOUT = 2.0
#: A blocking query answering with the index it was given sooner than this (or half of ``consul_wait``, if
#: less) did not block: the next query waits, backing off while that goes on, so a misbehaving server
#: cannot make the loop spin.
QUICK_ANSWER = 1.0
#: Queries for one service start at least this far apart even while its index keeps moving (Consul's docs ask
#: clients to rate-limit their blocking loops); a change is still applied the moment its answer comes.
MIN_QUERY_INTERVAL = 0.05
#: Entries named in one "skipped" warning.
_SKIPPED_NAMED = 5


class ConsulError(RuntimeError):
    """Consul answered, but not with success: the status and Consul's own words (never the token)."""


class _Cursor(NamedTuple):
    """What one service's next query needs: the index to block on, and how many quick unchanged answers
    (a server that does not block) have come in a row."""

    consul_index: int
    quick: int = 0


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration, the form Consul reads (``wait``, check intervals).

    >>> go_duration(300.0), go_duration(0.25), go_duration(10)
    ('300s', '250ms', '10s')
    """
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def consul_ssl_context(config: DiscoveryConfig, mtls: MtlsConfig) -> ssl.SSLContext:
    """The TLS context for an ``https`` ``consul_url``: verified against ``consul_ca_path``, else the mesh
    CA when mTLS is on, else the system's store; with mTLS on, the mesh's client certificate is presented.

    >>> from fastapi_mesh.settings import DiscoveryConfig, MtlsConfig
    >>> consul_ssl_context(DiscoveryConfig(), MtlsConfig()).verify_mode.name
    'CERT_REQUIRED'
    """
    cafile = config.consul_ca_path or (mtls.ca_path if mtls.enabled else None)
    field = "discovery.consul_ca_path" if config.consul_ca_path else "mtls.ca_path"
    return client_tls_context(mtls, cafile=cafile, ca_setting=field, peer="Consul")


class ConsulDiscovery(BackgroundDiscovery):
    """Endpoints from Consul's health API, kept current by blocking queries; optional self-registration.

    Each watched service has one query in flight (``index`` + ``wait``), so a registration, deregistration
    or check turning critical reaches the balancer as soon as Consul answers. Only entries whose checks all
    pass, and that carry every tag in ``discovery.tags``, are used. Service meta ``scheme`` (``https``),
    ``weight``, ``version`` and ``zone`` (else node meta ``zone``) shape each endpoint; the other string
    pairs of service meta become its metadata. An entry with an unusable address or port is skipped with
    one warning; an answer that cannot be read at all keeps the last good set.

    >>> from fastapi_mesh import MeshSettings
    >>> settings = MeshSettings(service_name="api-gateway", discovery={
    ...     "backend": "consul", "consul_url": "http://127.0.0.1:8500", "consul_wait": "30s",
    ...     "register": True, "service_address": "10.0.0.7", "service_port": 8080})
    >>> consul = ConsulDiscovery(settings.discovery, service_name="api-gateway", mtls=settings.mtls)
    >>> consul.registration()["Check"]["HTTP"]
    'http://10.0.0.7:8080/health/ready'
    >>> consul.service_id == f"api-gateway-{socket.gethostname()}-8080"
    True
    """

    backend = "consul"

    def __init__(
        self,
        config: DiscoveryConfig,
        *,
        service_name: str,
        mtls: MtlsConfig,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(config, clock=clock, rng=rng, wall=wall)
        self.service_name = service_name
        self.mtls = mtls
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        #: Over https with mTLS: the client certificate of Consul's connections, following the files.
        self._followed: FollowedKeyPair | None = None
        self._register_task: asyncio.Task[None] | None = None
        #: A registration was sent to the agent since ``open`` (so ``close`` deregisters).
        self._registration_sent = False
        #: Per service, the entries last skipped as unusable (warned about once per change).
        self._skipped: dict[str, frozenset[str]] = {}
        wait = config.consul_wait
        self._wait_param = go_duration(wait)
        self._quick = min(QUICK_ANSWER, wait / 2)
        self._timeout = httpx.Timeout(CONNECT_TIMEOUT, read=wait + wait / 16 + READ_TIMEOUT_MARGIN)

    # ------------------------------------------------------------------------------------ the queries

    def query_params(self, index: int) -> list[tuple[str, str]]:
        """The query string of a health query blocking on ``index`` (0: answer at once)."""
        params = [("passing", "1"), ("index", str(index)), ("wait", self._wait_param)]
        if self.config.datacenter:
            params.append(("dc", self.config.datacenter))
        params.extend(("tag", tag) for tag in self.config.tags)
        return params

    async def fetch(self, service: str, cursor: Any) -> Answer:
        previous = cursor if isinstance(cursor, _Cursor) else _Cursor(0)
        http = self._client()
        started = self.clock.now()
        params = tuple(self.query_params(previous.consul_index))
        response = await http.get(f"/v1/health/service/{quote(service, safe='')}", params=params)
        elapsed = self.clock.now() - started
        if not response.is_success:
            raise ConsulError(f"Consul answered {response.status_code}: {_body(response)}")
        index = _read_index(response)
        try:
            entries = json.loads(response.content)
        except ValueError:
            raise MalformedAnswer(f"Consul's answer is not JSON: {_body(response)}") from None
        endpoints = self._endpoints(service, entries)
        if not endpoints and response.headers.get("x-consul-results-filtered-by-acls") == "true":
            raise ConsulError(
                "Consul's ACLs filtered out every entry: the token (discovery.consul_token) lacks "
                f"service:read or node:read for {service!r}"
            )
        # Consul's rules for the next index: below 1 it would never block (1 is always safe); gone backwards
        # (a restored snapshot, say) the blocking loop starts over from 0.
        if index < 1:
            next_index = 1
        elif index < previous.consul_index:
            next_index = 0
        else:
            next_index = index
        # Asked to block, it answered at once without moving forward: the server is not blocking. Back off
        # (more each time in a row) so it cannot make this loop spin.
        spun = previous.consul_index > 0 and index <= previous.consul_index and elapsed < self._quick
        quick = previous.quick + 1 if spun else 0
        delay = self.backoff(previous.quick) if spun else max(0.0, MIN_QUERY_INTERVAL - elapsed)
        if previous.consul_index > 0 and index == previous.consul_index:
            return Answer(None, _Cursor(next_index, quick), delay)  # nothing changed
        return Answer(endpoints, _Cursor(next_index, quick), delay)

    def _endpoints(self, service: str, entries: Any) -> list[Endpoint]:
        if not isinstance(entries, list):
            raise MalformedAnswer(f"Consul's answer is a JSON {type(entries).__name__}, not a list of entries")
        wanted = self.config.tags
        found: dict[str, Endpoint] = {}
        skipped: list[str] = []
        for entry in entries:
            node, svc, checks = _shape(entry)
            tags = svc.get("Tags") or []
            if not isinstance(tags, list):
                skipped.append(f"{svc.get('ID') or '?'} (Tags is not a list)")
                continue
            if any(tag not in tags for tag in wanted):
                continue  # also checked here: every tag must match, whatever the server made of ``tag=``
            if any(isinstance(check, Mapping) and check.get("Status") != "passing" for check in checks):
                continue
            try:
                endpoint = _endpoint(node, svc)
            except ValueError as exc:
                skipped.append(f"{svc.get('ID') or '?'} ({exc})")
                continue
            found[endpoint.url] = endpoint
        self._note_skipped(service, skipped, len(entries))
        if entries and not found and skipped:
            raise MalformedAnswer(f"no entry of {service!r} is usable: {'; '.join(skipped[:_SKIPPED_NAMED])}")
        return [found[url] for url in sorted(found)]

    def _note_skipped(self, service: str, skipped: list[str], total: int) -> None:
        now = frozenset(skipped)
        if now == self._skipped.get(service, frozenset()):
            return
        self._skipped[service] = now
        if now:
            named = "; ".join(sorted(now)[:_SKIPPED_NAMED])
            more = f" and {len(now) - _SKIPPED_NAMED} more" if len(now) > _SKIPPED_NAMED else ""
            logger.warning(
                "discovery (consul): skipping %d of %d entries of %r that cannot be used: %s%s",
                len(now),
                total,
                service,
                named,
                more,
            )

    # ------------------------------------------------------------------------------ self-registration

    @property
    def service_id(self) -> str:
        """This service's registration ID: ``discovery.service_id``, else ``<name>-<host name>-<port>``."""
        config = self.config
        return config.service_id or f"{self.service_name}-{socket.gethostname()}-{config.service_port}"

    def _address(self) -> str:
        return self.config.service_address or socket.gethostname()

    def registration(self) -> dict[str, Any]:
        """The body of ``PUT /v1/agent/service/register`` for this service."""
        config = self.config
        address = self._address()
        scheme = "https" if self.mtls.enabled else "http"
        check: dict[str, Any] = {
            "HTTP": f"{scheme}://{url_host(address)}:{config.service_port}/health/ready",
            "Interval": go_duration(config.check_interval),
            "DeregisterCriticalServiceAfter": go_duration(config.deregister_critical_after),
        }
        if self.mtls.enabled:
            check["TLSSkipVerify"] = False
        return {
            "ID": self.service_id,
            "Name": self.service_name,
            "Address": address,
            "Port": config.service_port,
            "Tags": list(config.tags),
            "Meta": dict(config.service_meta),
            "Check": check,
        }

    async def _register(self) -> None:
        self._registration_sent = True
        response = await self._client().put(
            "/v1/agent/service/register", json=self.registration(), timeout=REGISTER_TIMEOUT
        )
        if not response.is_success:
            raise ConsulError(f"Consul answered {response.status_code}: {_body(response)}")

    async def _register_until_done(self) -> None:
        attempt = 0
        while True:
            await self.clock.sleep(self.backoff(attempt))
            attempt += 1
            try:
                await self._register()
            except asyncio.CancelledError:
                raise
            except Exception:
                continue
            logger.info(
                "discovery (consul): registered %r as %r after %d retries", self.service_name, self.service_id, attempt
            )
            return

    # ------------------------------------------------------------------------------------ open, close

    async def open(self) -> None:
        config = self.config
        headers = {}
        if config.consul_token is not None:
            headers["X-Consul-Token"] = config.consul_token.get_secret_value()
        verify: ssl.SSLContext | bool = True
        self._followed = None
        if self._transport is None and config.consul_url.startswith("https:"):
            verify = consul_ssl_context(config, self.mtls)
            if self.mtls.enabled:  # the client certificate rotates: new connections to Consul follow it

                def build() -> ssl.SSLContext:
                    return consul_ssl_context(config, self.mtls)

                cafile = config.consul_ca_path or self.mtls.ca_path
                self._followed = FollowedKeyPair(verify, build, self.mtls, cafile, clock=self.clock.now, peer="Consul")
        self._http = httpx.AsyncClient(
            base_url=config.consul_url,
            headers=headers,
            verify=verify,
            transport=self._transport,
            trust_env=False,
            follow_redirects=False,
            timeout=self._timeout,
            # One blocking query per watched service is in flight at once.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        )
        self._registration_sent = False
        if not config.register:
            return
        try:
            await self._register()
        except Exception as exc:
            # Start-up goes on: the agent may come up later, and until the registration succeeds nobody
            # is sent here by Consul; calls this service makes do not depend on it.
            logger.error(
                "discovery (consul): registering %r as %r failed: %s; retrying in the background",
                self.service_name,
                self.service_id,
                short_error(exc),
            )
            self._register_task = asyncio.create_task(self._register_until_done(), name="mesh-consul-register")
        else:
            logger.info("discovery (consul): registered %r as %r", self.service_name, self.service_id)

    async def close(self) -> None:
        task, self._register_task = self._register_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        http, self._http = self._http, None
        if http is None:
            return
        try:
            if self._registration_sent:
                await self._deregister(http)
        finally:
            self._registration_sent = False
            await http.aclose()

    async def _deregister(self, http: httpx.AsyncClient) -> None:
        service_id = self.service_id
        try:
            response = await http.put(
                f"/v1/agent/service/deregister/{quote(service_id, safe='')}", timeout=DEREGISTER_TIMEOUT
            )
        except Exception as exc:
            logger.warning(
                "discovery (consul): deregistering %r failed: %s; Consul removes it once its check has been "
                "critical for %gs",
                service_id,
                short_error(exc),
                self.config.deregister_critical_after,
            )
            return
        if response.is_success:
            logger.info("discovery (consul): deregistered %r", service_id)
        else:
            logger.warning(
                "discovery (consul): deregistering %r: Consul answered %d: %s",
                service_id,
                response.status_code,
                _body(response),
            )

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("the Consul backend is not started")
        if self._followed is not None:
            self._followed.refresh()
        return self._http


# ------------------------------------------------------------------------------------------- reading


def _read_index(response: httpx.Response) -> int:
    raw = response.headers.get("x-consul-index")
    if raw is None:
        raise MalformedAnswer("Consul's answer has no X-Consul-Index header")
    try:
        index = int(raw.strip())
    except ValueError:
        raise MalformedAnswer(f"Consul's X-Consul-Index {raw[:40]!r} is not a number") from None
    if index < 0:
        raise MalformedAnswer(f"Consul's X-Consul-Index {index} is negative")
    return index


def _shape(entry: Any) -> tuple[Mapping[str, Any], Mapping[str, Any], Sequence[Any]]:
    """An entry's Node, Service and Checks, or ``MalformedAnswer`` when it is not shaped like one."""
    if not isinstance(entry, Mapping):
        raise MalformedAnswer(f"an entry of Consul's answer is a JSON {type(entry).__name__}, not an object")
    node, svc, checks = entry.get("Node"), entry.get("Service"), entry.get("Checks") or []
    if not isinstance(node, Mapping) or not isinstance(svc, Mapping):
        raise MalformedAnswer("an entry of Consul's answer lacks its Node or Service object")
    if not isinstance(checks, list):
        raise MalformedAnswer("an entry of Consul's answer has Checks that are not a list")
    return node, svc, checks


def _endpoint(node: Mapping[str, Any], svc: Mapping[str, Any]) -> Endpoint:
    """One entry as an endpoint; ``ValueError`` says why it cannot be one."""
    address = svc.get("Address") or node.get("Address")
    if not isinstance(address, str) or not address:
        raise ValueError("no address")
    port = svc.get("Port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port {port!r}")
    meta = svc.get("Meta") or {}
    node_meta = node.get("Meta") or {}
    if not isinstance(meta, Mapping) or not isinstance(node_meta, Mapping):
        raise ValueError("Meta is not an object")
    metadata = {k: v for k, v in meta.items() if isinstance(k, str) and isinstance(v, str)}
    scheme = "https" if metadata.get("scheme") == "https" else "http"
    if "weight" in metadata:
        try:
            weight = int(metadata["weight"])
        except ValueError:
            raise ValueError(f"meta weight {metadata['weight']!r}") from None
    else:
        weights = svc.get("Weights")
        passing = weights.get("Passing") if isinstance(weights, Mapping) else None
        weight = passing if isinstance(passing, int) and not isinstance(passing, bool) else 1
    zone = metadata.get("zone") or node_meta.get("zone")
    return Endpoint(
        f"{scheme}://{url_host(address)}:{port}",
        weight=weight,
        metadata=metadata,
        zone=zone if isinstance(zone, str) and zone else None,
    )


def _body(response: httpx.Response) -> str:
    return clip(response.text.strip().replace("\n", " ")) or "(no body)"
