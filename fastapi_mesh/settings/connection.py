"""The ``connection`` section: the innermost layer's backend, HTTP/2 and egress proxy."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import SecretStr, ValidationInfo, field_validator

from .types import Section

__all__ = ["DEFAULT_CONNECTION_BACKEND", "ConnectionBackend", "ConnectionConfig"]

ConnectionBackend = Literal["httpcore", "aiohttp"]
DEFAULT_CONNECTION_BACKEND: ConnectionBackend = "aiohttp"
_PROXY_SCHEMES = ("http", "https")


class ConnectionConfig(Section):
    """The innermost layer: how connections to endpoints are opened, pooled and secured, e.g.
    ``{"backend": "httpcore", "http2": true}`` (see the architecture's *Connection layer*)."""

    #: ``httpcore``: one httpx/httpcore pool per endpoint (HTTP/1.1, or HTTP/2 with ``http2``). ``aiohttp``:
    #: aiohttp's connector and C parser under the same httpx interface (HTTP/1.1 only). Both give the same
    #: responses, timeouts, errors and retry decisions; they differ in CPU per call.
    backend: ConnectionBackend = DEFAULT_CONNECTION_BACKEND
    #: Offer HTTP/2 to ``https`` endpoints (ALPN; HTTP/1.1 when the endpoint does not take it). Backend
    #: ``httpcore`` only, and needs the ``h2`` package (``pip install 'fastapi-mesh[http2]'``).
    http2: bool = False
    #: Egress proxy for every outbound call: ``http://[user:password@]host:port`` (or ``https://``); never shown
    #: in status or ``fastapi-mesh config`` output. ``null``: none, unless ``trust_env`` takes one from the
    #: environment.
    proxy: SecretStr | None = None
    #: Take the egress proxy from ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` (honouring ``NO_PROXY``)
    #: when ``proxy`` is not set. Off by default: a process's environment does not reroute its calls.
    trust_env: bool = False

    @field_validator("proxy")
    @classmethod
    def _check_proxy(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is None:
            return None
        value = secret.get_secret_value().strip()
        shown = _without_password(value)
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"proxy {shown!r} is not a URL: {exc}") from None
        if parts.scheme not in _PROXY_SCHEMES or not parts.hostname:
            raise ValueError(f"proxy {shown!r} must be http://host:port or https://host:port")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"proxy {shown!r} must have no path, query or fragment")
        return SecretStr(value)

    @field_validator("http2")
    @classmethod
    def _http2_needs_httpcore(cls, value: bool, info: ValidationInfo) -> bool:
        backend = info.data.get("backend")
        if value and backend is not None and backend != "httpcore":
            raise ValueError(f"http2 needs backend 'httpcore'; backend {backend!r} speaks HTTP/1.1 only")
        return value


def _without_password(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***`` (for error messages)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"
