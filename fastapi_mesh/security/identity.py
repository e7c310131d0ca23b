"""Who is calling: the caller's SPIFFE ID from its verified client certificate, allow lists, and denials.

    @app.get("/api/orders")
    async def orders(caller: str | None = Depends(peer_identity)): ...

    admin = require_identity("spiffe://cluster.local/ns/default/sa/admin")

    @app.delete("/api/orders/{order_id}", dependencies=[Depends(admin)])
    async def delete(order_id: str): ...

The certificate comes from the ASGI TLS extension (``scope["extensions"]["tls"]["client_cert_chain"]``), which
``fastapi-mesh serve`` fills in for every request of an mTLS connection; without it (plain HTTP, or a server
that does not provide the extension) the caller has no identity and every allow list refuses it. The identity
is the certificate's one ``spiffe://`` URI SAN (a SPIFFE X.509-SVID has exactly one URI SAN); a certificate
with none, or with several, has no identity.

A refused caller gets 403 with ``{"detail": "forbidden"}``: the body names neither the caller's identity nor
the allowed ones. Every denial is counted in ``mesh_authorization_denied_total{route}`` and logged (logger
``fastapi_mesh.security``, warning) with the caller's identity and the route.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from cryptography import x509
from fastapi import HTTPException, WebSocketException
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.routing import compile_path

from ..running import running_mesh
from .authorization import Authorization

__all__ = [
    "DENIED_DETAIL",
    "AllowList",
    "denied_response",
    "enforced_by_server",
    "identity_of",
    "peer_identity",
    "require_identity",
    "route_template",
]

#: The ``detail`` of every 403 a denied caller gets (it names no identity).
DENIED_DETAIL = "forbidden"
#: The key of the ASGI TLS extension in ``scope["extensions"]``.
TLS_EXTENSION = "tls"
#: WebSocket close code for a refused caller (policy violation); before ``accept`` the server answers 403.
WS_POLICY_VIOLATION = 1008
SPIFFE_SCHEME = "spiffe://"
_UNMATCHED = "<unmatched>"


def identity_of(scope: Mapping[str, Any]) -> str | None:
    """The caller's SPIFFE ID, from the TLS extension of an ASGI ``scope``; None without one.

    >>> identity_of({"type": "http", "extensions": {}}) is None
    True
    """
    extensions = scope.get("extensions")
    tls = extensions.get(TLS_EXTENSION) if extensions else None
    if not tls or tls.get("client_cert_error"):
        return None
    for pem in tls.get("client_cert_chain") or ():
        return _spiffe_id(pem)  # the first one is the caller's own certificate
    return None


@functools.lru_cache(maxsize=1024)
def _spiffe_id(pem: str) -> str | None:
    """The one ``spiffe://`` URI SAN of a PEM certificate (cached: a connection sends the same one each request)."""
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, UnicodeEncodeError, x509.ExtensionNotFound):
        return None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or not uris[0].startswith(SPIFFE_SCHEME):
        return None
    return uris[0]


async def peer_identity(request: HTTPConnection) -> str | None:
    """FastAPI dependency: the caller's SPIFFE ID from its verified client certificate, or None.

    ``caller: str | None = Depends(peer_identity)``; works in HTTP and WebSocket routes.
    """
    return identity_of(request.scope)


class AllowList:
    """Caller identities a service or a route accepts: exact SPIFFE IDs, prefixes ending in ``*``, or ``*``
    (any caller with a SPIFFE ID). An empty list accepts nobody; a caller without an identity never passes.

    >>> allow = AllowList(["spiffe://cluster.local/ns/default/sa/api-gateway", "spiffe://cluster.local/ns/ops/*"])
    >>> allow.allows("spiffe://cluster.local/ns/ops/sa/backup"), allow.allows("spiffe://cluster.local/ns/x/sa/y")
    (True, False)
    """

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = tuple(entries)
        exact: set[str] = set()
        prefixes: list[str] = []
        self.any = False
        for entry in self.entries:
            body = entry[:-1] if entry.endswith("*") else entry
            if entry == "*":
                self.any = True
            elif not body.startswith(SPIFFE_SCHEME) or "*" in body:
                raise ValueError(
                    f"allow entry {entry!r} is not a SPIFFE ID (spiffe://<trust-domain>/...), a prefix of one "
                    "ending in '*', or '*'"
                )
            elif entry.endswith("*"):
                prefixes.append(body)
            else:
                exact.add(entry)
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)

    def allows(self, identity: str | None) -> bool:
        if identity is None:
            return False
        return self.any or identity in self._exact or identity.startswith(self._prefixes)

    def __repr__(self) -> str:
        return f"AllowList({list(self.entries)!r})"


