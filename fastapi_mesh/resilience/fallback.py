"""Fallbacks: what a call or a route answers when the mesh cannot get a real answer.

Per call (``client.get(..., fallback=...)``): a value is wrapped as ``httpx.Response(200, json=value)``
unless it is already a Response; a callable gets the exception. Per route (``@mesh.policy(fallback=...)``):
a value, or a sync/async callable taking ``()``, ``(exc)`` or ``(request, exc)``, decided once by arity.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

import httpx
from starlette.responses import Response

__all__ = ["MISSING", "RouteFallback", "call_fallback", "is_fallback_error", "request_of"]

#: "No fallback given" (``None`` is a valid fallback value: it answers ``null``).
MISSING: Any = object()


def is_fallback_error(exc: BaseException) -> bool:
    """Errors a fallback answers: any ``MeshError`` (deadlines included), or a 5xx ``HTTPStatusError``."""
    from ..errors import MeshError

    if isinstance(exc, MeshError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code >= 500


async def call_fallback(fallback: Any, exc: BaseException, request: httpx.Request | None) -> httpx.Response:
    """A per-call fallback's answer, as an ``httpx.Response`` bound to ``request`` (so ``raise_for_status()``
    works on it). A Response given as the value is copied for each call, never bound to one."""
    value = fallback(exc) if callable(fallback) else fallback
    if inspect.isawaitable(value):
        value = await value
    if isinstance(value, httpx.Response):
        if value is fallback and _is_read(value):  # shared by every call that falls back: answer with a copy
            headers = [(k, v) for k, v in value.headers.multi_items() if k.lower() not in _BODY_FRAMING]
            copy = httpx.Response(
                value.status_code,
                headers=headers,
                content=value.content,  # decoded already: sent without its content-encoding
                extensions=value.extensions,
                request=request,
            )
            copy.extensions["mesh_fallback"] = True
            return copy
        if request is not None and request_of(value) is None:
            value.request = request
        return value
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    response = httpx.Response(200, content=body, headers={"content-type": "application/json"}, request=request)
    response.extensions["mesh_fallback"] = True
    return response


#: Headers that describe the body as it was on the wire, not the decoded bytes a copy carries.
_BODY_FRAMING = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def _is_read(response: httpx.Response) -> bool:
    try:
        response.content  # noqa: B018
    except httpx.ResponseNotRead:
        return False
    return True


def request_of(bound: httpx.Response | httpx.RequestError) -> httpx.Request | None:
    """The request a response or an httpx error is bound to, or None (httpx raises instead)."""
    try:
        return bound.request
    except RuntimeError:
        return None


class RouteFallback:
    """A route's fallback, with how to call it worked out once, at decoration time."""

    __slots__ = ("_arity", "_is_async", "_value")

    def __init__(self, value: Any) -> None:
        self._value = value
        self._arity = -1
        self._is_async = False
        if callable(value) and not isinstance(value, Response):  # a Starlette response is a value (and an ASGI app)
            self._arity = _positional_arity(value)
            if self._arity > 2:
                raise TypeError(
                    "a route fallback takes (), (exc) or (request, exc); "
                    f"{getattr(value, '__name__', value)!r} takes {self._arity} arguments"
                )
            self._is_async = inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(
                getattr(value, "__call__", None)  # noqa: B004
            )

    async def __call__(self, request: Any, exc: BaseException) -> Any:
        if self._arity < 0:
            return self._value
        fn: Callable[..., Any] = self._value
        args: tuple[Any, ...] = () if self._arity == 0 else (exc,) if self._arity == 1 else (request, exc)
        result = fn(*args)
        if self._is_async or inspect.isawaitable(result):
            result = await result
        return result


def _positional_arity(fn: Callable[..., Any]) -> int:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return 1
    count = 0
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return 2
        positional = parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if positional and parameter.default is inspect.Parameter.empty:
            count += 1
    return count
