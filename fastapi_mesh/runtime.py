"""What a ``MeshClient`` and all its per-request views share: the settings, event bus, discovery backend,
service table and health manager, and while started the connection pool, the layer stack and the
``httpx.AsyncClient`` that builds requests. ``Runtime.send`` is the direct path of a request into the stack.
"""

from __future__ import annotations

import datetime
import http.cookiejar
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from opentelemetry.trace import TracerProvider

from ._streams import ReleasingStream
from .clock import Clock, MonotonicClock
from .discovery import Discovery, build_discovery
from .events import EventBus
from .health.active import ActiveHealthChecker
from .health.manager import HealthManager
from .observability.tracing import MeshTracing, client_failed, configure_from_environment, end_client
from .options import AuthTypes, CookieTypes, EventHook, HeaderTypes, QueryParamTypes, as_auth, as_event_hooks
from .redirects import REDIRECT_STATUSES, redirect_request
from .services import Services
from .settings import MeshSettings
from .stack import build_connection_pool, build_stack

__all__ = ["Borrowed", "KeepNoCookies", "Runtime", "set_elapsed"]

#: httpx's own logger: one INFO line per call, in httpx's format, as a plain httpx client writes.
logger = logging.getLogger("httpx")


class KeepNoCookies(http.cookiejar.CookiePolicy):
    """The shared client's cookie policy: remember nothing an upstream sets, send nothing remembered.

    One ``MeshClient`` calls upstreams on behalf of many callers; a cookie one caller's call brought back
    must never ride along on another's. A cookie a call passes (``cookies=``) is sent with that call only.
    """

    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: Any) -> bool:
        return False


