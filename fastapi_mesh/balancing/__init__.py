"""Load balancing: the endpoint set of each service and the strategy that picks one per attempt (its layer
is ``layers.balancer``)."""

from .balancer import Balancer
from .endpoint import EndpointState
from .hashing import Ring, key_hash
from .routing import Router, affinity_cookie_names
from .strategies import CustomStrategy, PoolStrategy, build_strategy

__all__ = [
    "Balancer",
    "CustomStrategy",
    "EndpointState",
    "PoolStrategy",
    "Ring",
    "Router",
    "affinity_cookie_names",
    "build_strategy",
    "key_hash",
]
