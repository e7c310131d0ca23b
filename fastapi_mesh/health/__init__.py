"""Health: liveness, readiness and startup probes backed by checks that run in the background."""

from .manager import CheckKind, HealthCheckFn, HealthManager

__all__ = ["CheckKind", "HealthCheckFn", "HealthManager"]