def route_template(scope: Mapping[str, Any], app: Any = None) -> str:
    """The route label of a request: the matched route's template, from the scope (after routing) or, before
    routing, by matching the path against ``app``'s route templates; ``<unmatched>`` when none matches. Never
    the raw path, so the label set stays bounded whatever callers send."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if app is None:
        return _UNMATCHED
    request_path = scope.get("path", "")
    method = scope.get("method")
    partial: str | None = None
    for regex, template, methods in _route_index(app):
        if regex.match(request_path):
            if not methods or method is None or method in methods:
                return template
            partial = partial or template  # the path matched, the method did not
    return partial if partial is not None else _UNMATCHED


_INDEXES: dict[int, tuple[Any, list[tuple[re.Pattern[str], str, frozenset[str]]]]] = {}


def _route_index(app: Any) -> list[tuple[re.Pattern[str], str, frozenset[str]]]:
    """``app``'s route templates as (regex, template, methods), built once per app: its routes (mounted apps
    and included routers too) and, for a FastAPI app, the paths of its OpenAPI schema."""
    cached = _INDEXES.get(id(app))
    if cached is not None and cached[0] is app:
        return cached[1]
    found: dict[str, frozenset[str]] = {}
    _collect(getattr(app, "routes", None) or (), "", found, depth=0)
    openapi = getattr(app, "openapi", None)
    if callable(openapi):
        try:
            for template, operations in (openapi().get("paths") or {}).items():
                methods = frozenset(m.upper() for m in operations if isinstance(m, str))
                found[template] = found.get(template, frozenset()) | methods
        except Exception:  # a schema that cannot be built: the routes found above will do
            pass
    index = [(compile_path(template)[0], template, methods) for template, methods in found.items()]
    _INDEXES[id(app)] = (app, index)
    return index


def _collect(routes: Iterable[Any], prefix: str, found: dict[str, frozenset[str]], depth: int) -> None:
    if depth > 8:
        return
    for route in routes:
        path = getattr(route, "path", None)
        inner = getattr(route, "routes", None)
        included = getattr(route, "original_router", None)  # FastAPI's included router, resolved lazily
        if included is not None:
            context = getattr(route, "include_context", None)
            _collect(getattr(included, "routes", ()), prefix + str(getattr(context, "prefix", "")), found, depth + 1)
        elif isinstance(path, str) and hasattr(route, "endpoint"):
            methods = frozenset(getattr(route, "methods", ()) or ())
            found[prefix + path] = found.get(prefix + path, frozenset()) | methods
        elif inner:
            _collect(inner, prefix + (path or ""), found, depth + 1)


_server_enforces = False


def enforced_by_server() -> bool:
    """Whether this process's server (``fastapi-mesh serve``) enforces ``mtls.allow`` on every request."""
    return _server_enforces


def set_enforced_by_server(value: bool = True) -> None:
    global _server_enforces
    _server_enforces = value


def denied_response() -> Response:
    """The 403 a denied caller gets."""
    return JSONResponse({"detail": DENIED_DETAIL}, status_code=403)


def require_identity(*allowed: str) -> Callable[[HTTPConnection], Awaitable[str]]:
    """A FastAPI dependency that lets only callers in ``allowed`` through and returns the caller's identity.

    ``Depends(require_identity("spiffe://cluster.local/ns/default/sa/api-gateway"))``; entries as in
    ``mtls.allow`` (an exact SPIFFE ID, a prefix ending in ``*``); no entries: any caller with a SPIFFE ID.
    A refused HTTP caller gets 403 ``{"detail": "forbidden"}``; a WebSocket is closed with 1008 (403 before
    ``accept``). Denials are counted and logged by the app's running Mesh.

    >>> dependency = require_identity("spiffe://cluster.local/ns/default/sa/api-gateway")
    """
    allow = AllowList(allowed or ("*",))

    async def caller_allowed(request: HTTPConnection) -> str:
        identity = identity_of(request.scope)
        if identity is not None and allow.allows(identity):
            return identity
        mesh = running_mesh(request.scope.get("app"))
        record = mesh.authorization if mesh is not None else Authorization()
        record.denied(route_template(request.scope), identity, "not allowed by require_identity(...)")
        if request.scope["type"] == "websocket":
            raise WebSocketException(code=WS_POLICY_VIOLATION, reason=DENIED_DETAIL)
        raise HTTPException(status_code=403, detail=DENIED_DETAIL)

    return caller_allowed
