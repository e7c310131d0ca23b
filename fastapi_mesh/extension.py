"""``Mesh``: the FastAPI extension. One object per service gives it the client, probes, metrics, policies.

    mesh = Mesh(MeshSettings(service_name="api-gateway"))   # Mesh() alone reads MESH_* variables
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)    # /health/* /metrics /mesh/status /mesh/dashboard
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar, overload

import httpx
from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, Response
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import HTTPConnection, Request

from . import running
from .client import MeshClient
from .clock import Clock
from .context import inbound_for
from .discovery import Discovery
from .events import EventHandler
from .health.manager import CheckKind, HealthCheckFn, HealthManager
from .health.shutdown import DrainOnSignal
from .observability.dashboard import dashboard_page
from .observability.metrics import AuthorizationMetrics, InboundMetrics, MeshCollector, build_registry
from .observability.multiprocess import MultiprocessWriter, multiprocess_dir
from .options import AuthTypes, EventHook, HeaderTypes, QueryParamTypes
from .resilience.bulkhead import Bulkhead
from .resilience.fallback import MISSING
from .resilience.policy import RoutePolicy
from .security import identity
from .security.authorization import Authorization
from .security.authorization import logger as security_logger
from .settings import MeshSettings

__all__ = ["Mesh", "get_mesh"]

logger = logging.getLogger("fastapi_mesh.observability")

F = TypeVar("F", bound=Callable[..., Any])
H = TypeVar("H", bound=EventHandler)
C = TypeVar("C", bound=HealthCheckFn)
Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]




class Mesh:
    """The extension: ``lifespan``, ``router``, ``policy``, and the ``client`` routes get via ``get_mesh``.

    ``Mesh(settings=None, *, discovery=None, transport=None, clock=None, rng=None, headers=None, params=None,
    auth=None, event_hooks=None, tracer_provider=None)``; the keyword arguments go to the ``MeshClient`` it
    owns (``tracer_provider``: where its client spans and ``MeshMiddleware``'s server spans go).
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
        tracer_provider: TracerProvider | None = None,
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
            tracer_provider=tracer_provider,
        )
        self.clock: Clock = self.client._rt.clock
        self._collector = MeshCollector(self.client)
        shared_dir = multiprocess_dir()
        #: Where the mesh's collectors and metrics are registered (and, in one process, what /metrics serves).
        self.registry = build_registry(self.client, collector=self._collector, process=shared_dir is None)
        #: Inbound request counts, durations and requests in progress, recorded by ``MeshMiddleware``.
        self.inbound = InboundMetrics(self.registry, enabled=self.settings.observability.metrics)
        #: Several worker processes (``PROMETHEUS_MULTIPROC_DIR``): this one's series go to files there.
        self.multiprocess = (
            MultiprocessWriter([self._collector, self.inbound], shared_dir) if shared_dir is not None else None
        )
        self._served = self.registry if shared_dir is None else _multiprocess_registry(shared_dir)
        #: Callers refused by an allow list: counted (``mesh_authorization_denied_total``) and logged.
        self.authorization = Authorization(AuthorizationMetrics(self.registry))
        self.router = self._build_router()
        self.inbound.own_paths = frozenset(str(getattr(r, "path", "")) for r in self.router.routes)

    @property
    def health(self) -> HealthManager:
        return self.client.health

    # ------------------------------------------------------------------------------------- lifespan

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """``FastAPI(lifespan=mesh.lifespan)``. Starts the client (discovery, pool, health checks) and
        puts this Mesh on ``app.state``; on shutdown readiness turns 503 first, then everything stops.
        Adds no middleware (Starlette refuses middleware once the app has started)."""
        running.attach(self, app)
        await self.client.initialize()
        running.started(self)
        self._adopt_routes(app)
        if self.multiprocess is not None:
            self.multiprocess.start()
        if self.settings.mtls.allow and not identity.enforced_by_server():
            security_logger.warning(
                "mtls.allow is set but this server does not enforce it (run the app with `fastapi-mesh serve`); "
                "routes with @mesh.policy(allow=...) or require_identity(...) still check their own lists"
            )
        config = self.settings.health_check
        drain = DrainOnSignal(self.health, config.drain_delay, config.shutdown_grace)
        drain.install()  # under uvicorn: SIGTERM drains first (see fastapi_mesh.health.shutdown)
        try:
            yield
        finally:
            drain.uninstall()
            running.stopped(self)
            self.health.drain()
            await self.client.aclose()  # health loops, then discovery (deregistration), then connections
            if self.multiprocess is not None:
                await self.multiprocess.stop()

    def _adopt_routes(self, app: Any) -> None:
        """Find the app's routes under ``@mesh.policy``: their bulkheads are shown by route template (metrics,
        status) and, like their fallbacks, emit events; and the paths of the mesh's own routes, which are not
        counted in ``mesh_inbound_requests_in_progress``."""
        events = self.client._rt.events
        own = {getattr(route, "endpoint", None) for route in self.router.routes}
        own_paths = set(self.inbound.own_paths)
        for route in _routes(getattr(app, "routes", None) or ()):
            path = getattr(route, "path", None)
            endpoint = getattr(route, "endpoint", None)
            if not isinstance(path, str) or endpoint is None:
                continue
            if endpoint in own:
                own_paths.add(path)
            policy = getattr(endpoint, "__mesh_policy__", None)
            if isinstance(policy, RoutePolicy):
                policy.events = events
            bulkhead = getattr(endpoint, "__mesh_bulkhead__", None)
            if isinstance(bulkhead, Bulkhead):
                bulkhead.events = events
                bulkhead.route = path
                self._collector.route_bulkheads[path] = bulkhead
        self.inbound.own_paths = frozenset(own_paths)

    def status(self) -> dict[str, Any]:
        """What ``GET /mesh/status`` answers: ``client.status()`` plus ``routes`` (each route bulkhead by
        template: limit, active, queued, rejected) and ``inbound`` (requests in progress)."""
        return {
            **self.client.status(),
            "routes": {path: {"bulkhead": b.as_dict()} for path, b in self._collector.route_bulkheads.items()},
            "inbound": {"in_progress": self.inbound.in_progress},
        }

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

        observability = self.settings.observability
        if observability.status:

            @router.get("/mesh/status", summary="Mesh state per upstream service: endpoints, breaker, retries")
            async def status() -> JSONResponse:
                return JSONResponse(self.status())

        if observability.dashboard:
            page = dashboard_page(self.settings.service_name)

            @router.get("/mesh/dashboard", summary="Live dashboard of upstream services", response_class=HTMLResponse)
            async def dashboard() -> HTMLResponse:
                return HTMLResponse(page)

        served = self._served
        writer = self.multiprocess

        @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
        async def metrics(request: Request) -> Response:
            """Prometheus text format, or OpenMetrics for ``Accept: application/openmetrics-text``."""
            if writer is not None:
                writer.write()  # this worker's series as of now; the others' are at most a second old
            encode, content_type = choose_encoder(request.headers.get("accept", ""))
            return Response(encode(served), media_type=content_type)

        return router

    # ------------------------------------------------------------------------------------- policies

    def policy(
        self,
        *,
        timeout: float | str | None = None,
        bulkhead: int | None = None,
        queue: int = 0,
        fallback: Any = MISSING,
        allow: Sequence[str] | None = None,
    ) -> Callable[[F], F]:
        """A route policy; goes under ``@app.get(...)``. See ``fastapi_mesh.resilience.policy``.

        ``allow``: the caller identities (SPIFFE IDs, prefixes ending in ``*``) the route accepts; others get 403.
        """
        return RoutePolicy(
            clock=self.clock,
            service_name=self.settings.service_name,
            fallback_enabled=lambda service: self.settings.for_service(service).circuit_breaker.fallback_enabled,
            timeout=timeout,
            bulkhead=bulkhead,
            queue=queue,
            fallback=fallback,
            allow=allow,
            authorization=self.authorization,
        )

    # --------------------------------------------------------------------------------------- extras

    @overload
    def on(self, name: str, handler: H) -> Callable[[], None]: ...

    @overload
    def on(self, name: str, handler: None = None) -> Callable[[H], H]: ...

    def on(self, name: str, handler: H | None = None) -> Callable[[], None] | Callable[[H], H]:
        """Subscribe to a mesh event, or, without ``handler``, decorate the handler; see ``MeshClient.on``.

        >>> mesh = Mesh(MeshSettings())
        >>> @mesh.on("request:failure")
        ... def failed(event) -> None: ...
        """
        if handler is None:
            return self.client.on(name)
        return self.client.on(name, handler)

    def off(self, name: str, handler: EventHandler) -> None:
        """Unsubscribe ``handler`` from ``name``."""
        self.client.off(name, handler)

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
        success_threshold: int | None = 1,
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
        success_threshold: int | None = 1,
    ) -> Callable[[C], C]:
        """Register the decorated callable (sync or async; returns True/None when healthy, False or raises
        when not) as a health check. ``None`` values take the ``health_check`` settings (``success_threshold=None``
        included). Sync checks run in a worker thread, each check on its own ``interval``;
        ``failure_threshold`` failures in a row fail it, ``success_threshold`` passes in a row bring it back.

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


def _routes(routes: Sequence[Any]) -> Iterator[Any]:
    """Every route, those of mounted apps and routers included."""
    for route in routes:
        yield route
        inner = getattr(route, "routes", None)
        if inner and not hasattr(route, "endpoint"):
            yield from _routes(inner)


def _multiprocess_registry(path: str) -> CollectorRegistry:
    """What /metrics serves with several worker processes: every worker's files under ``path``."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        logger.warning(
            "PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported: metrics of your own "
            "(prometheus_client objects) are not shared between workers; set it before the process starts"
        )
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


async def get_mesh(request: HTTPConnection) -> MeshClient:
    """FastAPI dependency: the app's ``MeshClient``, as a view carrying this request's caller address,
    deadline header and trace headers (so ip-hash, affinity, deadlines and trace context work without the
    middleware). Works in HTTP and WebSocket routes, and in an app mounted under the one whose lifespan
    runs the Mesh (when that is the process's only running Mesh)."""
    mesh = running.running_mesh(request.app)
    if mesh is None:
        count = running.running_count()
        raise RuntimeError(
            "no running Mesh for this app: create it with FastAPI(lifespan=mesh.lifespan) "
            "(or run mesh.lifespan inside your own lifespan)"
            + (f"; {count} Meshes run in this process, so a mounted app cannot tell which" if count else "")
        )
    return mesh.client._bind(inbound_for(request.scope, mesh.clock.now()))
