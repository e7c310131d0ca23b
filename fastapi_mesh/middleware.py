"""``MeshMiddleware``: the server side, as pure ASGI.

    app.add_middleware(MeshMiddleware, mesh=mesh)

Records the inbound caller, deadline header and trace headers for outbound calls made while serving the
request (``Depends(get_mesh)`` gets the same without this middleware), and turns a ``MeshError`` that
escapes a route into 503 with ``Retry-After`` (a deadline into 504) instead of a 500.

When some upstream's affinity is keyed on a cookie (``load_balancer.affinity_key: "cookie:<name>"``), a
request without that cookie gets a fresh random value for it: outbound calls made while serving the request
hash that value, and the response sets the cookie (``Path=/; HttpOnly; SameSite=Lax``, ``Secure`` over
https), so the client's next requests land on the same endpoints.
"""

from __future__ import annotations

import secrets
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
        #: Cookies some upstream's session affinity is keyed on: set on responses when the request lacks them.
        self.affinity_cookies = affinity_cookie_names(mesh.settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        inbound = InboundContext.from_headers(
            client[0] if client else None, scope.get("headers", ()), self.mesh.clock.now()
        )
        token = set_inbound(inbound)
        started = False
        set_cookies = self._new_affinity_cookies(inbound, scope) if self.affinity_cookies else None

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if set_cookies:
                    message = {**message, "headers": [*message.get("headers", ()), *set_cookies]}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except MeshError as exc:
            if started:
                raise
            await mesh_error_response(exc)(scope, receive, send)
        finally:
            reset_inbound(token)

    def _new_affinity_cookies(self, inbound: InboundContext, scope: Scope) -> list[tuple[bytes, bytes]] | None:
        """Give the request a value for each affinity cookie it lacks; the ``Set-Cookie`` headers to send."""
        jar = inbound.cookies()
        headers: list[tuple[bytes, bytes]] | None = None
        for name in self.affinity_cookies:
            if name in jar:
                continue
            value = jar[name] = secrets.token_urlsafe(16)
            cookie = f"{name}={value}; Path=/; HttpOnly; SameSite=Lax"
            if scope.get("scheme") == "https":
                cookie += "; Secure"
            if headers is None:
                headers = []
            headers.append((b"set-cookie", cookie.encode("latin-1")))
        return headers
