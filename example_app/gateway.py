"""The demo ``api-gateway``: a FastAPI app that reaches its upstreams through fastapi-mesh.

``create_gateway(endpoints)`` builds the app for a given set of upstream URLs (static discovery);
``create_app()`` builds it from the ``GATEWAY_ENDPOINTS`` environment variable, for
``uvicorn --factory example_app.gateway:create_app``.

Routes:

- ``GET /api/users`` -- 2 s deadline, 50 concurrent executions, falls back to an empty list.
- ``GET /api/users/{user_id}`` -- 2 s deadline; an upstream 404 stays a 404.
- ``GET /api/orders`` and ``POST /api/orders`` -- no fallback: failures surface as 502/503/504.
- ``GET /api/dashboard`` -- calls both services concurrently and degrades per section.
- ``/health/live``, ``/health/ready``, ``/health/startup``, ``/metrics``, ``/mesh/status``,
  ``/mesh/dashboard`` -- from ``mesh.router``.

An upstream that answers 4xx is relayed as is; one that answers 5xx (after the mesh's retries) becomes
``502 Bad Gateway`` unless the route has a fallback.
"""

import asyncio
import json
import os
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from example_app.models import OrderIn
from fastapi_mesh import Mesh, MeshClient, MeshMiddleware, MeshSettings, get_mesh

SERVICE_NAME = "api-gateway"
"""The name the gateway reports as its own service."""

USER_SERVICE = "user-service"
ORDER_SERVICE = "order-service"

ENDPOINTS_ENV = "GATEWAY_ENDPOINTS"
"""Environment variable read by :func:`create_app`: a JSON object mapping service name to URL list."""

DEFAULT_ENDPOINTS: dict[str, list[str]] = {
    USER_SERVICE: ["http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8003"],
    ORDER_SERVICE: ["http://127.0.0.1:8011", "http://127.0.0.1:8012"],
}
"""Where :func:`create_app` looks for upstreams when ``GATEWAY_ENDPOINTS`` is unset."""

DEMO_RETRY: dict[str, Any] = {"max_retries": 2, "initial_delay": 0.05, "max_delay": 0.5}
"""Short retry backoff, so a flaky replica costs milliseconds, not seconds, inside a 2 s route deadline."""

ROUTES = (
    "/api/users",
    "/api/users/1",
    "/api/orders",
    "/api/dashboard",
    "/health/live",
    "/health/ready",
    "/health/startup",
    "/metrics",
    "/mesh/status",
    "/mesh/dashboard",
)
"""The gateway URLs worth trying, listed by ``GET /`` and by ``python -m example_app``."""

Client = Annotated[MeshClient, Depends(get_mesh)]
"""The per-request mesh client, injected by FastAPI."""


async def _upstream_status_error(request: Request, exc: Exception) -> Response:
    """Relay an upstream 4xx unchanged; turn an upstream 5xx into ``502 Bad Gateway``."""
    if not isinstance(exc, httpx.HTTPStatusError):
        raise exc
    upstream = exc.response
    if upstream.status_code < 500:
        return Response(
            content=upstream.content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type"),
        )
    return JSONResponse(
        {
            "detail": f"upstream {upstream.request.url.host}:{upstream.request.url.port} "
            f"answered {upstream.status_code}",
            "upstream_status": upstream.status_code,
            "replica": upstream.headers.get("x-replica"),
        },
        status_code=502,
    )


async def _section(client: MeshClient, service: str, path: str) -> dict[str, Any] | None:
    """One dashboard section: the upstream's JSON, or ``None`` when the service cannot answer."""
    try:
        response = await client.get(service, path)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    payload: dict[str, Any] = response.json()
    return payload


