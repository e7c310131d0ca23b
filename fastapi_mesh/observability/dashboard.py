"""``GET /mesh/dashboard``: one self-contained HTML page (no CDN, no build step), in the spirit of the
Hystrix dashboard, that polls ``GET /mesh/status`` (every 2 s; ``?interval=5`` for 5) and shows per upstream
service its breaker state, request and error rates and latency quantiles over the last interval, calls in
flight and retries, and each endpoint with its health.

>>> "<script>" in dashboard_page("api-gateway") and "cdn" not in dashboard_page("api-gateway").lower()
True
"""

from __future__ import annotations

from html import escape
from importlib.resources import files

__all__ = ["dashboard_page"]


def dashboard_page(service: str) -> str:
    """The page for the service named ``service`` (shown in its title)."""
    template = files(__package__).joinpath("dashboard.html").read_text(encoding="utf-8")
    return template.replace("{{service}}", escape(service))
