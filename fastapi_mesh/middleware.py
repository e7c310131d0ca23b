"""``MeshMiddleware``: the server side, as pure ASGI.

    app.add_middleware(MeshMiddleware, mesh=mesh)

Records the inbound caller, deadline header and trace headers for outbound calls made while serving the
request (``Depends(get_mesh)`` gets the same without this middleware), and turns a ``MeshError`` that
escapes a route into 503 with ``Retry-After`` (a deadline into 504) instead of a 500.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except MeshError as exc:
            if started:
                raise
            await mesh_error_response(exc)(scope, receive, send)
        finally:
            reset_inbound(token)
