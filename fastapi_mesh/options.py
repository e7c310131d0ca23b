"""The client's httpx options: what ``headers=``, ``params=``, ``auth=``, ``cookies=`` and ``event_hooks=``
accept, as on ``httpx.AsyncClient`` (client-wide and, for ``auth=`` and ``cookies=``, per call), and how the
client takes them.
"""

from __future__ import annotations

import http.cookiejar
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any

import httpx

__all__ = [
    "AuthTypes",
    "CookieTypes",
    "EventHook",
    "FunctionAuth",
    "HeaderTypes",
    "QueryParamTypes",
    "as_auth",
    "as_event_hooks",
]

#: What httpx accepts as ``cookies=``.
CookieTypes = httpx.Cookies | http.cookiejar.CookieJar | dict[str, str] | list[tuple[str, str]] | None
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


def as_auth(auth: object) -> httpx.Auth | None:
    """``auth=`` as httpx takes it: an ``httpx.Auth``, a ``(username, password)`` tuple, a callable that
    changes the request, or None."""
    if auth is None or isinstance(auth, httpx.Auth):
        return auth
    if isinstance(auth, tuple):
        return httpx.BasicAuth(username=auth[0], password=auth[1])
    if callable(auth):
        return FunctionAuth(auth)
    raise TypeError(f'Invalid "auth" argument: {auth!r}')  # httpx's words


class FunctionAuth(httpx.Auth):
    """A callable as ``auth=``: it gets the request and returns the one to send, as httpx does."""

    def __init__(self, func: Callable[[httpx.Request], httpx.Request]) -> None:
        self._func = func

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        yield self._func(request)


def as_event_hooks(
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
