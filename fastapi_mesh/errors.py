"""The one error tree of fastapi-mesh.

Failures the mesh cannot hide rise as a ``MeshError``. It subclasses ``httpx.TransportError``, so code that
already does ``except httpx.HTTPError`` keeps working::

    httpx.TransportError
     └── MeshError                      every failure the mesh raises; .service names the upstream
          ├── NoHealthyEndpoints        no endpoint to send to (also: a service nobody knows)
          ├── CircuitOpen               the service's breaker is open; nothing was sent
          ├── BulkheadFull              a concurrency limit is full; nothing was sent
          ├── DeadlineExceeded          the call's overall deadline passed (also an httpx.TimeoutException)
          ├── UpstreamUnavailable       every attempt failed without a response; __cause__ is the last error
          │    └── UpstreamTimeout      ... and every attempt timed out (also an httpx.TimeoutException)
          └── AuthorizationDenied       the peer's identity is not allowed

An upstream that *answers*, even with a 503, is not an error here: its response is returned, as httpx does.
Third-party exceptions are translated in one place (the retry layer) with ``raise ... from exc``.
"""

from __future__ import annotations

import httpx

__all__ = [
    "AuthorizationDenied",
    "BulkheadFull",
    "CircuitOpen",
    "DeadlineExceeded",
    "MeshError",
    "NoHealthyEndpoints",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class MeshError(httpx.TransportError):
    """Base of every error the mesh raises. ``service`` names the upstream (or the route).

    >>> try:
    ...     raise NoHealthyEndpoints("user-service")
    ... except httpx.HTTPError as exc:
    ...     print(exc)
    no healthy endpoints for service 'user-service'
    """

    default_message = "mesh error"
    #: Seconds a client may wait before trying again, sent as ``Retry-After`` when a route answers 503.
    retry_after: float | None = None

    def __init__(
        self,
        service: str,
        detail: str | None = None,
        *,
        endpoint: str | None = None,
        request: httpx.Request | None = None,
        retry_after: float | None = None,
    ) -> None:
        message = f"{self.default_message} for service {service!r}"
        if endpoint is not None:
            message += f" at {endpoint}"
        if detail:
            message += f": {detail}"
        super().__init__(message, request=request)
        self.service = service
        self.endpoint = endpoint
        if retry_after is not None:
            self.retry_after = retry_after


class NoHealthyEndpoints(MeshError):
    """No endpoint can take the call: none discovered, none healthy, or the service is unknown."""

    default_message = "no healthy endpoints"


class CircuitOpen(MeshError):
    """The service's circuit breaker is open (or forced open): the call was not sent."""

    default_message = "circuit open"


class BulkheadFull(MeshError):
    """A concurrency limit (service bulkhead, route bulkhead, per-endpoint limit) is full."""

    default_message = "bulkhead full"
    retry_after = 1.0


class DeadlineExceeded(MeshError, httpx.TimeoutException):
    """The call's overall deadline passed, across all attempts and backoff."""

    default_message = "deadline exceeded"


class UpstreamUnavailable(MeshError):
    """Every attempt failed without a response; the last transport error is ``__cause__``."""

    default_message = "upstream unavailable"


class UpstreamTimeout(UpstreamUnavailable, httpx.TimeoutException):
    """Every attempt timed out (connect, read, write or pool timeout) without a response: what a plain
    httpx client raises as an ``httpx.TimeoutException``, so ``except httpx.TimeoutException`` catches it.

    >>> try:
    ...     raise UpstreamTimeout("user-service", "ReadTimeout after 3 attempt(s)")
    ... except httpx.TimeoutException as exc:
    ...     print(exc, isinstance(exc, UpstreamUnavailable))
    upstream timed out for service 'user-service': ReadTimeout after 3 attempt(s) True
    """

    default_message = "upstream timed out"


class AuthorizationDenied(MeshError):
    """The peer's identity is not allowed to call, or to be called by, this service."""

    default_message = "authorization denied"
