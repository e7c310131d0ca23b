"""Per-call and per-inbound-request context, carried in ``request.extensions["mesh"]`` and contextvars."""

from __future__ import annotations

import contextvars
import ipaddress
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import cookie_parser

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from .balancing.balancer import Group
    from .balancing.endpoint import EndpointState
    from .balancing.routing import AffinityKey, IPNetwork
    from .services import ServiceState

__all__ = [
    "EXTENSION",
    "CallContext",
    "InboundContext",
    "current_inbound",
    "current_route_deadline",
    "forwarded_client",
    "inbound_for",
    "parse_inbound_deadline",
    "reset_inbound",
    "reset_route_deadline",
    "set_inbound",
    "set_route_deadline",
]

#: Extension key under which a call's ``CallContext`` travels through the transport stack.
EXTENSION = "mesh"

#: Headers copied from an inbound request to every outbound call made while serving it.
PROPAGATED_HEADERS = ("traceparent", "tracestate", "baggage", "x-request-id", "x-b3-traceid", "b3")

DEADLINE_HEADER = "x-mesh-timeout-ms"
ENVOY_DEADLINE_HEADER = "x-envoy-expected-rq-timeout-ms"
GRPC_TIMEOUT_HEADER = "grpc-timeout"

_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_GRPC_RE = re.compile(r"^([0-9]{1,8})([HMSmun])$")
#: Longer millisecond values (over 31 years) are not a deadline anyone meant: ignored.
_MAX_MS_DIGITS = 12


class CallContext:
    """What one outbound call carries through the layers; one per call, ``__slots__`` for speed."""

    __slots__ = (
        "affinity_key",
        "attempts",
        "deadline",
        "endpoint",
        "group",
        "inbound",
        "service",
        "span",
        "stream",
        "timed",
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
        #: Whether the deadline arms the call's timer (a route, inbound or per-call deadline does;
        #: ``retry.max_elapsed`` alone does not).
        self.timed = False
        self.endpoint: EndpointState | None = None
        self.tried: list[EndpointState] = []
        #: The balancer's routing choice (a subset of the endpoints, or all of them), made at the first
        #: attempt and kept for the call's retries and hedges. Opaque outside the balancer.
        self.group: Group | None = None
        #: The recording client span of the request being sent (tracing on), for the layers' span events.
        self.span: Span | None = None

    def hedge(self) -> CallContext:
        """The context of a hedge: the call's, with an endpoint of its own. The endpoints tried are the call's
        list itself (each attempt sees the others' and later retries see both); the routing choice is the
        call's as it stands. The retry layer takes the endpoint of whichever attempt it answers with."""
        twin = CallContext(self.service, self.deadline, self.inbound, self.affinity_key, self.stream)
        twin.attempts = self.attempts
        twin.timed = self.timed
        twin.tried = self.tried
        twin.group = self.group
        twin.span = self.span
        return twin

    def new_hop(self) -> None:
        """A followed redirect starts over: attempts and endpoints tried count per hop; the deadline stays."""
        self.attempts = 0
        self.tried = []
        self.endpoint = None
        self.group = None

    def deadline_passed(self, now: float) -> bool:
        """Whether the call's deadline is at or before ``now``. An attempt cancelled then was cancelled by
        the deadline's timer: a timeout, which the breaker and the balancer count as a failure."""
        deadline = self.deadline
        return deadline is not None and now >= deadline


class InboundContext:
    """What an outbound call needs from the inbound request being served: caller, deadline, trace headers.

    The raw headers are kept (no copy) for affinity keys; a header, the cookies and the caller's address
    behind trusted proxies are worked out only when a call asks, once per request.

    ``issuable`` names the affinity cookies ``MeshMiddleware`` may set on the response: when a call asks
    for one the request lacks, it gets a fresh random value, recorded in ``issued`` for the middleware.
    """

    __slots__ = ("_address", "_cookies", "client_host", "deadline", "forward", "headers", "issuable", "issued")

    def __init__(
        self,
        client_host: str | None,
        deadline: float | None,
        forward: list[tuple[str, str]],
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.client_host = client_host
        self.deadline = deadline
        self.forward = forward
        self.headers = headers
        self._cookies: dict[str, str] | None = None
        self._address: tuple[object, str | None] | None = None
        self.issuable: tuple[str, ...] = ()
        self.issued: dict[str, str] | None = None

    @classmethod
    def from_headers(
        cls, client_host: str | None, headers: Iterable[tuple[bytes, bytes]], now: float
    ) -> InboundContext:
        """Build from raw ASGI headers; ``now`` is the clock reading the deadline is relative to."""
        raw = headers if isinstance(headers, list | tuple) else list(headers)
        timeout: float | None = None
        forward: list[tuple[str, str]] = []
        for raw_name, raw_value in raw:
            name = raw_name.decode("latin-1").lower()
            if name in PROPAGATED_HEADERS:
                forward.append((name, raw_value.decode("latin-1")))
            elif name in (DEADLINE_HEADER, ENVOY_DEADLINE_HEADER, GRPC_TIMEOUT_HEADER):
                seconds = parse_inbound_deadline(name, raw_value.decode("latin-1"))
                if seconds is not None and (timeout is None or seconds < timeout):
                    timeout = seconds
        return cls(client_host, None if timeout is None else now + timeout, forward, raw)

    def header(self, name: str) -> str | None:
        """The first value of the inbound header ``name`` (lower case), or None."""
        wanted = name.encode("latin-1")
        for key, value in self.headers:
            if key == wanted or key.lower() == wanted:
                return value.decode("latin-1")
        return None

    def cookies(self) -> dict[str, str]:
        """The inbound request's cookies, parsed on first use, with any affinity cookie issued since."""
        cookies = self._cookies
        if cookies is None:
            cookies = self._cookies = {}
            for key, value in self.headers:
                if key.lower() == b"cookie":
                    cookies.update(cookie_parser(value.decode("latin-1")))
        return cookies

    def cookie(self, name: str) -> str | None:
        """The value of cookie ``name``. An ``issuable`` cookie the request lacks gets a fresh random value
        here, once: every call made while serving this request hashes the same value, and
        ``MeshMiddleware`` sets it on the response."""
        cookies = self.cookies()
        value = cookies.get(name)
        if value is None and name in self.issuable:
            value = cookies[name] = secrets.token_urlsafe(16)
            if self.issued is None:
                self.issued = {}
            self.issued[name] = value
        return value

    def affinity_key(self, source: AffinityKey) -> str | None:
        """The affinity key ``source`` names in this request: the caller's address, a header or a cookie
        (reading an ``issuable`` cookie issues it: see ``cookie``); None when the request has none."""
        kind = source.kind
        if kind == "client-ip":
            return self.client_address(source.trusted)
        if kind == "header":
            return self.header(source.name)
        return self.cookie(source.name)

    def client_address(self, trusted: Sequence[IPNetwork]) -> str | None:
        """The caller's address: the direct peer, unless the peer is one of the ``trusted`` proxies; then the
        rightmost ``X-Forwarded-For`` entry that is not a trusted proxy itself."""
        if not trusted:
            return self.client_host
        cached = self._address
        if cached is not None and cached[0] is trusted:
            return cached[1]
        forwarded = [v.decode("latin-1") for k, v in self.headers if k.lower() == b"x-forwarded-for"]
        address = forwarded_client(self.client_host, forwarded, trusted)
        self._address = (trusted, address)
        return address


def _is_trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def forwarded_client(peer: str | None, forwarded: Sequence[str], trusted: Sequence[IPNetwork]) -> str | None:
    """The client address ``X-Forwarded-For`` gives, believed only from ``trusted`` proxies.

    >>> nets = [ipaddress.ip_network("10.0.0.0/8")]
    >>> forwarded_client("10.0.0.5", ["203.0.113.7, 10.0.0.9"], nets)
    '203.0.113.7'
    >>> forwarded_client("198.51.100.1", ["203.0.113.7"], nets)  # the peer is no trusted proxy
    '198.51.100.1'
    """
    if peer is None or not forwarded or not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for value in forwarded for hop in value.split(",")]
    address = peer
    for hop in reversed(hops):
        if not hop:
            continue
        address = hop
        if not _is_trusted(hop, trusted):
            break
    return address


def parse_inbound_deadline(name: str, value: str) -> float | None:
    """Seconds left according to one deadline header, or None when it is malformed (then it is ignored).

    >>> parse_inbound_deadline("x-mesh-timeout-ms", "1500"), parse_inbound_deadline("grpc-timeout", "2S")
    (1.5, 2.0)
    """
    value = value.strip()
    if name == GRPC_TIMEOUT_HEADER:
        match = _GRPC_RE.match(value)
        return None if match is None else int(match.group(1)) * _GRPC_UNITS[match.group(2)]
    if not (value.isascii() and value.isdigit()) or len(value) > _MAX_MS_DIGITS:
        return None
    return int(value) / 1000.0


_inbound: contextvars.ContextVar[InboundContext | None] = contextvars.ContextVar(
    "fastapi_mesh_inbound", default=None
)
_route_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "fastapi_mesh_route_deadline", default=None
)


