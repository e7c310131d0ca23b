"""Kubernetes DNS discovery: the SRV records of a service's named port, or the A/AAAA records of a headless
service, looked up with dnspython's async resolver and re-resolved at their TTL.

Names, for service ``users`` (``namespace`` ``default``, ``cluster_domain`` ``cluster.local``)::

    port_name "http", protocol "tcp"   _http._tcp.users.default.svc.cluster.local.   SRV -> target:port
    port_name null (port 8080)         users.default.svc.cluster.local.             A/AAAA -> addr:8080

A service called ``users.payments`` is looked up in namespace ``payments``; a name with more dots (or a
trailing dot) is taken as the service's full DNS name.

>>> from fastapi_mesh.settings import DiscoveryConfig
>>> KubernetesDNSDiscovery(DiscoveryConfig(backend="kubernetes-dns")).query_name("users.payments")
'_http._tcp.users.payments.svc.cluster.local.'
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset

from ..clock import Clock
from ..settings import DNS_LABEL, DiscoveryConfig, split_nameserver
from .base import MAX_WEIGHT, Endpoint, url_host
from .sync import Answer, BackgroundDiscovery, MalformedAnswer

__all__ = ["KubernetesDNSDiscovery"]

#: Seconds one query to one nameserver may take before the next try.
DEFAULT_QUERY_TIMEOUT = 2.0
#: Seconds one lookup (every try, every nameserver) may take in all; then it fails (the set goes stale).
#: A TTL longer than this is not waited out in full (unless ``refresh_interval`` is longer still): a record
#: published with a TTL of a day must not hide a day of endpoint changes.
MAX_TTL_WAIT = 300.0
#: SRV targets resolved at once when the answer carries no addresses for them.
TARGET_LOOKUPS_AT_ONCE = 16
#: EDNS UDP payload size (the DNS flag day 2020 value): large SRV answers fit without a TCP retry.
EDNS_PAYLOAD = 1232

_LABEL = DNS_LABEL


class KubernetesDNSDiscovery(BackgroundDiscovery):
    """Endpoints from Kubernetes DNS (CoreDNS, kube-dns, or any server publishing the same records).

    With ``port_name`` set, each SRV record of the lowest priority value present (RFC 2782) gives an endpoint
    ``http://<target address>:<port>`` of weight ``min(SRV weight, 10000)`` (all weights 0: weight 1 each) and
    metadata ``{"target": <target host>}``; a port name ``https`` or ``https-...`` gives ``https`` endpoints.
    Target addresses come from the answer's additional section, else from A (then AAAA) lookups of the
    target; a target that does not resolve is left out. With ``port_name`` null, each A record of the
    service (or each AAAA record, when there are none) gives ``http://<addr>:<port>``: IPv4 is preferred, so a
    dual-stack pod counts once.

    The next lookup comes after the smallest TTL of the records used (at most ``MAX_TTL_WAIT``, 300 s), but
    never sooner than ``refresh_interval``.
    NXDOMAIN or no records is an empty set (held for ``empty_grace``); a timeout, SERVFAIL or REFUSED keeps the
    last good set (stale) and is retried with backoff; a record that cannot be an endpoint (port 0) rejects the
    whole answer as malformed.

    >>> from fastapi_mesh.settings import DiscoveryConfig
    >>> config = DiscoveryConfig(backend="kubernetes-dns", nameservers=["10.96.0.10:53"], port_name=None, port=80)
    >>> backend = KubernetesDNSDiscovery(config)
    >>> backend.query_name("users"), backend.nameservers
    ('users.default.svc.cluster.local.', [('10.96.0.10', 53)])

    ``resolver`` replaces the dnspython resolver the backend makes (its nameservers are then its own).
    """

    backend = "kubernetes-dns"

    def __init__(
        self,
        config: DiscoveryConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
        resolver: dns.asyncresolver.Resolver | None = None,
    ) -> None:
        super().__init__(config, clock=clock, rng=rng, wall=wall)
        #: ``(host, port)`` of each nameserver from ``discovery.nameservers``; empty: ``/etc/resolv.conf``'s.
        self.nameservers = [split_nameserver(item) for item in config.nameservers]
        #: Seconds one lookup may take in all (every try, every nameserver): ``discovery.dns_timeout``.
        self.lookup_lifetime = config.dns_timeout
        #: Seconds one query to one nameserver may take.
        self.query_timeout = min(DEFAULT_QUERY_TIMEOUT, config.dns_timeout)
        self._given_resolver = resolver
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._names: dict[str, str] = {}
        self._domain = config.cluster_domain.strip(".").lower()
        port_name = config.port_name
        self._scheme = "https" if port_name is not None and re.match(r"^https(-|$)", port_name) else "http"

    # ---------------------------------------------------------------------------------- names

    def query_name(self, service: str) -> str:
        """The absolute DNS name looked up for ``service`` (SRV with a port name, else A/AAAA)."""
        name = self._names.get(service)
        if name is None:
            name = self._names[service] = self._query_name(service)
        return name

    def _query_name(self, service: str) -> str:
        text = service.strip().lower()
        if text.endswith("."):
            base = text
        else:
            labels = text.split(".")
            if len(labels) == 1:
                base = f"{text}.{self.config.namespace}.svc.{self._domain}."
            elif len(labels) == 2:
                base = f"{text}.svc.{self._domain}."
            else:
                base = text + "."
        if not all(_LABEL.match(label) for label in base[:-1].split(".")):
            raise ValueError(f"service {service!r} does not give a DNS name (labels of a-z, 0-9 and '-'): {base!r}")
        if len(base) > 254:
            raise ValueError(f"service {service!r}: the DNS name {base!r} is too long")
        port_name = self.config.port_name
        if port_name is None:
            return base
        return f"_{port_name.lower()}._{self.config.protocol}.{base}"

    # ---------------------------------------------------------------------------------- resolver

    async def open(self) -> None:
        try:
            self._resolver = self._make_resolver()
        except dns.resolver.NoResolverConfiguration:
            self._resolver = None  # each lookup tries again and fails, so the status says why

    async def close(self) -> None:
        self._resolver = None

    def _make_resolver(self) -> dns.asyncresolver.Resolver:
        resolver = self._given_resolver
        if resolver is None:
            resolver = dns.asyncresolver.Resolver(configure=not self.nameservers)
            if self.nameservers:
                resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in self.nameservers]
            resolver.use_edns(0, 0, EDNS_PAYLOAD)
            resolver.cache = None  # the TTL is honoured by when the next lookup comes, not by a cache
        resolver.timeout = self.query_timeout
        resolver.lifetime = self.lookup_lifetime
        return resolver

    def _current_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            try:
                self._resolver = self._make_resolver()
            except dns.resolver.NoResolverConfiguration as exc:
                raise RuntimeError(
                    "no DNS servers: /etc/resolv.conf names none; set discovery.nameservers "
                    "(MESH_DISCOVERY__NAMESERVERS='[\"10.96.0.10:53\"]')"
                ) from exc
        return self._resolver

    async def _lookup(self, name: str, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer | None:
        """The answer for ``name``/``rdtype``, or None when the name does not exist (NXDOMAIN). An answer
        with no records has ``rrset`` None. Timeouts, SERVFAIL and REFUSED raise."""
        resolver = self._current_resolver()
        try:
            return await resolver.resolve(
                name, rdtype, raise_on_no_answer=False, search=False, lifetime=self.lookup_lifetime
            )
        except dns.resolver.NXDOMAIN:
            return None

    # ---------------------------------------------------------------------------------- fetch

    async def fetch(self, service: str, cursor: Any) -> Answer:
        name = self.query_name(service)
        if self.config.port_name is None:
            endpoints, ttls = await self._from_addresses(name)
        else:
            endpoints, ttls = await self._from_srv(name)
        return Answer(endpoints, delay=self._delay(ttls))

    def _delay(self, ttls: Sequence[int]) -> float:
        """Seconds until the next lookup: the smallest TTL, at least ``refresh_interval``."""
        refresh = self.config.refresh_interval
        if not ttls:
            return refresh
        return max(refresh, min(float(min(ttls)), MAX_TTL_WAIT))

    async def _from_addresses(self, name: str) -> tuple[list[Endpoint], list[int]]:
        port = self.config.port
        if port is None:  # DiscoveryConfig refuses this combination; a hand-built config might not
            raise ValueError("kubernetes-dns without port_name needs discovery.port (MESH_DISCOVERY__PORT)")
        try:
            async with asyncio.TaskGroup() as group:
                v4 = group.create_task(self._lookup(name, dns.rdatatype.A))
                v6 = group.create_task(self._lookup(name, dns.rdatatype.AAAA))
        except ExceptionGroup as errors:
            raise _first(errors) from None
        rrset = _records(v4.result()) or _records(v6.result())
        if rrset is None:
            return [], []
        endpoints = [self._endpoint(str(rdata.address), port, 1, name, {}) for rdata in rrset]
        return _merged(endpoints), [rrset.ttl]

    async def _from_srv(self, name: str) -> tuple[list[Endpoint], list[int]]:
        answer = await self._lookup(name, dns.rdatatype.SRV)
        rrset = _records(answer)
        if answer is None or rrset is None:
            return [], []
        records = [rdata for rdata in rrset if rdata.target != dns.name.root]  # "." : no service here
        if not records:
            return [], [rrset.ttl]
        lowest = min(rdata.priority for rdata in records)
        records = [rdata for rdata in records if rdata.priority == lowest]
        for rdata in records:
            if rdata.port == 0:
                target = rdata.target.to_text(omit_final_dot=True)
                raise MalformedAnswer(f"SRV record {name.rstrip('.')} -> {target}: port 0")
        weighted = any(rdata.weight > 0 for rdata in records)  # all 0: equal shares (RFC 2782)
        ttls = [rrset.ttl]
        targets = {rdata.target for rdata in records}
        addresses = _additional_addresses(answer.response, targets)
        missing = [target for target in targets if target not in addresses]
        if missing:
            looked_up = await self._resolve_targets(missing)
            addresses.update(looked_up)
        endpoints: list[Endpoint] = []
        for rdata in records:
            found = addresses.get(rdata.target)
            if found is None:
                continue  # a pod that is gone: its record outlived it
            ttls.append(found.ttl)
            host = rdata.target.to_text(omit_final_dot=True)
            weight = min(int(rdata.weight), MAX_WEIGHT) if weighted else 1
            endpoints.extend(
                self._endpoint(str(address.address), int(rdata.port), weight, name, {"target": host})
                for address in found
            )
        return _merged(endpoints), ttls

    async def _resolve_targets(self, targets: Sequence[dns.name.Name]) -> dict[dns.name.Name, dns.rrset.RRset]:
        """A records of each target, AAAA records where there are no A records; unresolvable targets left out."""
        limit = asyncio.Semaphore(TARGET_LOOKUPS_AT_ONCE)

        async def resolve(target: dns.name.Name) -> dns.rrset.RRset | None:
            async with limit:
                text = target.to_text()
                return _records(await self._lookup(text, dns.rdatatype.A)) or _records(
                    await self._lookup(text, dns.rdatatype.AAAA)
                )

        try:
            async with asyncio.TaskGroup() as group:
                tasks = {target: group.create_task(resolve(target)) for target in targets}
        except ExceptionGroup as errors:
            raise _first(errors) from None
        found: dict[dns.name.Name, dns.rrset.RRset] = {}
        for target, task in tasks.items():
            rrset = task.result()
            if rrset is not None:
                found[target] = rrset
        return found

    def _endpoint(self, address: str, port: int, weight: int, name: str, metadata: dict[str, str]) -> Endpoint:
        try:
            return Endpoint(f"{self._scheme}://{url_host(address)}:{port}", weight=weight, metadata=metadata)
        except ValueError as exc:
            raise MalformedAnswer(f"DNS answer for {name}: {exc}") from None


def _records(answer: dns.resolver.Answer | None) -> dns.rrset.RRset | None:
    """The answer's records, or None for NXDOMAIN or an answer without any."""
    if answer is None or answer.rrset is None or len(answer.rrset) == 0:
        return None
    return answer.rrset


