"""The outbound layer stack, written down once. Each layer is an ``httpx.AsyncBaseTransport`` wrapping
the next::

    deadline                 the call's overall deadline (one timer on the Clock, only when it has one)
    └─ bulkhead              per-service concurrency limit and bounded queue; BulkheadFull when full
       └─ breaker            per-service state machine over the outcome the caller sees; CircuitOpen
          └─ retry           backoff, idempotency rules, budget, Retry-After; transport failures -> MeshError
             └─ balancer     an endpoint per attempt; in-flight counts; latency, failures, outlier ejection
                └─ attempt   per-attempt timeout within the deadline; x-mesh-timeout-ms; reads the body
                   └─ pool   connection.backend pools, one per endpoint (TLS / mTLS), or the ``transport=`` given

A bad replica is the balancer's problem (ejection, a re-pick on retry), not the breaker's: the breaker sees
what the caller sees, after retries, and opens only when the service as a whole fails.
"""

from __future__ import annotations

import random
import ssl

import httpx

from .clock import Clock
from .connection import ClientTLS, build_transport
from .events import EventBus
from .layers import (
    AttemptTransport,
    BalancerTransport,
    BulkheadTransport,
    CircuitBreakerTransport,
    DeadlineTransport,
    RetryTransport,
)
from .security.files import client_tls_context
from .settings import MeshSettings

__all__ = ["build_client_tls", "build_connection_pool", "build_ssl_context", "build_stack", "client_tls_context"]


def build_client_tls(settings: MeshSettings) -> ClientTLS | None:
    """With ``mtls.enabled``: the mesh's outbound mTLS (client certificate, CA, TLS 1.2+, the servers'
    identities per service, rotation); None without. Files that cannot be loaded fail here, naming the
    setting."""
    return ClientTLS.from_settings(settings) if settings.mtls.enabled else None


def build_ssl_context(settings: MeshSettings) -> ssl.SSLContext | bool:
    """The TLS context for ``https`` endpoints: with mTLS, the mesh CA and client certificate, TLS 1.2 or
    newer, and the server identity check (``mtls.expected_identities``, else the trust domain); else
    True (httpx's default store). A snapshot: the connection pool's context follows rotation, this one
    does not."""
    tls = build_client_tls(settings)
    return True if tls is None else tls.context


def build_connection_pool(settings: MeshSettings, *, tls: ClientTLS | None = None) -> httpx.AsyncBaseTransport:
    """The innermost layer ``connection.backend`` names: keep-alive pools per endpoint, no connection cap
    (the balancer enforces ``max_connections_per_instance``), the mesh's TLS for ``https``: with mTLS one
    rotating context shared by every pool and the server identity check (``tls``, to share one already
    made; else made here), else httpx's default store."""
    if tls is None:
        tls = build_client_tls(settings)
    if tls is not None:
        return build_transport(settings.connection, tls.context, tls=tls)
    # httpx's default store, as httpx.AsyncHTTPTransport builds it
    return build_transport(settings.connection, httpx.create_ssl_context(trust_env=settings.connection.trust_env))


def build_stack(
    pool: httpx.AsyncBaseTransport, *, clock: Clock, rng: random.Random, events: EventBus
) -> httpx.AsyncBaseTransport:
    """Wrap ``pool`` in the mesh's layers, innermost first."""
    layer: httpx.AsyncBaseTransport = AttemptTransport(pool, clock=clock)
    layer = BalancerTransport(layer, clock=clock)
    layer = RetryTransport(layer, clock=clock, rng=rng, events=events)
    layer = CircuitBreakerTransport(layer, clock=clock)
    layer = BulkheadTransport(layer, clock=clock)
    layer = DeadlineTransport(layer, clock=clock)
    return layer
