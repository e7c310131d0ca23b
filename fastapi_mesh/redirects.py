"""Redirects: which answers are redirects, the request one asks for (built as httpx builds it), and which
of them a call follows: only those within the service (its logical address or one of its endpoints).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from ._httpx_compat import build_redirect_request, redirect_method, redirect_request_parts, with_path_of
from .context import EXTENSION, CallContext

if TYPE_CHECKING:
    from .services import ServiceState

__all__ = ["MAX_REDIRECTS", "REDIRECT_STATUSES", "redirect_request", "within"]

#: Statuses whose ``Location`` httpx turns into the response's ``next_request``.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: httpx's default ``max_redirects``: a call following redirects raises ``httpx.TooManyRedirects`` past it.
MAX_REDIRECTS = 20


def redirect_request(http: httpx.AsyncClient, request: httpx.Request, response: httpx.Response) -> httpx.Request:
    """The request a redirect asks for, as httpx builds it, only with the usual Location (a path on the same
    server) resolved through the service's cache of parsed URLs rather than parsed and joined afresh, which
    costs more than the rest of the hop's stack. Cookies are left out: the shared client's jar never holds
    any."""
    location = response.headers["location"]
    if location[:1] != "/" or location[:2] == "//" or request.url.fragment:
        return build_redirect_request(http, request, response)
    ctx: CallContext = request.extensions[EXTENSION]
    try:
        path = ctx.service.url(location)  # dot segments removed, as httpx's join does
    except httpx.InvalidURL:  # httpx's own path raises httpx's error for a bad Location
        return build_redirect_request(http, request, response)
    url = with_path_of(request.url, path)
    if url is None:
        return build_redirect_request(http, request, response)
    method = redirect_method(http, request, response)
    headers, stream = redirect_request_parts(http, request, url, method)
    return httpx.Request(method, url, headers=headers, stream=stream, extensions=request.extensions)


def within(service: ServiceState, url: httpx.URL) -> bool:
    """Whether ``url`` addresses ``service``: its logical ``http://<name>`` or one of its endpoints."""
    origin = (url.scheme, url.host, url.port)
    if origin == ("http", service.name, None):
        return True
    return any((e.scheme, e.host, e.port) == origin for e in (s.endpoint for s in service.balancer.endpoints))
