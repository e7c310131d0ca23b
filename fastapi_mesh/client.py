"""``MeshClient``: httpx's API addressed by service name, through the mesh's layer stack.

>>> async def main() -> None:
...     async with MeshClient(MeshSettings(discovery={"endpoints": {"users": ["http://10.0.0.1:8080"]}})) as c:
...         response = await c.get("users", "/api/users", params={"page": 2}, deadline=1.5)
...         response.raise_for_status()
"""

from __future__ import annotations

import datetime
import http.cookiejar
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar, overload

import httpx
from opentelemetry.trace import TracerProvider

from ._streams import ReleasingStream
from .clock import Clock, MonotonicClock
from .context import EXTENSION, CallContext, InboundContext, _inbound, _route_deadline
from .discovery import Discovery, build_discovery
from .errors import MeshError
from .events import (
    ALIASES,
    EVENTS,
    FALLBACK_USED,
    REQUEST_FAILURE,
    REQUEST_SUCCESS,
    EventBus,
    EventHandler,
    FallbackUsed,
    RequestEvent,
)
from .health.active import ActiveHealthChecker
from .health.manager import HealthManager
from .observability.tracing import MeshTracing, client_failed, configure_from_environment, end_client
from .registry import ServiceRegistry, ServiceState
from .resilience.breaker import CircuitBreaker
from .resilience.fallback import MISSING, call_fallback, request_of
from .settings import MeshSettings
from .stack import build_connection_pool, build_stack

__all__ = ["MeshClient", "create_service_mesh_client"]

#: httpx's own logger: one INFO line per call, in httpx's format, as a plain httpx client writes.
logger = logging.getLogger("httpx")


_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: httpx's default ``max_redirects``: a call following redirects raises ``httpx.TooManyRedirects`` past it.
MAX_REDIRECTS = 20
_Cookies = httpx.Cookies | http.cookiejar.CookieJar | dict[str, str] | list[tuple[str, str]] | None
#: What httpx accepts as ``headers=``, ``params=`` and ``auth=``.
HeaderTypes = (
    httpx.Headers
    | Mapping[str, str]
    | Mapping[bytes, bytes]
    | Sequence[tuple[str, str]]
    | Sequence[tuple[bytes, bytes]]
)
_Primitive = str | int | float | bool | None
QueryParamTypes = (
    httpx.QueryParams
    | Mapping[str, _Primitive | Sequence[_Primitive]]
    | list[tuple[str, _Primitive]]
    | tuple[tuple[str, _Primitive], ...]
    | str
    | bytes
)
AuthTypes = httpx.Auth | tuple[str | bytes, str | bytes] | Callable[[httpx.Request], httpx.Request]
#: An event hook, as for ``httpx.AsyncClient``: an async callable taking the request or the response.
EventHook = Callable[[Any], Awaitable[object]]
H = TypeVar("H", bound=EventHandler)


class _KeepNoCookies(http.cookiejar.CookiePolicy):
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


