"""``@mesh.policy(...)``: a per-route deadline, bulkhead and fallback, under ``@app.get(...)``.

    @app.get("/api/users")
    @mesh.policy(timeout=2.0, bulkhead=50, fallback=lambda: {"users": []})
    async def users(client: MeshClient = Depends(get_mesh)): ...

The wrapper is async (a sync handler runs in the threadpool) and keeps the handler's signature, so FastAPI
still injects its dependencies. ``timeout`` sets the deadline that outbound calls made by the handler inherit
(capped by an inbound ``x-mesh-timeout-ms``); past it the route answers 504. A ``MeshError`` answers 503 with
``Retry-After``; a full route bulkhead answers 503 at once (``queue`` defaults to 0). ``fallback`` answers
instead, for a ``MeshError``, a deadline, or an ``httpx.HTTPStatusError`` of 500 and above; a programming
error still gives 500. ``allow`` lists the caller identities (SPIFFE IDs, prefixes ending in ``*``) the route
accepts: any other caller, or one without a verified client certificate, gets 403 before the handler runs (see
``fastapi_mesh.security.identity``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..clock import Clock
from ..context import (
    EXTENSION,
    CallContext,
    current_inbound,
    inbound_for,
    reset_route_deadline,
    set_route_deadline,
)
from ..errors import DeadlineExceeded, MeshError
from ..events import FALLBACK_USED, EventBus, FallbackUsed
from ..security.authorization import Authorization
from ..security.identity import AllowList, denied_response, identity_of, route_template
from ..settings import parse_duration
from .bulkhead import Bulkhead
from .fallback import MISSING, RouteFallback, is_fallback_error

__all__ = ["RoutePolicy", "mesh_error_response"]

F = TypeVar("F", bound=Callable[..., Any])

_REQUEST_PARAM = "_mesh_request"
DEFAULT_RETRY_AFTER = 1.0


def mesh_error_response(exc: MeshError) -> Response:
    """The answer to a ``MeshError`` that reached a route: 504 for a deadline, else 503 + Retry-After."""
    if isinstance(exc, DeadlineExceeded):
        return JSONResponse({"detail": str(exc), "error": "deadline_exceeded"}, status_code=504)
    retry_after = exc.retry_after if exc.retry_after is not None else DEFAULT_RETRY_AFTER
    return JSONResponse(
        {"detail": str(exc), "error": _error_name(exc)},
        status_code=503,
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


def _error_name(exc: MeshError) -> str:
    name = type(exc).__name__
    return "".join("_" + ch.lower() if ch.isupper() else ch for ch in name).lstrip("_")


class RoutePolicy:
    """The decorator ``mesh.policy(...)`` returns; see the module docstring."""

    def __init__(
        self,
        *,
        clock: Clock,
        service_name: str = "app",
        fallback_enabled: Callable[[str], bool] | None = None,
        timeout: float | str | None = None,
        bulkhead: int | None = None,
        queue: int = 0,
        fallback: Any = MISSING,
        allow: Sequence[str] | None = None,
        authorization: Authorization | None = None,
    ) -> None:
        self._clock = clock
        self._service_name = service_name
        self._fallback_enabled = fallback_enabled
        self.timeout: float | None = None
        if timeout is not None:
            value = parse_duration(timeout)
            if not isinstance(value, float) or not value > 0 or math.isinf(value):
                raise ValueError(f"policy timeout must be a positive duration, not {timeout!r}")
            self.timeout = value
        if bulkhead is not None and bulkhead < 1:
            raise ValueError(f"policy bulkhead must be at least 1, not {bulkhead}")
        if bulkhead is None and queue:
            raise ValueError("policy queue needs a bulkhead")
        self.bulkhead_limit = bulkhead
        self.queue = queue
        self.fallback = RouteFallback(fallback) if fallback is not MISSING else None
        if isinstance(allow, str):
            raise TypeError("policy allow takes a list of identities, not one string")
        #: Caller identities the route accepts; None: any caller the server let in.
        self.allow = AllowList(allow) if allow is not None else None
        self._authorization = authorization if authorization is not None else Authorization()
        #: Where ``fallback:used`` goes (the Mesh sets it when its lifespan finds the route); None: nowhere.
        self.events: EventBus | None = None

    def __call__(self, handler: F) -> F:
        name = getattr(handler, "__name__", "route")
        bulkhead = (
            Bulkhead(self._service_name, self.bulkhead_limit, self.queue, scope=f"route handler {name}")
            if self.bulkhead_limit is not None
            else None
        )
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - an object with ``async def __call__``
        )
        signature = _signature(handler)
        request_param = next(
            (p.name for p in signature.parameters.values() if p.annotation is Request), None
        )
        if request_param is None:
            injected = inspect.Parameter(_REQUEST_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=Request)
            params = list(signature.parameters.values())
            at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
            params.insert(at, injected)
            signature = signature.replace(parameters=params)
        policy = self

        @functools.wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if request_param is None:
                request: Request | None = kwargs.pop(_REQUEST_PARAM, None)
            else:
                request = kwargs.get(request_param)
            if policy.allow is not None:
                caller = identity_of(request.scope) if request is not None else None
                if not policy.allow.allows(caller):
                    route = route_template(request.scope) if request is not None else name
                    policy._authorization.denied(route, caller, "not on the route's allow list")
                    return denied_response()
            try:
                return await policy._run(handler, is_async, bulkhead, request, args, kwargs)
            except Exception as raised:
                exc = _single_cause(raised)
                if policy.fallback is not None and is_fallback_error(exc) and policy._fallback_allowed(exc):
                    if policy.events is not None and policy.events.wants(FALLBACK_USED):
                        policy._fell_back(policy.events, request, exc)
                    return await policy.fallback(request, exc)
                if isinstance(exc, MeshError):
                    return mesh_error_response(exc)
                raise

        wrapper.__signature__ = signature  # type: ignore[attr-defined]
        wrapper.__mesh_policy__ = self  # type: ignore[attr-defined]
        wrapper.__mesh_bulkhead__ = bulkhead  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    def _deadline(self, request: Request | None) -> float | None:
        now = self._clock.now()
        inbound = inbound_for(request.scope, now) if request is not None else current_inbound()
        deadline = inbound.deadline if inbound is not None else None
        if self.timeout is not None and (deadline is None or now + self.timeout < deadline):
            deadline = now + self.timeout
        return deadline

    def _fell_back(self, events: EventBus, request: Request | None, exc: BaseException) -> None:
        route = route_template(request.scope) if request is not None else None
        status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
        service = _failed_service(exc)
        if service is None:
            service = self._service_name
        events.emit(FALLBACK_USED, FallbackUsed(service, route, status, exc))

    def _fallback_allowed(self, exc: BaseException) -> bool:
        """``circuit_breaker.fallback_enabled: false`` on the failing service turns route fallbacks off too:
        for its ``MeshError``s and for ``raise_for_status()`` on its 5xx answers."""
        if self._fallback_enabled is None:
            return True
        service = _failed_service(exc)
        return service is None or self._fallback_enabled(service)

    async def _call(
        self,
        handler: Callable[..., Any],
        is_async: bool,
        bulkhead: Bulkhead | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if bulkhead is None:
            if is_async:
                return await handler(*args, **kwargs)
            return await run_in_threadpool(handler, *args, **kwargs)
        await bulkhead.acquire()
        if is_async:
            try:
                return await handler(*args, **kwargs)
            finally:
                bulkhead.release()
        # A thread cannot be cancelled: when the deadline (or a client gone away) stops the wait, the
        # handler runs on, and keeps its slot until it ends, so the limit holds for what really runs.
        thread = asyncio.ensure_future(run_in_threadpool(handler, *args, **kwargs))
        thread.add_done_callback(_release_when_done(bulkhead))
        return await asyncio.shield(thread)

    async def _run(
        self,
        handler: Callable[..., Any],
        is_async: bool,
        bulkhead: Bulkhead | None,
        request: Request | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        deadline = self._deadline(request)
        if deadline is None:
            return await self._call(handler, is_async, bulkhead, args, kwargs)
        token = set_route_deadline(deadline)
        remaining = deadline - self._clock.now()
        try:
            # The deadline covers the wait in the bulkhead queue as well as the handler.
            async with self._clock.timeout_at(deadline) as scope:
                return await self._call(handler, is_async, bulkhead, args, kwargs)
        except TimeoutError as exc:
            if scope.expired():
                route = request.url.path if request is not None else getattr(handler, "__name__", "route")
                raise DeadlineExceeded(
                    self._service_name, f"route {route}: its {remaining:.3f}s deadline passed"
                ) from exc
            raise
        finally:
            reset_route_deadline(token)


def _release_when_done(bulkhead: Bulkhead) -> Callable[[asyncio.Future[Any]], None]:
    def release(future: asyncio.Future[Any]) -> None:
        bulkhead.release()
        if not future.cancelled():
            future.exception()  # retrieved: a handler that failed after its caller left is not reported twice

    return release


def _single_cause(exc: Exception) -> Exception:
    """The one error inside an exception group whose every error is the same kind of mesh failure (a
    handler fanning out with ``asyncio.TaskGroup``), so the route answers it as it would answer that error;
    any other exception as it is."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = _leaves(exc)
        if leaves and all(isinstance(leaf, Exception) and is_fallback_error(leaf) for leaf in leaves):
            first = leaves[0]
            assert isinstance(first, Exception)
            return first
    return exc


def _failed_service(exc: BaseException) -> str | None:
    """The upstream service ``exc`` comes from: a ``MeshError``'s, or the one whose 5xx answer
    ``raise_for_status()`` turned into an ``httpx.HTTPStatusError``; None for anything else."""
    if isinstance(exc, MeshError):
        return exc.service
    if isinstance(exc, httpx.HTTPStatusError):
        ctx = exc.request.extensions.get(EXTENSION)
        if isinstance(ctx, CallContext):
            return ctx.service.name
    return None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


def _signature(handler: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(handler, eval_str=True)
    except (NameError, TypeError):
        return inspect.signature(handler)
