"""``MeshMiddleware``: the server side, as pure ASGI.

    app.add_middleware(MeshMiddleware, mesh=mesh)

Records the inbound caller, deadline header and trace headers for outbound calls made while serving the
request (``Depends(get_mesh)`` gets the same without this middleware), turns a ``MeshError`` that
escapes a route into 503 with ``Retry-After`` (a deadline into 504) instead of a 500, and counts each
request in ``mesh_inbound_requests_total`` and ``mesh_inbound_request_duration_seconds`` by method, route
template and status, and those being served in ``mesh_inbound_requests_in_progress`` (the mesh's own probe,
status and metrics routes are not counted).

With ``observability.tracing`` on, each request (but those to the mesh's own routes) is served inside a
``SERVER`` span continuing the caller's ``traceparent``, current while the app runs, so the mesh's client
spans are its children; when opentelemetry-instrumentation-fastapi (or any other instrumentation) made a
server span already, that one stays the only one (see ``fastapi_mesh.observability.tracing``).

When some upstream's affinity is keyed on a cookie (``load_balancer.affinity_key: "cookie:<name>"``) and
a request without that cookie makes an outbound call keyed on it, the call gets a fresh random value for it
(every later call of the request the same one), and the response sets the cookie (``Path=/; HttpOnly;
SameSite=Lax``, ``Secure`` over https) -- a 503 or 504 made here from a ``MeshError`` too -- so the
client's next requests land on the same endpoints. Requests that make no such call (probes, ``/metrics``,
routes that call no upstream keyed on the cookie) get no cookie. The value is issued by the first call that
needs it, so a call made after the response has started (while a body streams) cannot set it any more.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .balancing.routing import affinity_cookie_names
from .context import InboundContext, reset_inbound, set_inbound
from .errors import MeshError
from .resilience.policy import mesh_error_response

if TYPE_CHECKING:
    from .extension import Mesh

__all__ = ["MeshMiddleware"]


class MeshMiddleware:
    """Pure ASGI middleware; passes non-HTTP scopes through untouched."""

    def __init__(self, app: ASGIApp, mesh: Mesh) -> None:
        self.app = app
        self.mesh = mesh
        #: Cookies some upstream's session affinity is keyed on: issued to requests that lack them and make a
        #: call keyed on them, and then set on the response.
        self.affinity_cookies = affinity_cookie_names(mesh.settings)
        #: The mesh's probe, status and metrics routes (by endpoint: ``include_router`` copies the routes),
        #: not counted as the service's traffic.
        self.own_endpoints = frozenset(getattr(route, "endpoint", None) for route in mesh.router.routes)
        #: Server spans for inbound requests (``observability.tracing``), or None; the mesh's own routes
        #: (``mesh.inbound.own_paths``, as the app serves them) are not traced.
        self.tracing = mesh.client._rt.tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        inbound = InboundContext.from_headers(
            client[0] if client else None, scope.get("headers", ()), self.mesh.clock.now()
        )
        inbound.issuable = self.affinity_cookies
        token = set_inbound(inbound)
        started = False
        status = 500  # what the client gets when the app fails before answering
        began = time.perf_counter()
        inbound_metrics = self.mesh.inbound
        in_progress = inbound_metrics.enter(scope["path"])  # mesh_inbound_requests_in_progress
        server = None
        if self.tracing is not None:
            server = self.tracing.server_span(scope, inbound_metrics.own_paths)

        async def send_wrapper(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                if inbound.issued:
                    cookies = _set_cookie_headers(inbound.issued, scope.get("scheme") == "https")
                    message = {**message, "headers": [*message.get("headers", ()), *cookies]}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except MeshError as exc:
            if server is not None:
                server.error = exc
            if started:
                raise
            await mesh_error_response(exc)(scope, receive, send_wrapper)  # with the cookie the calls used
        except BaseException as exc:
            if server is not None:
                server.error = exc
            raise
        finally:
            reset_inbound(token)
            if in_progress:
                inbound_metrics.exit()
            if server is not None:
                server.end(scope, status)
            route = scope.get("route")
            if getattr(route, "endpoint", None) not in self.own_endpoints or route is None:
                template = getattr(route, "path", None)
                inbound_metrics.observe(scope["method"], template, status, time.perf_counter() - began)


def _set_cookie_headers(issued: dict[str, str], secure: bool) -> list[tuple[bytes, bytes]]:
    """``Set-Cookie`` headers for the affinity cookies issued while serving a request."""
    attributes = "; Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if secure else "")
    return [(b"set-cookie", f"{name}={value}{attributes}".encode("latin-1")) for name, value in issued.items()]
