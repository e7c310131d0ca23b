"""``Mesh``: the FastAPI extension. One object per service gives it the client, probes, metrics, policies.

    mesh = Mesh(MeshSettings(service_name="api-gateway"))   # Mesh() alone reads MESH_* variables
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)    # /health/live /health/ready /health/startup /metrics /mesh/status
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import httpx
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import HTTPConnection

from .client import AuthTypes, EventHook, HeaderTypes, MeshClient, QueryParamTypes
from .clock import Clock
from .context import InboundContext, current_inbound
from .discovery import Discovery
from .events import EventHandler
from .health.manager import CheckKind, HealthCheckFn, HealthManager
from .health.shutdown import DrainOnSignal
from .observability.metrics import InboundMetrics, build_registry
from .resilience.fallback import MISSING
from .resilience.policy import RoutePolicy
from .settings import MeshSettings

__all__ = ["Mesh", "get_mesh"]

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=HealthCheckFn)
AppT = TypeVar("AppT")
Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]

#: Attribute of ``app.state`` that holds the running Mesh.
STATE_KEY = "fastapi_mesh"
#: Meshes whose lifespan is running in this process (for apps mounted under the one that runs it).
_RUNNING: list[Mesh] = []


class Mesh:
    """The extension: ``lifespan``, ``router``, ``policy``, and the ``client`` routes get via ``get_mesh``.

    ``Mesh(settings=None, *, discovery=None, transport=None, clock=None, rng=None, headers=None, params=None,
    auth=None, event_hooks=None)``; the keyword arguments go to the ``MeshClient`` it owns.
    """

    def __init__(
        self,
        settings: MeshSettings | None = None,
        *,
        discovery: Discovery | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        headers: HeaderTypes | None = None,
        params: QueryParamTypes | None = None,
        auth: AuthTypes | None = None,
        event_hooks: Mapping[str, Sequence[EventHook]] | None = None,
    ) -> None:
        self.settings = settings if settings is not None else MeshSettings()
        self.client = MeshClient(
            self.settings,
            transport=transport,
            clock=clock,
            rng=rng,
            discovery=discovery,
            headers=headers,
            params=params,
            auth=auth,
            event_hooks=event_hooks,
        )
        self.clock: Clock = self.client._rt.clock
        self.registry = build_registry(self.client)
        #: Inbound request counts and durations, recorded by ``MeshMiddleware``.
        self.inbound = InboundMetrics(self.registry)
        self.router = self._build_router()

    @property
    def health(self) -> HealthManager:
        return self.client.health

    # ------------------------------------------------------------------------------------- lifespan

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """``FastAPI(lifespan=mesh.lifespan)``. Starts the client (discovery, pool, health checks) and
        puts this Mesh on ``app.state``; on shutdown readiness turns 503 first, then everything stops.
        Adds no middleware (Starlette refuses middleware once the app has started)."""
        state = getattr(app, "state", None)
        if state is not None:
            setattr(state, STATE_KEY, self)
        await self.client.initialize()
        _RUNNING.append(self)
        config = self.settings.health_check
        drain = DrainOnSignal(self.health, config.drain_delay, config.shutdown_grace)
        drain.install()  # under uvicorn: SIGTERM drains first (see fastapi_mesh.health.shutdown)
        try:
            yield
        finally:
            drain.uninstall()
            _RUNNING.remove(self)
            self.health.drain()
            await self.client.aclose()  # health loops, then discovery (deregistration), then connections

    def combine_lifespan(self, lifespan: Lifespan) -> Lifespan:
        """Run ``lifespan`` (the app's own) inside the mesh's: the mesh starts first and stops last.

        ``FastAPI(lifespan=mesh.combine_lifespan(my_lifespan))``; state ``my_lifespan`` yields is kept.
        """

        @asynccontextmanager
        async def combined(app: Any) -> AsyncIterator[Any]:
            async with self.lifespan(app), lifespan(app) as state:
                try:
                    yield state
                finally:
                    self.health.drain()  # readiness turns 503 before the app's own shutdown begins

        return combined

    # --------------------------------------------------------------------------------------- routes

    def _build_router(self) -> APIRouter:
        router = APIRouter(tags=["mesh"])
        health = self.client.health

        def probe(body: dict[str, object]) -> JSONResponse:
            return JSONResponse(body, status_code=HealthManager.status_code(body))

        # Probes answer from the checks' last results: nothing runs on the probe path.
        @router.get("/health/live", summary="Liveness probe")
        async def live(verbose: bool = False) -> JSONResponse:
            return probe(health.liveness(verbose=verbose))

        @router.get("/health/ready", summary="Readiness probe")
        async def ready(verbose: bool = False) -> JSONResponse:
            return probe(health.readiness(verbose=verbose))

        @router.get("/health/startup", summary="Startup probe")
        async def startup(verbose: bool = False) -> JSONResponse:
            return probe(health.startup(verbose=verbose))

        client = self.client

        @router.get("/mesh/status", summary="Mesh state: endpoints, breakers, retries per upstream service")
        async def status() -> JSONResponse:
            return JSONResponse(client.get_metrics())

        registry = self.registry

        @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

        return router

    # ------------------------------------------------------------------------------------- policies

    def policy(
        self,
        *,
        timeout: float | str | None = None,
        bulkhead: int | None = None,
        queue: int = 0,
        fallback: Any = MISSING,
    ) -> Callable[[F], F]:
        """A route policy; goes under ``@app.get(...)``. See ``fastapi_mesh.resilience.policy``."""
        return RoutePolicy(
            clock=self.clock,
            service_name=self.settings.service_name,
            fallback_enabled=lambda service: self.settings.for_service(service).circuit_breaker.fallback_enabled,
            timeout=timeout,
            bulkhead=bulkhead,
            queue=queue,
            fallback=fallback,
        )

    # --------------------------------------------------------------------------------------- extras

    def on(self, name: str, handler: EventHandler) -> Callable[[], None]:
        """Subscribe to a mesh event; see ``MeshClient.on``."""
        return self.client.on(name, handler)

    def add_health_check(
        self,
        name: str,
        check: HealthCheckFn,
        *,
        kind: CheckKind = "readiness",
        critical: bool = True,
        interval: float | None = None,
        timeout: float | None = None,
        failure_threshold: int | None = None,
        success_threshold: int = 1,
    ) -> None:
        """Register a check behind ``/health/live``, ``/health/ready`` or ``/health/startup``; the keywords
        are those of ``health_check``."""
        self.health.add_check(
            name,
            check,
            kind=kind,
            critical=critical,
            interval=interval,
            timeout=timeout,
            failure_threshold=failure_threshold,
            success_threshold=success_threshold,
        )

    def health_check(
        self,
        name: str,
        *,
        kind: CheckKind = "readiness",
        critical: bool = True,
        interval: float | None = None,
        timeout: float | None = None,
        failure_threshold: int | None = None,
        success_threshold: int = 1,
    ) -> Callable[[C], C]:
        """Register the decorated callable (sync or async; returns True/None when healthy, False or raises
        when not) as a health check. ``None`` values take the ``health_check`` settings. Sync checks run in a
        worker thread, each check on its own ``interval``; ``failure_threshold`` failures in a row fail it,
        ``success_threshold`` passes in a row bring it back.

        >>> mesh = Mesh(MeshSettings())
        >>> @mesh.health_check("cache", critical=False, interval=5)
        ... async def cache_ok() -> bool:
        ...     return True
        """

        def register(check: C) -> C:
            self.add_health_check(
                name,
                check,
                kind=kind,
                critical=critical,
                interval=interval,
                timeout=timeout,
                failure_threshold=failure_threshold,
                success_threshold=success_threshold,
            )
            return check

        return register

    def get_liveness(self, *, verbose: bool = False) -> dict[str, object]:
        """What ``/health/live`` answers (seed style)."""
        return self.health.liveness(verbose=verbose)

    def get_readiness(self, *, verbose: bool = False) -> dict[str, object]:
        """What ``/health/ready`` answers (seed style)."""
        return self.health.readiness(verbose=verbose)

    def get_startup(self, *, verbose: bool = False) -> dict[str, object]:
        """What ``/health/startup`` answers."""
        return self.health.startup(verbose=verbose)


async def get_mesh(request: HTTPConnection) -> MeshClient:
    """FastAPI dependency: the app's ``MeshClient``, as a view carrying this request's caller address,
    deadline header and trace headers (so ip-hash, affinity, deadlines and trace context work without the
    middleware). Works in HTTP and WebSocket routes, and in an app mounted under the one whose lifespan
    runs the Mesh (when that is the process's only running Mesh)."""
    mesh: Mesh | None = getattr(request.app.state, STATE_KEY, None)
    if mesh is None and len(_RUNNING) == 1:
        mesh = _RUNNING[0]  # a mounted sub-app: its own state does not have the parent's Mesh
    if mesh is None:
        raise RuntimeError(
            "no running Mesh for this app: create it with FastAPI(lifespan=mesh.lifespan) "
            "(or run mesh.lifespan inside your own lifespan)"
            + (f"; {len(_RUNNING)} Meshes run in this process, so a mounted app cannot tell which" if _RUNNING else "")
        )
    inbound = current_inbound()
    if inbound is None:
        client = request.scope.get("client")
        inbound = InboundContext.from_headers(
            client[0] if client else None, request.scope.get("headers", ()), mesh.clock.now()
        )
    return mesh.client._bind(inbound)
