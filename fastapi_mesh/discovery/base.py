"""What a discovery backend is: something that pushes endpoint sets, never sits on the request path."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import httpx

from ..settings import EndpointConfig, check_endpoint_url

__all__ = ["Discovery", "DiscoveryConfigError", "Endpoint", "Publish", "url_host"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


class DiscoveryConfigError(ValueError):
    """The discovery settings name something that cannot be built (a missing extra, a bad class path)."""


#: The largest endpoint weight (as ``EndpointConfig.weight`` allows).
MAX_WEIGHT = 10_000


def url_host(address: str) -> str:
    """``address`` as the host of a URL: an IPv6 address in brackets, anything else as it is.

    >>> url_host("fd00::1"), url_host("10.0.0.1"), url_host("[fd00::1]")
    ('[fd00::1]', '10.0.0.1', '[fd00::1]')
    """
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


class Endpoint:
    """One replica of a service, with its origin pre-encoded so no URL is re-parsed per attempt.

    >>> ep = Endpoint("http://10.0.0.1:8080", weight=2, zone="a")
    >>> ep.host, ep.port, ep.host_header
    ('10.0.0.1', 8080, '10.0.0.1:8080')
    """

    __slots__ = ("host", "host_header", "host_header_bytes", "metadata", "port", "scheme", "url", "weight", "zone")

    def __init__(
        self,
        url: str,
        *,
        weight: int = 1,
        metadata: Mapping[str, str] | None = None,
        zone: str | None = None,
    ) -> None:
        self.url = check_endpoint_url(url)
        parsed = httpx.URL(self.url)
        self.scheme = parsed.scheme
        self.host = parsed.host
        explicit = parsed.port
        self.port: int | None = explicit
        default = _DEFAULT_PORTS[self.scheme]
        netloc = url_host(self.host)
        self.host_header = netloc if explicit in (None, default) else f"{netloc}:{explicit}"
        self.host_header_bytes = self.host_header.encode("ascii")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"endpoint {url}: weight must be a whole number from 0 to {MAX_WEIGHT}, not {weight!r}")
        self.weight = weight
        self.metadata: Mapping[str, str] = dict(metadata or {})
        self.zone = zone

    @classmethod
    def from_config(cls, config: EndpointConfig | str) -> Endpoint:
        if isinstance(config, str):
            return cls(config)
        return cls(config.url, weight=config.weight, metadata=config.metadata, zone=config.zone)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Endpoint):
            return NotImplemented
        return (self.url, self.weight, self.zone, self.metadata) == (
            other.url,
            other.weight,
            other.zone,
            other.metadata,
        )

    def __hash__(self) -> int:
        return hash(self.url)

    def __repr__(self) -> str:
        return f"Endpoint({self.url!r}, weight={self.weight})"

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "weight": self.weight, "zone": self.zone, "metadata": dict(self.metadata)}


#: How a backend hands over a service's complete current endpoint set.
Publish = Callable[[str, Sequence[Endpoint]], None]


@runtime_checkable
class Discovery(Protocol):
    """A discovery backend. ``start`` receives ``publish`` and calls it whenever a service's set changes.

    ``watch(service)`` asks for a service to be tracked from now on; it must not block (the request that
    asked goes on with what is known). A malformed answer must keep the last good set: simply don't publish.
    """

    async def start(self, publish: Publish) -> None: ...

    def watch(self, service: str) -> None: ...

    async def stop(self) -> None: ...
