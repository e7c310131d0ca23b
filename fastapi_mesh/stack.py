"""The outbound layer stack, written down once. Each layer is an ``httpx.AsyncBaseTransport`` wrapping
the next::

    deadline                 the call's overall deadline (one asyncio.timeout_at, only when it has one)
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

from .balancing.transport import BalancerTransport
from .clock import Clock
from .connection import build_transport
from .events import EventBus
from .resilience.attempt import AttemptTransport
from .resilience.breaker import CircuitBreakerTransport
from .resilience.bulkhead import BulkheadTransport
from .resilience.deadline import DeadlineTransport
from .resilience.retry import RetryTransport
from .settings import MeshSettings, MtlsConfig

__all__ = ["build_connection_pool", "build_stack"]



def build_ssl_context(settings: MeshSettings) -> ssl.SSLContext | bool:
    """The TLS context for ``https`` endpoints: the mesh CA and client certificate when mTLS is on."""
    mtls = settings.mtls
    if not mtls.enabled:
        return True
    return client_tls_context(mtls, cafile=mtls.ca_path)


def client_tls_context(
    mtls: MtlsConfig, *, cafile: str | None, ca_setting: str = "mtls.ca_path", peer: str = "upstreams"
) -> ssl.SSLContext:
    """A client context that verifies servers against ``cafile`` (None: the system store) and presents the
    mTLS client certificate when mTLS is on. A file that cannot be loaded fails naming ``ca_setting``."""
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{ca_setting}: cannot load the CA bundle {cafile!r} for {peer}: {exc}") from exc
    if mtls.enabled:
        assert mtls.cert_path is not None
        try:
            context.load_cert_chain(mtls.cert_path, mtls.key_path)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"mtls.cert_path/key_path: cannot load {mtls.cert_path!r} with key {mtls.key_path!r}: {exc}"
            ) from exc
    return context


def build_connection_pool(settings: MeshSettings) -> httpx.AsyncBaseTransport:
    """The innermost layer ``connection.backend`` names: keep-alive pools per endpoint, no connection cap
    (the balancer enforces ``max_connections_per_instance``), the mesh's TLS context for ``https``."""
    verify = build_ssl_context(settings)
    if not isinstance(verify, ssl.SSLContext):  # httpx's default store, as httpx.AsyncHTTPTransport builds it
        verify = httpx.create_ssl_context(trust_env=settings.connection.trust_env)
    return build_transport(settings.connection, verify)


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
