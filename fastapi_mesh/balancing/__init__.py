"""Load balancing: the endpoint set of each service and the strategy that picks one per attempt."""

from .balancer import Balancer, EndpointState
from .strategies import Strategy, build_strategy
from .transport import BalancerTransport

__all__ = ["Balancer", "BalancerTransport", "EndpointState", "Strategy", "build_strategy"]
