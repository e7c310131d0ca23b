"""Load balancing: the endpoint set of each service and the strategy that picks one per attempt."""

from .balancer import Balancer, EndpointState
from .hashing import Ring, key_hash
from .routing import Router, affinity_cookie_names
from .strategies import PoolStrategy, Strategy, build_strategy
from .transport import BalancerTransport

__all__ = [
    "Balancer",
    "BalancerTransport",
    "EndpointState",
    "PoolStrategy",
    "Ring",
    "Router",
    "Strategy",
    "affinity_cookie_names",
    "build_strategy",
    "key_hash",
]