class _Runtime:
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
        self.auth = _as_auth(auth)
        #: ``(request hooks, response hooks)``, or None when there are none (the fast path checks only that).
        self.hooks = _event_hooks(event_hooks)
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
        self.registry = ServiceRegistry(
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
        #: nothing is sent through it: auth flows and redirects are driven in this module).
        self.stack: httpx.AsyncBaseTransport | None = None
        #: The innermost connection layer while started (the caller's ``transport``, else the pool built from
        #: the settings); active health checks probe through it, with the same TLS, rotation included.
        self.pool: httpx.AsyncBaseTransport | None = None
        self.discovery_started = False
        self.closed = False

    def _add_discovery_checks(self, service: str) -> None:
        """A critical upstream service: start-up waits for its first sync, readiness for its endpoints."""
        registry = self.registry

        # Async, so they run on the event loop (sync checks run in a worker thread) at no cost.
        async def first_sync() -> bool:
            if not registry.get(service).synced:
                raise RuntimeError(f"no answer from discovery for {service!r} yet")
            return True

        async def has_endpoints() -> bool:
            if not registry.get(service).balancer.endpoints:
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
            live = self.registry.services
            services = {name: s for name, s in status().items() if name in live}
        else:
            services = {
                name: {"synced": s.synced, "endpoints": len(s.balancer.endpoints)}
                for name, s in self.registry.known().items()
            }
        backend = getattr(self.discovery, "backend", None) or self.settings.discovery.backend
        return {"backend": backend, "services": services}

    def _watch(self, service: str) -> None:
        if self.discovery_started:
            self.discovery.watch(service)
        self._start_active_check(service)

    def _start_active_check(self, service: str) -> None:
        """While running: start the active health checks of ``service`` if its policy enables them."""
        state = self.registry.services.get(service)
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
            _Borrowed(stack) if self.user_transport is not None else stack,
            http.cookiejar.CookieJar(_KeepNoCookies()),
        )
        try:
            await self.discovery.start(self.registry.feed)
            self.discovery_started = True
            for service in self.registry.services:
                self.discovery.watch(service)
            for service in list(self.registry.services):
                self._start_active_check(service)
            await self.health.start()
        except BaseException:
            # Half-started is not started: undo, so that the next start (on a new loop, say) starts afresh.
            await self.stop()
            self.closed = False
            raise
        return client

    def client_over(self, transport: httpx.AsyncBaseTransport, cookies: _Cookies) -> httpx.AsyncClient:
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
                lambda: _set_elapsed(response, start),
            )
        else:
            if not response.is_closed:  # the attempt layer read the body; this decodes it (gzip ...)
                await response.aread()
            _set_elapsed(response, start)
        if response.status_code in _REDIRECTS and "location" in response.headers and self.http is not None:
            try:
                response.next_request = _redirect_request(self.http, request, response)
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
        for state in list(self.registry.services.values()):
            if state.active_check is not None:
                await state.active_check.stop()
        await self.health.stop()
        if self.discovery_started:
            self.discovery_started = False
            await self.discovery.stop()
        if client is not None:
            await client.aclose()


