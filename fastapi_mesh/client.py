"""``MeshClient``: httpx's API addressed by service name, through the mesh's layer stack.

What the client and its per-request views share, and the direct path into the stack, is the ``Runtime``
(``runtime``); a call with auth, redirects to follow or event hooks goes hop by hop (``hops``).

>>> async def main() -> None:
...     async with MeshClient(MeshSettings(discovery={"endpoints": {"users": ["http://10.0.0.1:8080"]}})) as c:
...         response = await c.get("users", "/api/users", params={"page": 2}, deadline=1.5)
...         response.raise_for_status()
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar, overload

import httpx
from opentelemetry.trace import TracerProvider

from .clock import Clock
from .context import EXTENSION, CallContext, InboundContext, current_inbound, current_route_deadline
from .discovery import Discovery
from .errors import MeshError
from .events import (
    ALIASES,
    EVENTS,
    FALLBACK_USED,
    REQUEST_FAILURE,
    REQUEST_SUCCESS,
    EventHandler,
    FallbackUsed,
    RequestEvent,
)
from .health.manager import HealthManager
from .hops import send_with_client
from .options import AuthTypes, EventHook, HeaderTypes, QueryParamTypes, as_auth
from .resilience.breaker import CircuitBreaker
from .resilience.fallback import MISSING, call_fallback, request_of
from .runtime import Runtime
from .services import ServiceState
from .settings import MeshSettings

__all__ = ["MeshClient", "create_service_mesh_client"]

H = TypeVar("H", bound=EventHandler)


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
        self._rt = Runtime(
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
        state = rt.services.get(service)
        inbound = self._inbound if self._inbound is not None else current_inbound()
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

    def _deadline(self, ctx: CallContext, call_deadline: float | None, inbound: InboundContext | None) -> float | None:
        """Set ``ctx.deadline``: the earliest of the route's, the inbound header's, ``deadline=`` and
        ``retry.max_elapsed``. Only the first three arm the call's timer (``ctx.timed``): ``max_elapsed``
        alone caps attempt timeouts and stops retries, at no per-call timer cost. Returns the clock time
        it read, if it needed one."""
        best = current_route_deadline()
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
        # Durations are for the latency histogram and event subscribers: the call starts when its deadline
        # was set (no second clock read), else no clock read when neither wants one.
        start = now if now is not None else rt.clock.now() if rt.observe or rt.events._handlers else 0.0
        state.requests += 1
        try:
            if state.sync_pending and not state.balancer.endpoints:  # discovery has not answered for it yet
                await rt.services.wait_for_first_sync(state, ctx.deadline)
            response = await _dispatch(rt, http, method, url, kwargs, stream=False)
        except MeshError as exc:
            self._count(state, ctx, method, start, None, exc)
            if fallback is not MISSING and state.fallback_enabled:
                self._fell_back(service, None, exc)
                return await call_fallback(fallback, exc, request_of(exc))
            raise
        status = response.status_code
        if self._count(state, ctx, method, start, status, None) and fallback is not MISSING and state.fallback_enabled:
            self._fell_back(service, status, None)
            return await _status_fallback(fallback, service, response)
        return response

    def _count(
        self,
        state: ServiceState,
        ctx: CallContext,
        method: str,
        start: float,
        status: int | None,
        error: MeshError | None,
    ) -> bool:
        """The one place a call's outcome is counted, for ``request`` and ``stream`` alike: its duration
        (``status`` None: no response, ``error`` says why), the service's counters and ``request:success`` or
        ``request:failure``. True when the call failed: no response, or a 5xx (a per-call fallback answers)."""
        rt = self._rt
        if rt.observe:
            state.durations.observe_call(method, status, rt.clock.now() - start)
        if status is None or status >= 500:
            state.failures += 1
            self._emit(REQUEST_FAILURE, ctx, method, status, start, error)
            return True
        state.successes += 1
        if rt.events._handlers:  # nobody listening (the usual case): not even a call
            self._emit(REQUEST_SUCCESS, ctx, method, status, start, None)
        return False

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
            events.emit(name, RequestEvent(ctx.service.name, endpoint, method, status, duration, ctx.attempts, error))

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
        start = now if now is not None else rt.clock.now() if rt.observe or rt.events._handlers else 0.0
        try:
            if state.sync_pending and not state.balancer.endpoints:
                await rt.services.wait_for_first_sync(state, ctx.deadline)
            response = await _dispatch(rt, http, method, url, kwargs, stream=True)
        except MeshError as exc:
            self._count(state, ctx, method, start, None, exc)
            if fallback is MISSING or not state.fallback_enabled:
                raise
            self._fell_back(service, None, exc)
            response = await call_fallback(fallback, exc, request_of(exc))
            yield response
            return
        status = response.status_code
        if self._count(state, ctx, method, start, status, None) and fallback is not MISSING and state.fallback_enabled:
            self._fell_back(service, status, None)
            await response.aclose()
            yield await _status_fallback(fallback, service, response)
            return
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
        ``"request:failure"`` or ``"circuit-breaker:open"`` (``fastapi_mesh.events.EVENTS``; the older names in
        ``ALIASES``, the seed's ``"request-success"`` among them, work too); returns a function that
        unsubscribes it. Without ``handler``, a decorator:

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
        return self._rt.services.get(service).breaker

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
        services = self._rt.services.known()  # not every name somebody called: that is unbounded
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
        for name, state in self._rt.services.known().items():
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
    rt: Runtime, http: httpx.AsyncClient, method: str, url: httpx.URL, kwargs: dict[str, Any], *, stream: bool
) -> Coroutine[Any, Any, httpx.Response]:
    """Build the call's request with httpx and send it: straight to the stack, or, for a call with auth
    (its own or the client's), redirects to follow or event hooks, through ``hops.send_with_client``."""
    auth = rt.auth
    follow = False
    if "auth" in kwargs or "follow_redirects" in kwargs:
        given = kwargs.pop("auth", httpx.USE_CLIENT_DEFAULT)
        if given is not httpx.USE_CLIENT_DEFAULT:
            auth = as_auth(given)
        redirects = kwargs.pop("follow_redirects", False)
        follow = redirects is not httpx.USE_CLIENT_DEFAULT and bool(redirects)
    request = http.build_request(method, url, **kwargs)
    if auth is None and not follow and rt.hooks is None:
        return rt.send(request, stream=stream)
    return send_with_client(rt, request, auth, follow, kwargs.get("cookies"), stream=stream)


async def _status_fallback(fallback: Any, service: str, response: httpx.Response) -> httpx.Response:
    """A per-call fallback's answer to a final 5xx, which it gets as an ``httpx.HTTPStatusError``."""
    error = httpx.HTTPStatusError(
        f"{response.status_code} from service {service!r}", request=response.request, response=response
    )
    return await call_fallback(fallback, error, response.request)


def create_service_mesh_client(service_name: str, settings: MeshSettings | None = None, **kwargs: Any) -> MeshClient:
    """Seed-style constructor: ``create_service_mesh_client("my-service")`` then ``await c.initialize()``.

    ``settings`` (or ``MESH_*`` variables) supply the rest; ``kwargs`` go to ``MeshClient``.
    """
    if settings is None:
        settings = MeshSettings(service_name=service_name)
    elif settings.service_name != service_name:
        settings = settings.model_copy(update={"service_name": service_name})
    return MeshClient(settings, **kwargs)
