"""Static discovery: endpoints written in the settings (``discovery.endpoints``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..settings import EndpointConfig
from .base import Endpoint, Publish

__all__ = ["StaticDiscovery"]


class StaticDiscovery:
    """Publishes the configured endpoint sets once, at start. ``set_endpoints`` replaces one at run time.

    >>> d = StaticDiscovery({"user-service": ["http://127.0.0.1:8001"]})
    >>> [e.url for e in d.endpoints("user-service")]
    ['http://127.0.0.1:8001']
    """

    def __init__(self, endpoints: Mapping[str, Sequence[EndpointConfig | str | Endpoint]] | None = None) -> None:
        self._sets: dict[str, tuple[Endpoint, ...]] = {}
        self._publish: Publish | None = None
        for service, items in (endpoints or {}).items():
            self._sets[service] = tuple(
                item if isinstance(item, Endpoint) else Endpoint.from_config(item) for item in items
            )

    def endpoints(self, service: str) -> tuple[Endpoint, ...]:
        return self._sets.get(service, ())

    async def start(self, publish: Publish) -> None:
        self._publish = publish
        for service, endpoints in self._sets.items():
            publish(service, endpoints)

    def watch(self, service: str) -> None:
        return None

    def set_endpoints(self, service: str, endpoints: Sequence[EndpointConfig | str | Endpoint]) -> None:
        """Replace ``service``'s endpoints (published at once when started)."""
        new = tuple(item if isinstance(item, Endpoint) else Endpoint.from_config(item) for item in endpoints)
        self._sets[service] = new
        if self._publish is not None:
            self._publish(service, new)

    async def stop(self) -> None:
        self._publish = None