# The two contextvars are read and set only through the functions below (the getters are the contextvars'
# own ``get``: no extra call on a call's path).

#: The inbound request being served (set by ``MeshMiddleware``), or None.
current_inbound: Callable[[], InboundContext | None] = _inbound.get
#: The deadline of the route being served (set by ``@mesh.policy(timeout=...)``; clock time), or None.
current_route_deadline: Callable[[], float | None] = _route_deadline.get


def set_inbound(ctx: InboundContext | None) -> contextvars.Token[InboundContext | None]:
    """Make ``ctx`` the inbound request being served; pass the token to ``reset_inbound`` when it ends."""
    return _inbound.set(ctx)


def reset_inbound(token: contextvars.Token[InboundContext | None]) -> None:
    _inbound.reset(token)


def set_route_deadline(deadline: float | None) -> contextvars.Token[float | None]:
    """Make ``deadline`` the route's; pass the token to ``reset_route_deadline`` when the route ends."""
    return _route_deadline.set(deadline)


def reset_route_deadline(token: contextvars.Token[float | None]) -> None:
    _route_deadline.reset(token)


def inbound_for(scope: Mapping[str, Any], now: float) -> InboundContext:
    """The inbound request being served: the one ``MeshMiddleware`` set, else one read from ``scope`` (the
    caller's address and headers; ``now`` is the clock reading an inbound deadline is relative to). What
    ``get_mesh`` binds to its view of the client, and where a route policy's deadline starts from."""
    inbound = _inbound.get()
    if inbound is None:
        client = scope.get("client")
        inbound = InboundContext.from_headers(client[0] if client else None, scope.get("headers", ()), now)
    return inbound