class _Borrowed(httpx.AsyncBaseTransport):
    """The stack over a transport the caller passed in: closing the client leaves theirs open."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.handle_async_request = inner.handle_async_request  # type: ignore[method-assign]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:  # pragma: no cover
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class MeshClient:
    """A resilient httpx client that addresses upstreams by service name.

    ``MeshClient(settings=None, *, transport=None, clock=None, rng=None, discovery=None, headers=None,
    params=None, auth=None, event_hooks=None, tracer_provider=None)``: ``transport`` replaces the innermost
    connection layer (e.g. ``httpx.MockTransport``); ``clock`` and ``rng`` make timing and randomness exact in
    tests; ``discovery`` replaces the backend the settings name; ``tracer_provider`` is where the spans go
    when ``observability.tracing`` is on (default: the global provider).

    ``headers``, ``params`` and ``auth`` are defaults for every call, as on ``httpx.AsyncClient``: a call's
    own headers win (names compared case-insensitively), its params are merged over the client's (a name
    the call gives replaces the client's values for it), and its ``auth=`` replaces the client's
    (``auth=None`` sends none). ``event_hooks={"request": [...], "response": [...]}`` takes async callables,
    as ``httpx.AsyncClient`` does: request hooks get each request before it is sent, response hooks each
    response (its body already read unless streamed). They run once per request httpx would send: once per
    call, plus once per followed redirect hop or auth step; never per retry or hedge, which the stack makes
    below them. An exception a hook raises ends the call with it.

    >>> client = MeshClient(
    ...     MeshSettings(discovery={"endpoints": {"users": ["http://10.0.0.1:8080"]}}),
    ...     headers={"x-tenant": "acme"},
    ...     auth=("gateway", "secret"),
    ... )

    Use it as ``async with MeshClient(settings) as client:``, or call ``await client.initialize()`` and
    ``await client.aclose()``. Inside FastAPI, take it with ``Depends(get_mesh)``.
    """

    __slots__ = ("_inbound", "_owner", "_rt")

    def __init__(
        self,
        settings: MeshSettings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        discovery: Discovery | None = None,
        headers: HeaderTypes | None = None,
        params: QueryParamTypes | None = None,
        auth: AuthTypes | None = None,
        event_hooks: Mapping[str, Sequence[EventHook]] | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self._rt = _Runtime(
            settings if settings is not None else MeshSettings(),
            transport,
            clock,
            rng,
            discovery,
            headers=headers,
            params=params,
            auth=auth,
            event_hooks=event_hooks,
            tracer_provider=tracer_provider,
        )
        self._inbound: InboundContext | None = None
        self._owner = True

    # ------------------------------------------------------------------------------------- lifecycle

    async def initialize(self) -> None:
        """Start discovery, health checks and the connection pool (``async with`` does this for you)."""
        await self._rt.start()

    async def aclose(self) -> None:
        """Stop background work and close pooled connections. A per-request view closes nothing."""
        if self._owner:
            await self._rt.stop()

    async def __aenter__(self) -> MeshClient:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _bind(self, inbound: InboundContext | None) -> MeshClient:
        """A light view of this client that carries one inbound request's caller, deadline and headers."""
        view = MeshClient.__new__(MeshClient)
        view._rt = self._rt
        view._inbound = inbound
        view._owner = False
        return view

    @property
    def settings(self) -> MeshSettings:
        return self._rt.settings

    @property
    def health(self) -> HealthManager:
        return self._rt.health

    @property
    def discovery(self) -> Discovery:
        return self._rt.discovery

    # -------------------------------------------------------------------------------------- requests

    def _prepare(
        self, service: str, path: str, deadline: float | None, affinity_key: str | None, kwargs: dict[str, Any]
    ) -> tuple[ServiceState, CallContext, httpx.URL, float | None]:
        """The call's service, context and URL, and the clock time ``_deadline`` read (None: it read none)."""
        rt = self._rt
        state = rt.registry.get(service)
        inbound = self._inbound if self._inbound is not None else _inbound.get()
        ctx = CallContext(state, None, inbound, affinity_key)
        now = self._deadline(ctx, deadline, inbound)
        extensions = kwargs.get("extensions")
        kwargs["extensions"] = {**extensions, EXTENSION: ctx} if extensions else {EXTENSION: ctx}
        if state.attempt_timeout is not None and "timeout" not in kwargs:
            kwargs["timeout"] = state.attempt_timeout
        if inbound is not None and inbound.forward:
            headers = httpx.Headers(inbound.forward)
            if kwargs.get("headers"):
                headers.update(kwargs["headers"])
            kwargs["headers"] = headers
        return state, ctx, state.url(path), now

    def _deadline(
        self, ctx: CallContext, call_deadline: float | None, inbound: InboundContext | None
    ) -> float | None:
        """Set ``ctx.deadline``: the earliest of the route's, the inbound header's, ``deadline=`` and
        ``retry.max_elapsed``. Only the first three arm the call's timer (``ctx.timed``): ``max_elapsed``
        alone caps attempt timeouts and stops retries, at no per-call timer cost. Returns the clock time
        it read, if it needed one."""
        best = _route_deadline.get()
        if inbound is not None and inbound.deadline is not None and (best is None or inbound.deadline < best):
            best = inbound.deadline
        max_elapsed = ctx.service.policy.retry.max_elapsed
        if call_deadline is not None or max_elapsed is not None:
            now = self._rt.clock.now()
            if call_deadline is not None and (best is None or now + call_deadline < best):
                best = now + call_deadline
            if best is not None:
                ctx.timed = True
            if max_elapsed is not None and (best is None or now + max_elapsed < best):
                best = now + max_elapsed
                ctx.timed = False
            ctx.deadline = best
            return now
        if best is not None:
            ctx.timed = True
        ctx.deadline = best
        return None

    async def request(
        self,
        method: str,
        service: str,
        path: str,
        *,
        deadline: float | None = None,
        fallback: Any = MISSING,
        affinity_key: str | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send ``method`` to ``service`` at ``path``; ``kwargs`` are httpx's own (``params``, ``json``,
        ``headers``, ``timeout`` per attempt ...). ``deadline`` (seconds) bounds the whole call;
        ``fallback`` answers when the mesh cannot (a value, a Response, or a callable taking the error);
        ``affinity_key`` pins the call for session affinity and ``ip-hash``."""
        rt = self._rt
        http = rt.http if rt.http is not None else await rt.lazy_start()
        state, ctx, url, now = self._prepare(service, path, deadline, affinity_key, kwargs)
        events = rt.events
        observe = rt.observe
        # Durations are for the latency histogram and event subscribers: the call starts when its deadline
        # was set (no second clock read), else no clock read when neither wants one.
        start = now if now is not None else rt.clock.now() if observe or events._handlers else 0.0
        state.requests += 1
        try:
            if state.sync_pending and not state.balancer.endpoints:  # discovery has not answered for it yet
                await rt.registry.wait_for_first_sync(state, ctx.deadline)
            response = await _dispatch(rt, http, method, url, kwargs, stream=False)
        except MeshError as exc:
            state.failures += 1
            if observe:
                state.durations.observe_call(method, None, rt.clock.now() - start)
            self._emit(REQUEST_FAILURE, ctx, method, None, start, exc)
            if fallback is not MISSING and state.fallback_enabled:
                self._fell_back(service, None, exc)
                return await call_fallback(fallback, exc, request_of(exc))
            raise
        status = response.status_code
        if observe:
            state.durations.observe_call(method, status, rt.clock.now() - start)
        if status >= 500:
            state.failures += 1
            self._emit(REQUEST_FAILURE, ctx, method, status, start, None)
            if fallback is not MISSING and state.fallback_enabled:
                self._fell_back(service, status, None)
                return await _status_fallback(fallback, service, response)
        else:
            state.successes += 1
            if events._handlers:  # nobody listening (the usual case): not even a call
                self._emit(REQUEST_SUCCESS, ctx, method, status, start, None)
        return response

    def _emit(
        self,
        name: str,
        ctx: CallContext,
        method: str,
        status: int | None,
        start: float,
        error: BaseException | None,
    ) -> None:
        events = self._rt.events
        if events.wants(name):
            endpoint = ctx.endpoint.url if ctx.endpoint is not None else None
            duration = self._rt.clock.now() - start
            events.emit(
                name, RequestEvent(ctx.service.name, endpoint, method, status, duration, ctx.attempts, error)
            )

    def _fell_back(self, service: str, status: int | None, error: BaseException | None) -> None:
        events = self._rt.events
        if events.wants(FALLBACK_USED):
            events.emit(FALLBACK_USED, FallbackUsed(service, None, status, error))

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        service: str,
        path: str,
        *,
        deadline: float | None = None,
        fallback: Any = MISSING,
        affinity_key: str | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[httpx.Response]:
        """Like ``httpx.AsyncClient.stream``: the body is not read; the endpoint's slot is held until the
        stream closes. The deadline covers getting the response head, not reading the body. ``fallback``
        answers as for ``request()``: when no response head came, or the head is a 5xx (that stream is
        closed unread and the fallback's response is yielded instead)."""
        rt = self._rt
        http = rt.http if rt.http is not None else await rt.lazy_start()
        state, ctx, url, now = self._prepare(service, path, deadline, affinity_key, kwargs)
        ctx.stream = True
        state.requests += 1
        events = rt.events
        observe = rt.observe
        start = now if now is not None else rt.clock.now() if observe or events._handlers else 0.0
        try:
            if state.sync_pending and not state.balancer.endpoints:
                await rt.registry.wait_for_first_sync(state, ctx.deadline)
            response = await _dispatch(rt, http, method, url, kwargs, stream=True)
        except MeshError as exc:
            state.failures += 1
            if observe:
                state.durations.observe_call(method, None, rt.clock.now() - start)
            self._emit(REQUEST_FAILURE, ctx, method, None, start, exc)
            if fallback is MISSING or not state.fallback_enabled:
                raise
            self._fell_back(service, None, exc)
            response = await call_fallback(fallback, exc, request_of(exc))
            yield response
            return
        status = response.status_code
        if observe:
            state.durations.observe_call(method, status, rt.clock.now() - start)
        if status >= 500:
            state.failures += 1
            self._emit(REQUEST_FAILURE, ctx, method, status, start, None)
            if fallback is not MISSING and state.fallback_enabled:
                self._fell_back(service, status, None)
                await response.aclose()
                yield await _status_fallback(fallback, service, response)
                return
        else:
            state.successes += 1
            if events._handlers:
                self._emit(REQUEST_SUCCESS, ctx, method, status, start, None)
        try:
            yield response
        finally:
            await response.aclose()

    async def get(self, service: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", service, path, **kwargs)

    async def post(self, service: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", service, path, **kwargs)

    async def put(self, service: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PUT", service, path, **kwargs)

    async def patch(self, service: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PATCH", service, path, **kwargs)

    async def delete(self, service: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("DELETE", service, path, **kwargs)

    async def head(self, service: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("HEAD", service, path, **kwargs)

    async def options(self, service: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("OPTIONS", service, path, **kwargs)

    # ------------------------------------------------------------------------ seed-style helpers

    @overload
    def on(self, name: str, handler: H) -> Callable[[], None]: ...

    @overload
    def on(self, name: str, handler: None = None) -> Callable[[H], H]: ...

    def on(self, name: str, handler: H | None = None) -> Callable[[], None] | Callable[[H], H]:
        """Subscribe ``handler`` (sync or async, taking the event) to the event ``name``, e.g.
        ``"request-failure"`` or ``"circuit-breaker:open"`` (``fastapi_mesh.events.EVENTS``; the older names in
        ``ALIASES`` work too); returns a function that unsubscribes it. Without ``handler``, a decorator:

        >>> client = MeshClient()
        >>> @client.on("circuit-breaker:open")
        ... async def page(event) -> None: ...
        """
        if name not in EVENTS and name not in ALIASES:
            raise ValueError(f"no event {name!r}; the events are {', '.join(sorted(EVENTS))}")
        if handler is None:
            return self._rt.events.on(name)
        return self._rt.events.on(name, handler)

    def off(self, name: str, handler: EventHandler) -> None:
        """Unsubscribe ``handler`` from ``name`` (what the function ``on`` returned does)."""
        self._rt.events.off(name, handler)

    def circuit_breaker(self, service: str) -> CircuitBreaker:
        """The breaker of ``service``, for reading its ``state`` or ``force_open()`` / ``disable()`` / ``reset()``."""
        return self._rt.registry.get(service).breaker

    def get_liveness(self) -> dict[str, object]:
        return self._rt.health.liveness()

    def get_readiness(self) -> dict[str, object]:
        return self._rt.health.readiness()

    def get_startup(self) -> dict[str, object]:
        return self._rt.health.startup()

    def get_metrics(self) -> dict[str, Any]:
        """A snapshot per upstream service: ``load_balancer`` (endpoints), ``circuit_breakers``, ``bulkheads``,
        ``retry`` and ``requests`` counters, ``discovery`` (backend, and per service: synced, stale, errors,
        last sync) and ``active_health_checks`` (per service with them on: each endpoint's last result)."""
        services = self._rt.registry.known()  # not every name somebody called: that is unbounded
        return {
            "service": self._rt.settings.service_name,
            "environment": self._rt.settings.environment,
            "load_balancer": {name: s.balancer.as_dict() for name, s in services.items()},
            "circuit_breakers": {name: s.breaker.as_dict() for name, s in services.items()},
            "bulkheads": {name: s.bulkhead.as_dict() for name, s in services.items() if s.bulkhead is not None},
            "retry": {
                name: {
                    "retries": s.retries,
                    "retries_exhausted": s.retries_exhausted,
                    "hedges": s.hedges,
                    "budget": s.budget.as_dict(),
                }
                for name, s in services.items()
            },
            "requests": {
                name: {"total": s.requests, "successes": s.successes, "failures": s.failures}
                for name, s in services.items()
            },
            "discovery": self._rt.discovery_status(),
            "active_health_checks": {
                name: s.active_check.as_dict() for name, s in services.items() if s.active_check is not None
            },
        }

    def status(self) -> dict[str, Any]:
        """What ``/mesh/status`` answers: ``get_metrics()``'s sections, plus ``generated_at`` (Unix time),
        ``metrics`` (whether calls are timed) and ``services``: per upstream service, at a glance, its breaker
        state, request counts, calls in flight, call durations (a histogram: ``bounds`` in seconds and
        ``counts`` per bucket, the last one above the last bound; None with ``observability.metrics`` off),
        endpoints (each with ``state``: ``healthy``, ``unhealthy`` (failing active checks) or ``ejected``),
        retry budget, bulkhead and discovery sync. The layout is in docs/operations.md."""
        document = self.get_metrics()
        sync = document["discovery"]["services"]
        observed = self._rt.observe
        services: dict[str, Any] = {}
        for name, state in self._rt.registry.known().items():
            breaker = document["circuit_breakers"][name]
            budget = document["retry"][name]["budget"]
            ejections = state.balancer.outlier.as_dict()
            endpoints = []
            for endpoint in state.balancer.endpoints:
                outlier = ejections.get(endpoint.url)
                ejected = bool(outlier and outlier["ejected"])
                endpoints.append(
                    {
                        "url": endpoint.url,
                        "state": "ejected" if ejected else "healthy" if endpoint.healthy else "unhealthy",
                        "weight": endpoint.weight,
                        "zone": endpoint.endpoint.zone,
                        "in_flight": endpoint.in_flight,
                        "requests": endpoint.requests,
                        "failures": endpoint.failures,
                        "ewma_ms": round(endpoint.ewma * 1000, 3),
                        "ejections": outlier["ejections"] if outlier else 0,
                        "ejected_for_s": outlier["ejected_for_s"] if outlier else 0.0,
                    }
                )
            merged = state.durations.merged()
            services[name] = {
                "breaker": breaker["state"],
                "failure_rate": breaker["failure_rate"],
                "requests": {"total": state.requests, "successes": state.successes, "failures": state.failures},
                "in_flight": sum(e.in_flight for e in state.balancer.endpoints),
                "durations": {"bounds": list(state.durations.buckets), "counts": merged[:-1], "sum": merged[-1]}
                if observed
                else None,
                "endpoints": endpoints,
                "retries": state.retries,
                "retry_budget": {"available": budget["available"], "exhausted": budget["exhausted"]},
                "bulkhead": state.bulkhead.as_dict() if state.bulkhead is not None else None,
                "discovery": sync.get(name),
            }
        return {**document, "generated_at": time.time(), "metrics": observed, "services": services}


def _dispatch(
    rt: _Runtime, http: httpx.AsyncClient, method: str, url: httpx.URL, kwargs: dict[str, Any], *, stream: bool
) -> Coroutine[Any, Any, httpx.Response]:
    """Build the call's request with httpx and send it: straight to the stack, or, for a call with auth
    (its own or the client's), redirects to follow or event hooks, through ``_send_with_client``."""
    auth = rt.auth
    follow = False
    if "auth" in kwargs or "follow_redirects" in kwargs:
        given = kwargs.pop("auth", httpx.USE_CLIENT_DEFAULT)
        if given is not httpx.USE_CLIENT_DEFAULT:
            auth = _as_auth(given)
        redirects = kwargs.pop("follow_redirects", False)
        follow = redirects is not httpx.USE_CLIENT_DEFAULT and bool(redirects)
    request = http.build_request(method, url, **kwargs)
    if auth is None and not follow and rt.hooks is None:
        return rt.send(request, stream=stream)
    return _send_with_client(rt, request, auth, follow, kwargs.get("cookies"), stream=stream)


async def _send_with_client(
    rt: _Runtime, request: httpx.Request, auth: httpx.Auth | None, follow: bool, cookies: _Cookies, *, stream: bool
) -> httpx.Response:
    """``request`` with the client machinery ``httpx.AsyncClient.send`` has, driven here over the stack as
    httpx drives it: the auth flow outermost, the redirect loop inside it, event hooks around each request
    sent. Each request after the first (an auth step, a followed redirect) is a new hop through the stack,
    with attempts of its own; the deadline is shared.

    Redirects are followed only within the service (to its logical address or one of its endpoints), up to
    ``MAX_REDIRECTS``; a redirect anywhere else is returned unfollowed, with its ``next_request``, as the mesh
    can only send to the service's endpoints. httpx builds each redirect request (method change on 301/302/
    303, body dropped with the method, ``Authorization`` dropped for another origin, which the service's
    addresses are not to each other: within the service it is kept). A cookie jar of the call's own holds
    its ``cookies=`` and what the hops set, for the next hop of that call only (a login redirect works), and
    is gone with the call, so nothing reaches another caller's calls."""
    hops = _Hops(rt, request, follow, cookies, stream)
    if auth is None:
        return await hops.send(request, [])
    flow = auth.async_auth_flow(request)
    history: list[httpx.Response] = []
    try:
        request = await flow.__anext__()
        while True:
            response = await hops.send(request, history)
            try:
                try:
                    following = await flow.asend(response)
                except StopAsyncIteration:
                    return response
                response.history = list(history)
                await response.aread()
                history.append(response)
                request = hops.next_step(following)
            except BaseException:
                await response.aclose()
                raise
    finally:
        await flow.aclose()


class _Hops:
    """One call's requests through the stack: redirect hops followed, hooks run, the call's cookie jar."""

    __slots__ = ("cookies", "ctx", "extensions", "follow", "jar", "rt", "stream")

    def __init__(self, rt: _Runtime, request: httpx.Request, follow: bool, cookies: _Cookies, stream: bool) -> None:
        self.rt = rt
        self.extensions = request.extensions
        self.ctx: CallContext = request.extensions[EXTENSION]
        self.follow = follow
        self.cookies = cookies
        self.jar: httpx.Cookies | None = None  # made when a followed hop needs it (cookies to send or set)
        self.stream = stream

    def next_step(self, request: httpx.Request) -> httpx.Request:
        """A request an auth flow yields after the first: a new hop (the same request changed, usually; a new
        one gets the call's context and timeouts)."""
        if EXTENSION not in request.extensions:
            request.extensions = {**self.extensions, **request.extensions}
        self.ctx.new_hop()
        return request

    async def send(self, request: httpx.Request, history: list[httpx.Response]) -> httpx.Response:
        """As httpx's redirect loop: hooks, send, and while a redirect within the service is to be followed,
        read it and send the next request."""
        rt = self.rt
        hooks = rt.hooks
        while True:
            if hooks is not None:
                for hook in hooks[0]:
                    await hook(request)
            response = await rt.send(request, stream=self.stream)
            try:
                if hooks is not None:
                    for hook in hooks[1]:
                        await hook(response)
                if history:
                    response.history = list(history)
                following = response.next_request
                if following is None or not self.follow or not _within(self.ctx.service, following.url):
                    return response
                if len(history) >= MAX_REDIRECTS:
                    raise httpx.TooManyRedirects("Exceeded maximum allowed redirects.", request=following)
                credentials = request.headers.get("authorization")
                if credentials is not None and "authorization" not in following.headers:
                    # httpx dropped it for another endpoint's address; the service is one origin
                    following.headers["authorization"] = credentials
                jar = self.jar
                if "set-cookie" in response.headers or (jar is None and self.cookies):
                    if jar is None:
                        jar = self.jar = httpx.Cookies(self.cookies)
                    jar.extract_cookies(response)
                if jar:  # an empty jar would add nothing: skip the cookie machinery
                    jar.set_cookie_header(following)
                await response.aread()  # a streamed hop: read (which closes it and frees its slots)
            except BaseException:
                await response.aclose()  # a body that failed to arrive still gives its slots back
                raise
            history = [*history, response]
            self.ctx.new_hop()
            request = following


def _redirect_request(http: httpx.AsyncClient, request: httpx.Request, response: httpx.Response) -> httpx.Request:
    """The request a redirect asks for, as httpx's ``_build_redirect_request`` builds it, only with the
    usual Location (a path on the same server) resolved through the service's cache of parsed URLs rather
    than parsed and joined afresh, which costs more than the rest of the hop's stack. Cookies are left out:
    the shared client's jar never holds any."""
    location = response.headers["location"]
    if location[:1] != "/" or location[:2] == "//" or request.url.fragment:
        return http._build_redirect_request(request, response)
    ctx: CallContext = request.extensions[EXTENSION]
    try:
        path = ctx.service.url(location)._uri_reference  # dot segments removed, as httpx's join does
        base = request.url._uri_reference
    except (httpx.InvalidURL, AttributeError):  # httpx's own path raises httpx's error for a bad Location
        return http._build_redirect_request(request, response)
    url = _NEW_URL(httpx.URL)
    url._uri_reference = _NEW_TUPLE(
        type(base), (base.scheme, base.userinfo, base.host, base.port, path.path, path.query, path.fragment)
    )
    method = http._redirect_method(request, response)
    return httpx.Request(
        method,
        url,
        headers=http._redirect_headers(request, url, method),
        stream=http._redirect_stream(request, method),
        extensions=request.extensions,
    )


_NEW_TUPLE = tuple.__new__
_NEW_URL = httpx.URL.__new__


def _as_auth(auth: object) -> httpx.Auth | None:
    """``auth=`` as httpx takes it: an ``httpx.Auth``, a ``(username, password)`` tuple, a callable that
    changes the request, or None."""
    if auth is None or isinstance(auth, httpx.Auth):
        return auth
    if isinstance(auth, tuple):
        return httpx.BasicAuth(username=auth[0], password=auth[1])
    if callable(auth):
        return _FunctionAuth(auth)
    raise TypeError(f'Invalid "auth" argument: {auth!r}')  # httpx's words


class _FunctionAuth(httpx.Auth):
    """A callable as ``auth=``: it gets the request and returns the one to send, as httpx does."""

    def __init__(self, func: Callable[[httpx.Request], httpx.Request]) -> None:
        self._func = func

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        yield self._func(request)


def _event_hooks(
    event_hooks: Mapping[str, Sequence[EventHook]] | None,
) -> tuple[tuple[EventHook, ...], tuple[EventHook, ...]] | None:
    """``event_hooks`` as ``(request hooks, response hooks)``, or None when there are none."""
    if not event_hooks:
        return None
    unknown = sorted(set(event_hooks) - {"request", "response"})
    if unknown:
        raise ValueError(f"event_hooks: unknown event(s) {unknown}; the events are 'request' and 'response'")
    hooks = tuple(event_hooks.get("request", ())), tuple(event_hooks.get("response", ()))
    return hooks if hooks[0] or hooks[1] else None


def _within(service: ServiceState, url: httpx.URL) -> bool:
    """Whether ``url`` addresses ``service``: its logical ``http://<name>`` or one of its endpoints."""
    origin = (url.scheme, url.host, url.port)
    if origin == ("http", service.name, None):
        return True
    return any((e.scheme, e.host, e.port) == origin for e in (s.endpoint for s in service.balancer.endpoints))


async def _status_fallback(fallback: Any, service: str, response: httpx.Response) -> httpx.Response:
    """A per-call fallback's answer to a final 5xx, which it gets as an ``httpx.HTTPStatusError``."""
    error = httpx.HTTPStatusError(
        f"{response.status_code} from service {service!r}", request=response.request, response=response
    )
    return await call_fallback(fallback, error, response.request)


def _set_elapsed(response: httpx.Response, start: float) -> None:
    response.elapsed = datetime.timedelta(seconds=time.perf_counter() - start)



def create_service_mesh_client(
    service_name: str, settings: MeshSettings | None = None, **kwargs: Any
) -> MeshClient:
    """Seed-style constructor: ``create_service_mesh_client("my-service")`` then ``await c.initialize()``.

    ``settings`` (or ``MESH_*`` variables) supply the rest; ``kwargs`` go to ``MeshClient``.
    """
    if settings is None:
        settings = MeshSettings(service_name=service_name)
    elif settings.service_name != service_name:
        settings = settings.model_copy(update={"service_name": service_name})
    return MeshClient(settings, **kwargs)
