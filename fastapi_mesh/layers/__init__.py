"""The outbound layers, each an ``httpx.AsyncBaseTransport`` wrapping the next (``stack`` puts them in order).

Each layer is one module and keeps no state of its own: what spans calls (a service's breaker, bulkhead,
balancer, retry budget) lives in the service's ``ServiceState`` (``services``), in modules that know nothing
of the call's context. A layer reads the call's ``CallContext`` from ``request.extensions["mesh"]``; the
fields it reads and sets are listed in its ``reads`` and ``writes`` (see ``layers.base``).
"""

from .attempt import AttemptTransport
from .balancer import BalancerTransport
from .base import Layer
from .breaker import CircuitBreakerTransport
from .bulkhead import BulkheadTransport
from .deadline import DeadlineTransport
from .retry import RetryTransport

__all__ = [
    "AttemptTransport",
    "BalancerTransport",
    "BulkheadTransport",
    "CircuitBreakerTransport",
    "DeadlineTransport",
    "Layer",
    "RetryTransport",
]
