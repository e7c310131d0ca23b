"""A real dnsmasq for DNS discovery tests: serves ``srv-host`` and ``host-record`` entries on 127.0.0.1 at a
free high port, in the foreground, until stopped (the demo's runner, ``example_app.dnsmasq``, with records,
a TTL and restarts).

dnsmasq reads ``srv-host`` and ``host-record`` only at start-up (SIGHUP rereads hosts files, not these), so
``restart(records)`` stops it and starts it again with the new records on the same port. Names under the
served domain that have no record get NXDOMAIN (``local=/<domain>/``); any other name is REFUSED (there are no
upstream servers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from example_app import dnsmasq as runner

MISSING = (
    "dnsmasq is not installed: the DNS discovery tests run a real dnsmasq. Run `make test` (it installs "
    "Debian's dnsmasq-base when missing) or `apt-get install dnsmasq-base`."
)


class Srv(NamedTuple):
    """An SRV record: ``srv-host=<name>,<target>,<port>,<priority>,<weight>``."""

    name: str
    target: str
    port: int
    priority: int = 0
    weight: int = 0

    def line(self) -> str:
        return f"srv-host={self.name},{self.target},{self.port},{self.priority},{self.weight}"


class Host(NamedTuple):
    """An A (IPv4) or AAAA (IPv6) record: ``host-record=<name>,<address>``."""

    name: str
    address: str

    def line(self) -> str:
        return f"host-record={self.name},{self.address}"


Record = Srv | Host


def find_dnsmasq() -> str | None:
    """The dnsmasq binary, or None when it is not installed."""
    try:
        return runner.find_dnsmasq()
    except runner.DnsmasqMissing:
        return None


class Dnsmasq:
    """One dnsmasq process serving ``records`` under ``domain``, with ``ttl`` on every answer (``local-ttl``).

    ``await server.start(records)``, ``await server.restart(records)`` (same port), ``await server.stop()``;
    ``server.nameserver`` is ``"127.0.0.1:<port>"`` for ``discovery.nameservers``.
    """

    def __init__(self, directory: Path, *, domain: str = "cluster.local") -> None:
        self.domain = domain
        self.ttl = 0
        self.records: list[Record] = []
        self._process = runner.Dnsmasq(directory)

    @property
    def port(self) -> int:
        return self._process.port

    @property
    def nameserver(self) -> str:
        return self._process.nameserver

    def config(self) -> list[str]:
        return [f"local=/{self.domain}/", f"local-ttl={self.ttl}", *(record.line() for record in self.records)]

    async def start(self, records: Iterable[Record] = (), *, ttl: int | None = None) -> None:
        """Start serving ``records``; returns once dnsmasq answers queries."""
        self.records = list(records)
        if ttl is not None:
            self.ttl = ttl
        await asyncio.to_thread(self._process.serve, self.config())

    async def restart(self, records: Iterable[Record] | None = None, *, ttl: int | None = None) -> None:
        """Stop, then start again on the same port with ``records`` (default: the current ones)."""
        records = list(self.records if records is None else records)
        await self.stop()
        await self.start(records, ttl=ttl)

    async def stop(self) -> None:
        """Stop dnsmasq; its port refuses queries afterwards."""
        await asyncio.to_thread(self._process.stop)
