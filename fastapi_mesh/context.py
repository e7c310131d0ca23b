"""Per-call and per-inbound-request context, carried in ``request.extensions["mesh"]`` and contextvars."""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .balancing.balancer import EndpointState
    from .registry import ServiceState

__all__ = ["CallContext", "InboundContext", "parse_inbound_deadline"]

#: Extension key under which a call's ``CallContext`` travels through the transport stack.
EXTENSION = "mesh"

#: Headers copied from an inbound request to every outbound call made while serving it.
PROPAGATED_HEADERS = ("traceparent", "tracestate", "baggage", "x-request-id", "x-b3-traceid", "b3")

DEADLINE_HEADER = "x-mesh-timeout-ms"
ENVOY_DEADLINE_HEADER = "x-envoy-expected-rq-timeout-ms"
GRPC_TIMEOUT_HEADER = "grpc-timeout"

_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_GRPC_RE = re.compile(r"^(\d{1,8})([HMSmun])$")


class CallContext:
    """What one outbound call carries through the layers; one per call, ``__slots__`` for speed."""

    __slots__ = (
        "affinity_key",
        "attempts",
        "deadline",
        "endpoint",
        "inbound",
        "service",
        "stream",
        "tried",
    )

    def __init__(
        self,
        service: ServiceState,
        deadline: float | None,
        inbound: InboundContext | None = None,
        affinity_key: str | None = None,
        stream: bool = False,
    ) -> None:
        self.service = service
        self.deadline = deadline
        self.inbound = inbound
        self.affinity_key = affinity_key
        self.stream = stream
        self.attempts = 0
        self.endpoint: EndpointState | None = None
        self.tried: list[EndpointState] = []


class InboundContext:
    """What an outbound call needs from the inbound request being served: caller, deadline, trace headers."""

    __slots__ = ("client_host", "deadline", "forward")

    def __init__(
        self,
        client_host: str | None,
        deadline: float | None,
        forward: list[tuple[str, str]],
    ) -> None:
        self.client_host = client_host
        self.deadline = deadline
        self.forward = forward

    @classmethod
    def from_headers(
        cls, client_host: str | None, headers: Iterable[tuple[bytes, bytes]], now: float
    ) -> InboundContext:
        """Build from raw ASGI headers; ``now`` is the clock reading the deadline is relative to."""
        timeout: float | None = None
        forward: list[tuple[str, str]] = []
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1").lower()
            if name in PROPAGATED_HEADERS:
                forward.append((name, raw_value.decode("latin-1")))
            elif name in (DEADLINE_HEADER, ENVOY_DEADLINE_HEADER, GRPC_TIMEOUT_HEADER):
                seconds = parse_inbound_deadline(name, raw_value.decode("latin-1"))
                if seconds is not None and (timeout is None or seconds < timeout):
                    timeout = seconds
        return cls(client_host, None if timeout is None else now + timeout, forward)


def parse_inbound_deadline(name: str, value: str) -> float | None:
    """Seconds left according to one deadline header, or None when it is malformed (then it is ignored).

    >>> parse_inbound_deadline("x-mesh-timeout-ms", "1500"), parse_inbound_deadline("grpc-timeout", "2S")
    (1.5, 2.0)
    """
    value = value.strip()
    if name == GRPC_TIMEOUT_HEADER:
        match = _GRPC_RE.match(value)
        return None if match is None else int(match.group(1)) * _GRPC_UNITS[match.group(2)]
    if not value.isdigit():
        return None
    return int(value) / 1000.0


_inbound: contextvars.ContextVar[InboundContext | None] = contextvars.ContextVar(
    "fastapi_mesh_inbound", default=None
)
_route_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "fastapi_mesh_route_deadline", default=None
)


def current_inbound() -> InboundContext | None:
    return _inbound.get()


def current_route_deadline() -> float | None:
    return _route_deadline.get()


def set_inbound(ctx: InboundContext | None) -> contextvars.Token[InboundContext | None]:
    return _inbound.set(ctx)


def reset_inbound(token: contextvars.Token[InboundContext | None]) -> None:
    _inbound.reset(token)


def set_route_deadline(deadline: float | None) -> contextvars.Token[float | None]:
    return _route_deadline.set(deadline)


def reset_route_deadline(token: contextvars.Token[float | None]) -> None:
    _route_deadline.reset(token)


