"""A Mesh's record of denied callers: counted in ``mesh_authorization_denied_total{route}`` and logged."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..observability.metrics import AuthorizationMetrics

__all__ = ["Authorization", "logger"]

#: The security logger: denials, identity mismatches, certificate reloads.
logger = logging.getLogger("fastapi_mesh.security")


class Authorization:
    """A Mesh's record of denied callers: ``mesh_authorization_denied_total{route}`` and a warning per denial.

    >>> Authorization().denied("/api/orders", None, "not on the route's allow list")
    """

    def __init__(self, metrics: AuthorizationMetrics | None = None) -> None:
        self.metrics = metrics

    def denied(self, route: str, identity: str | None, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.denied(route)
        logger.warning(
            "authorization denied: caller %s on route %s: %s",
            identity if identity is not None else "without a SPIFFE ID",
            route,
            reason,
        )
