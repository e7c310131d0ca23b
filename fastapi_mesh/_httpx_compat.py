"""Every use of httpx internals in one place, each with what it saves and what happens without it.

httpx 0.28 (pinned in ``pyproject.toml``) keeps a URL's parsed form in ``URL._uri_reference`` (a NamedTuple),
headers in ``Headers._list`` (``(raw_key, lower_key, value)`` byte triples, the Host header httpx adds itself
first), a transport's connection pool in ``AsyncHTTPTransport._pool``, and builds redirect requests in private
``AsyncClient`` methods. The public API does all of this too, only slower (it parses, validates and copies
again) or not at all (redirect requests without sending). Where a layout is not what is expected here, each
function below falls back to the public API, or to the answer that keeps things safe.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

__all__ = [
    "add_header_if_absent",
    "all_connections_idle",
    "build_redirect_request",
    "redirect_method",
    "redirect_request_parts",
    "set_header",
    "url_key",
    "with_origin",
    "with_path_of",
    "with_target",
]

_NEW_TUPLE = tuple.__new__
_NEW_URL = httpx.URL.__new__


# ------------------------------------------------------------------------------------------------- URLs


def with_origin(url: httpx.URL, scheme: str, host: str, port: int | None) -> httpx.URL:
    """``url`` with another scheme, host and port, without re-parsing or re-validating anything: the
    balancer points every attempt at its endpoint this way (``copy_with`` costs more than a whole layer)."""
    try:
        # ``URL._uri_reference``: the parsed reference. It is a NamedTuple; building one directly is far
        # cheaper than ``_replace``.
        ref = url._uri_reference
        reference = _NEW_TUPLE(type(ref), (scheme, "", host, port, ref.path, ref.query, ref.fragment))
    except AttributeError:  # pragma: no cover - a future httpx without the parsed reference
        return url.copy_with(scheme=scheme, host=host, port=port)
    new = _NEW_URL(httpx.URL)
    new._uri_reference = reference
    return new


def with_path_of(base: httpx.URL, path: httpx.URL) -> httpx.URL | None:
    """``base``'s scheme, userinfo, host and port with ``path``'s path, query and fragment (``path`` parsed
    already, dot segments removed, as httpx's ``join`` would leave them); None when a URL lacks the parsed
    reference (``URL._uri_reference``), and the caller takes httpx's own way."""
    try:
        target = path._uri_reference
        origin = base._uri_reference
    except AttributeError:  # pragma: no cover - a future httpx without the parsed reference
        return None
    url = _NEW_URL(httpx.URL)
    url._uri_reference = _NEW_TUPLE(
        type(origin),
        (origin.scheme, origin.userinfo, origin.host, origin.port, target.path, target.query, target.fragment),
    )
    return url


def _plain_target() -> re.Pattern[str] | None:
    """A ``/path?query#fragment`` text in which httpx's parser would encode, reject or normalize nothing: every
    character in the safe set of its part (httpx's ``PATH_SAFE``, ``QUERY_SAFE``, ``FRAG_SAFE`` in
    ``httpx._urlparse``, plus the unreserved characters), all of them printable ASCII. None without those sets."""
    try:
        from httpx import _urlparse as parse

        unreserved, sets = parse.UNRESERVED_CHARACTERS, (parse.PATH_SAFE, parse.QUERY_SAFE, parse.FRAG_SAFE)
    except (ImportError, AttributeError):  # pragma: no cover - a future httpx with another parser
        return None
    path, query, fragment = ("[" + re.escape("".join(sorted(set(unreserved + chars)))) + "]*" for chars in sets)
    return re.compile(f"(/{path})(?:\\?({query}))?(?:#({fragment}))?")


_PLAIN_TARGET = _plain_target()
#: ``httpx._urlparse.MAX_URL_LENGTH``: longer URLs httpx refuses (so they take its own path, and fail there).
_MAX_URL_LENGTH = 65536


def with_target(origin: httpx.URL, text: str, target: str) -> httpx.URL | None:
    """``httpx.URL(text + target)``, where ``origin`` is ``httpx.URL(text)`` (a scheme and authority, no path)
    and ``target`` is ``/path?query#fragment``, without parsing ``origin``'s part again: the same URL (the same
    ``URL._uri_reference``), in a fraction of the time a whole parse takes (its host alone goes through IDNA
    checks). None when ``target`` has anything httpx would percent-encode, reject or normalize (a character
    outside its part's safe set, a dot segment), is too long, or the layout is not the expected one: then the
    caller parses the whole text, and httpx encodes or refuses it as it always does."""
    plain = _PLAIN_TARGET
    if plain is None or len(text) + len(target) > _MAX_URL_LENGTH:
        return None
    match = plain.fullmatch(target)
    if match is None:
        return None
    path, query, fragment = match.groups()
    if "/." in path:  # maybe a "." or ".." segment, which httpx removes
        return None
    try:
        ref = origin._uri_reference  # the parsed origin
        reference = _NEW_TUPLE(type(ref), (ref.scheme, ref.userinfo, ref.host, ref.port, path, query, fragment))
    except AttributeError:  # pragma: no cover - a future httpx without the parsed reference
        return None
    url = _NEW_URL(httpx.URL)
    url._uri_reference = reference
    return url


def url_key(url: httpx.URL) -> object:
    """A hashable key for ``url`` that URLs built from one parsed URL share (its ``URL._uri_reference``),
    cheaper to hash than the URL's text; the URL itself when there is no such reference."""
    return getattr(url, "_uri_reference", url)


# ---------------------------------------------------------------------------------------------- headers


def set_header(headers: httpx.Headers, lower_name: bytes, value: bytes) -> None:
    """Replace every ``lower_name`` header with one carrying ``value`` (``lower_name`` is lower-case),
    without httpx's generic (and slower) ``Headers.__setitem__``; the first one keeps its place."""
    items = getattr(headers, "_list", None)  # ``Headers._list``: the (raw, lower, value) triples
    if not isinstance(items, list):  # pragma: no cover - a future httpx with another layout
        headers[lower_name.decode("latin-1")] = value.decode("latin-1")
        return
    if items and items[0][1] == lower_name:  # the common case for Host
        items[0] = (items[0][0], lower_name, value)
        index = 1
        while index < len(items):
            if items[index][1] == lower_name:
                del items[index]
            else:
                index += 1
        return
    found = False
    index = 0
    while index < len(items):
        if items[index][1] == lower_name:
            if found:
                del items[index]
                continue
            items[index] = (items[index][0], lower_name, value)
            found = True
        index += 1
    if not found:
        items.append((lower_name, lower_name, value))


def add_header_if_absent(headers: httpx.Headers, lower_name: bytes, value: bytes) -> bool:
    """Append ``lower_name: value`` unless a ``lower_name`` header is there; False when one is (or the
    layout of ``Headers._list`` is not the expected one), and the caller decides what to do."""
    items = getattr(headers, "_list", None)  # ``Headers._list``: the (raw, lower, value) triples
    if not isinstance(items, list):  # pragma: no cover - a future httpx with another layout
        return False
    for item in items:
        if item[1] == lower_name:
            return False
    items.append((lower_name, lower_name, value))
    return True


# -------------------------------------------------------------------------------------------- redirects


def build_redirect_request(http: httpx.AsyncClient, request: httpx.Request, response: httpx.Response) -> httpx.Request:
    """The request httpx would send to follow ``response`` (``AsyncClient._build_redirect_request``): the
    method, URL, headers and body httpx's redirect rules give, without sending it."""
    return http._build_redirect_request(request, response)


def redirect_method(http: httpx.AsyncClient, request: httpx.Request, response: httpx.Response) -> str:
    """The method httpx uses to follow ``response`` (``AsyncClient._redirect_method``: GET after a 303, and
    after a POST's 301 or 302)."""
    return http._redirect_method(request, response)


def redirect_request_parts(
    http: httpx.AsyncClient, request: httpx.Request, url: httpx.URL, method: str
) -> tuple[httpx.Headers, Any]:
    """The headers and body httpx gives a redirect to ``url`` with ``method`` (``AsyncClient._redirect_headers``
    and ``_redirect_stream``: ``Authorization`` dropped for another origin, the body dropped with the method)."""
    return http._redirect_headers(request, url, method), http._redirect_stream(request, method)


# ------------------------------------------------------------------------------------------ connections


def all_connections_idle(transport: httpx.AsyncHTTPTransport) -> bool:
    """Whether no connection of ``transport`` carries a request (none at all counts as idle). Reads the
    httpcore pool behind ``AsyncHTTPTransport._pool``; without it, False (the transport is kept)."""
    pool: Any = getattr(transport, "_pool", None)
    connections = getattr(pool, "connections", None)
    if connections is None:  # pragma: no cover - a future httpx without the pool attribute: keep it
        return False
    return all(connection.is_idle() for connection in connections)
