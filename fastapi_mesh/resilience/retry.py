"""The retry rules: which requests may be sent again, and after which failures.

The retry layer (``layers.retry``) applies them; ``render`` writes the same rules into Istio's retry policy.
"""

from __future__ import annotations

import httpx

__all__ = ["IDEMPOTENCY_HEADER", "IDEMPOTENT_METHODS", "NOT_SENT", "RETRY_AFTER_STATUSES"]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
IDEMPOTENCY_HEADER = "idempotency-key"
#: Failures after which the request provably never reached the upstream: safe to retry any method.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Statuses whose ``Retry-After`` header lengthens the backoff before the next attempt.
RETRY_AFTER_STATUSES = frozenset({429, 503})