class Runtime:
    """What a client and all its per-request views share. Loop-bound parts exist only while started."""

    def __init__(
        self,
        settings: MeshSettings,
        transport: httpx.AsyncBaseTransport | None,
        clock: Clock | None,
        rng: random.Random | None,
        discovery: Discovery | None,
        headers: HeaderTypes | None = None,
        params: QueryParamTypes | None = None,
        auth: AuthTypes | None = None,
        event_hooks: Mapping[str, Sequence[EventHook]] | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        #: Client-level defaults, merged into each call's as httpx merges them (checked here, as httpx does).
        self.headers = httpx.Headers(headers) if headers is not None else None
        self.params = httpx.QueryParams(params) if params is not None else None
        self.auth = as_auth(auth)
        #: ``(request hooks, response hooks)``, or None when there are none (the fast path checks only that).
        self.hooks = as_event_hooks(event_hooks)
        #: Spans and trace propagation (``observability.tracing``), or None: then calls pay nothing for them.
        self.tracing = MeshTracing(tracer_provider) if settings.observability.tracing else None
        self.clock: Clock = clock or MonotonicClock()
        self.rng = rng or random.Random()
        self.events = EventBus()
        #: ``observability.metrics``: calls observe their duration (``mesh_upstream_request_duration_seconds``).
        self.observe = settings.observability.metrics
        self.user_transport = transport
        # Built from settings, a backend waits on real time (a test clock that jumps would spin its retry
        # loop); pass a backend object to control its clock.
        self.discovery: Discovery = discovery if discovery is not None else build_discovery(settings, rng=self.rng)
        self.services = Services(
            settings,
            self.rng,
            self.clock,
            self.events,
            on_new=self._watch,
            wait_for_sync=bool(getattr(self.discovery, "syncs_in_background", False)),
        )
        self.health = HealthManager(settings.health_check, settings.service_name, self.clock)
        for service in settings.discovery.critical_services:
            self._add_discovery_checks(service)
        self.http: httpx.AsyncClient | None = None
        #: The layer stack; calls go straight to it (``http`` builds their requests and redirect requests;
        #: nothing is sent through it: auth flows and redirects are driven in ``hops``).
        self.stack: httpx.AsyncBaseTransport | None = None
        #: The innermost connection layer while started (the caller's ``transport``, else the pool built from
        #: the settings); active health checks probe through it, with the same TLS, rotation included.
        self.pool: httpx.AsyncBaseTransport | None = None
        self.discovery_started = False
        self.closed = False

    def _add_discovery_checks(self, service: str) -> None:
        """A critical upstream service: start-up waits for its first sync, readiness for its endpoints."""
        services = self.services

        # Async, so they run on the event loop (sync checks run in a worker thread) at no cost.
        async def first_sync() -> bool:
            if not services.get(service).synced:
                raise RuntimeError(f"no answer from discovery for {service!r} yet")
            return True

        async def has_endpoints() -> bool:
            if not services.get(service).balancer.endpoints:
                raise RuntimeError(f"discovery knows no endpoints of {service!r}")
            return True

        # An empty set has already outlasted discovery.empty_grace: readiness fails at the first check.
        self.health.add_check(f"discovery-sync:{service}", first_sync, kind="startup", critical=True)
        self.health.add_check(
            f"discovery:{service}", has_endpoints, kind="readiness", critical=True, failure_threshold=1
        )

    def discovery_status(self) -> dict[str, Any]:
        """The backend and, per service, how its sync stands (``/mesh/status`` shows it under ``discovery``)."""
        status = getattr(self.discovery, "sync_status", None)
        services: dict[str, Any]
        if callable(status):
            live = self.services.states
            services = {name: s for name, s in status().items() if name in live}
        else:
            services = {
                name: {"synced": s.synced, "endpoints": len(s.balancer.endpoints)}
                for name, s in self.services.known().items()
            }
        backend = getattr(self.discovery, "backend", None) or self.settings.discovery.backend
        return {"backend": backend, "services": services}

    def _watch(self, service: str) -> None:
        if self.discovery_started:
            self.discovery.watch(service)
        self._start_active_check(service)

    def _start_active_check(self, service: str) -> None:
        """While running: start the active health checks of ``service`` if its policy enables them."""
        state = self.services.states.get(service)
        pool = self.pool
        if state is None or pool is None or not state.policy.active_health_check.enabled:
            return
        if state.active_check is None:
            state.active_check = ActiveHealthChecker(
                service,
                state.policy.active_health_check,
                state.balancer,
                clock=self.clock,
                rng=random.Random(self.rng.getrandbits(64)),
            )
        # Probes go where calls go, over the same pool: the same TLS context, which follows rotation, and the
        # server's identity checked against mtls.expected_identities (a new pool after each restart).
        state.active_check.start(transport=pool)

    async def start(self) -> httpx.AsyncClient:
        """Start (again, after ``stop``): connection pool, discovery, health checks."""
        if self.http is not None:
            return self.http
        self.closed = False
        pool = self.pool = self.user_transport or build_connection_pool(self.settings)
        stack = build_stack(pool, clock=self.clock, rng=self.rng, events=self.events)
        if self.tracing is not None and not self.tracing.provider_given:
            configure_from_environment(self.settings.service_name)
        self.stack = stack
        self.http = client = self.client_over(
            Borrowed(stack) if self.user_transport is not None else stack,
            http.cookiejar.CookieJar(KeepNoCookies()),
        )
        try:
            await self.discovery.start(self.services.feed)
            self.discovery_started = True
            for service in self.services.states:
                self.discovery.watch(service)
            for service in list(self.services.states):
                self._start_active_check(service)
            await self.health.start()
        except BaseException:
            # Half-started is not started: undo, so that the next start (on a new loop, say) starts afresh.
            await self.stop()
            self.closed = False
            raise
        return client

    def client_over(self, transport: httpx.AsyncBaseTransport, cookies: CookieTypes) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` over ``transport`` with the mesh's client settings: no proxies from the
        environment, no redirects unless a call asks, ``circuit_breaker.timeout`` per attempt (services with
        their own pass theirs per call), the client-level ``headers`` and ``params``, which its
        ``build_request`` merges into each call's."""
        return httpx.AsyncClient(
            transport=transport,
            trust_env=False,
            follow_redirects=False,
            cookies=cookies,
            timeout=self.settings.circuit_breaker.timeout,
            headers=self.headers,
            params=self.params,
        )

    async def send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """``request`` through the stack, as ``httpx.AsyncClient.send`` would send it with this runtime's
        client settings (no auth, no redirects, no cookie jar), minus the machinery those need."""
        stack = self.stack
        if stack is None:  # stopped between the call's start and here
            raise RuntimeError("this MeshClient was closed while the call was starting")
        if not isinstance(request.stream, httpx.AsyncByteStream):
            raise RuntimeError("Attempted to send an sync request with an AsyncClient instance.")  # httpx's words
        # Tracing on: a client span covers everything the stack does for the request (one check when off).
        span = self.tracing.start_client(request) if self.tracing is not None else None
        start = time.perf_counter()
        try:
            response = await stack.handle_async_request(request)
        except BaseException as exc:
            if isinstance(exc, httpx.RequestError):
                exc.request = request  # as httpx does: errors name the request the caller made
            if span is not None:
                client_failed(span, request, exc)
            raise
        if span is not None:
            end_client(span, request, response)
        response.request = request
        if stream:
            response.stream = ReleasingStream(
                response.stream,  # type: ignore[arg-type]
                lambda: set_elapsed(response, start),
            )
        else:
            if not response.is_closed:  # the attempt layer read the body; this decodes it (gzip ...)
                await response.aread()
            set_elapsed(response, start)
        if response.status_code in REDIRECT_STATUSES and "location" in response.headers and self.http is not None:
            try:
                response.next_request = redirect_request(self.http, request, response)
            except BaseException:  # a Location httpx cannot use: as httpx, raise; first free what is held
                await response.aclose()
                raise
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                'HTTP Request: %s %s "%s %d %s"',
                request.method,
                request.url,
                response.http_version,
                response.status_code,
                response.reason_phrase,
            )
        return response

    async def lazy_start(self) -> httpx.AsyncClient:
        """The first call of a client nobody started starts it; a closed one stays closed."""
        if self.closed:
            raise RuntimeError(
                "this MeshClient is closed (its lifespan ended or aclose() was called); "
                "start it again with `await client.initialize()` or `async with client:`"
            )
        return await self.start()

    async def stop(self) -> None:
        self.closed = True
        client, self.http = self.http, None
        self.stack = self.pool = None
        for state in list(self.services.states.values()):
            if state.active_check is not None:
                await state.active_check.stop()
        await self.health.stop()
        if self.discovery_started:
            self.discovery_started = False
            await self.discovery.stop()
        if client is not None:
            await client.aclose()


class Borrowed(httpx.AsyncBaseTransport):
    """The stack over a transport the caller passed in: closing the client leaves theirs open."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.handle_async_request = inner.handle_async_request  # type: ignore[method-assign]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:  # pragma: no cover
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def set_elapsed(response: httpx.Response, start: float) -> None:
    response.elapsed = datetime.timedelta(seconds=time.perf_counter() - start)