def _add_routes(app: FastAPI, mesh: Mesh) -> None:
    """The gateway's own routes, each under a mesh route policy."""

    @app.get("/")
    async def index() -> dict[str, Any]:
        """What this gateway serves."""
        return {"service": SERVICE_NAME, "routes": list(ROUTES)}

    @app.get("/api/users")
    @mesh.policy(timeout=2.0, bulkhead=50, fallback=lambda: {"users": []})
    async def list_users(client: Client) -> Any:
        """All users, from any ``user-service`` replica; an empty list when none can answer."""
        response = await client.get(USER_SERVICE, "/api/users")
        response.raise_for_status()
        return response.json()

    @app.get("/api/users/{user_id}")
    @mesh.policy(timeout=2.0)
    async def get_user(user_id: int, client: Client) -> Any:
        """One user; 404 when ``user-service`` does not know it."""
        response = await client.get(USER_SERVICE, f"/api/users/{user_id}")
        response.raise_for_status()
        return response.json()

    @app.get("/api/orders")
    @mesh.policy(timeout=2.0, bulkhead=50)
    async def list_orders(client: Client) -> Any:
        """All orders known to the ``order-service`` replica that answers."""
        response = await client.get(ORDER_SERVICE, "/api/orders")
        response.raise_for_status()
        return response.json()

    @app.post("/api/orders", status_code=201)
    @mesh.policy(timeout=3.0, bulkhead=20)
    async def create_order(order: OrderIn, client: Client) -> Any:
        """Create an order on one ``order-service`` replica (POST is not retried after a response)."""
        response = await client.post(ORDER_SERVICE, "/api/orders", json=order.model_dump())
        response.raise_for_status()
        return response.json()

    @app.get("/api/dashboard")
    @mesh.policy(timeout=2.5, bulkhead=50)
    async def dashboard(client: Client) -> dict[str, Any]:
        """Users and orders fetched concurrently; a failing service degrades its section only."""
        users, orders = await asyncio.gather(
            _section(client, USER_SERVICE, "/api/users"),
            _section(client, ORDER_SERVICE, "/api/orders"),
        )
        sections = {USER_SERVICE: users, ORDER_SERVICE: orders}
        return {
            "users": users["users"] if users else [],
            "orders": orders["orders"] if orders else [],
            "replicas": {name: body.get("replica") for name, body in sections.items() if body},
            "degraded": [name for name, body in sections.items() if body is None],
        }


def create_gateway(endpoints: dict[str, list[str]], **settings: Any) -> FastAPI:
    """Build the gateway for ``endpoints`` (service name -> base URLs).

    Extra keyword arguments are ``MeshSettings`` fields; each replaces the demo's value for that field
    (``discovery={...}`` replaces static discovery of ``endpoints``, as ``--dns`` does).
    """
    options: dict[str, Any] = {
        "retry": DEMO_RETRY,
        "discovery": {"backend": "static", "endpoints": endpoints},
        **settings,
    }
    mesh = Mesh(MeshSettings(service_name=SERVICE_NAME, **options))
    app = FastAPI(title=SERVICE_NAME, lifespan=mesh.lifespan)
    app.state.mesh = mesh
    app.include_router(mesh.router)
    _add_routes(app, mesh)
    app.add_exception_handler(httpx.HTTPStatusError, _upstream_status_error)
    app.add_middleware(MeshMiddleware, mesh=mesh)
    return app


def load_endpoints(raw: str | None) -> dict[str, list[str]]:
    """Parse a ``GATEWAY_ENDPOINTS`` value; ``None`` or empty gives :data:`DEFAULT_ENDPOINTS`."""
    if not raw:
        return {service: list(urls) for service, urls in DEFAULT_ENDPOINTS.items()}
    value = json.loads(raw)
    if not isinstance(value, dict) or not all(
        isinstance(urls, list) and all(isinstance(url, str) for url in urls) for urls in value.values()
    ):
        raise ValueError(f"{ENDPOINTS_ENV} must be a JSON object mapping service names to lists of URLs")
    return value


def create_app() -> FastAPI:
    """Build the gateway from ``GATEWAY_ENDPOINTS`` (uvicorn ``--factory`` entry point)."""
    return create_gateway(load_endpoints(os.environ.get(ENDPOINTS_ENV)))