def _additional_addresses(
    response: dns.message.Message, targets: Iterable[dns.name.Name]
) -> dict[dns.name.Name, dns.rrset.RRset]:
    """The addresses an SRV answer carries for its targets (A preferred over AAAA), by target."""
    wanted = set(targets)
    v4: dict[dns.name.Name, dns.rrset.RRset] = {}
    v6: dict[dns.name.Name, dns.rrset.RRset] = {}
    for rrset in response.additional:
        if rrset.name not in wanted or not len(rrset):
            continue
        if rrset.rdtype == dns.rdatatype.A:
            v4[rrset.name] = rrset
        elif rrset.rdtype == dns.rdatatype.AAAA:
            v6[rrset.name] = rrset
    return {**v6, **v4}


def _merged(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """One endpoint per URL (two records for one address and port add up their weights), sorted by URL so
    that rotated answers compare equal."""
    by_url: dict[str, Endpoint] = {}
    for endpoint in endpoints:
        seen = by_url.get(endpoint.url)
        if seen is not None:
            weight = min(seen.weight + endpoint.weight, MAX_WEIGHT)
            endpoint = Endpoint(seen.url, weight=weight, metadata=seen.metadata)
        by_url[endpoint.url] = endpoint
    return [by_url[url] for url in sorted(by_url)]


def _first(errors: BaseExceptionGroup[Exception]) -> Exception:
    error = errors.exceptions[0]
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
