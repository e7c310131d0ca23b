"""The ``mtls`` section, and ``services.<name>.mtls``: certificates, caller and server identities."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from .types import PositiveDuration, Section

__all__ = [
    "DEFAULT_MTLS_RELOAD_INTERVAL",
    "DEFAULT_PLAIN_PATHS",
    "DEFAULT_TRUST_DOMAIN",
    "MtlsConfig",
    "ServiceMtlsConfig",
]

#: What ``mtls.plain_port`` serves by default: the probes and the metrics.
DEFAULT_PLAIN_PATHS = ("/health/live", "/health/ready", "/health/startup", "/metrics")
#: The SPIFFE trust domain servers must be in when no identities are expected by name.
DEFAULT_TRUST_DOMAIN = "cluster.local"
#: Seconds between two looks at the certificate, key and CA files.
DEFAULT_MTLS_RELOAD_INTERVAL = 10.0
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")


def _check_identities(entries: list[str]) -> list[str]:
    """Expected server identities: SPIFFE IDs or DNS names, each with at most one ``*``, at its start or end."""
    for entry in entries:
        body = entry[1:] if entry.startswith("*") else entry[:-1] if entry.endswith("*") else entry
        if entry != "*" and (not body or "*" in body or any(c.isspace() for c in entry)):
            raise ValueError(
                f"expected_identities entry {entry!r} is not a SPIFFE ID (spiffe://<trust-domain>/...) or a DNS "
                "name with at most one '*', at its start or end ('*' alone: any identity)"
            )
    return entries


class MtlsConfig(Section):
    """Client certificate and CA for outbound calls to ``https`` endpoints."""

    #: Present the client certificate below, and verify upstreams against ``ca_path``, on ``https`` endpoints. Needs all
    #: three paths.
    enabled: bool = False
    #: Client certificate (PEM).
    cert_path: str | None = None
    #: Private key of the client certificate (PEM).
    key_path: str | None = None
    #: CA bundle (PEM) that upstream certificates are verified against.
    ca_path: str | None = None
    #: Caller identities (SPIFFE IDs) allowed to call this service at all, checked by ``fastapi-mesh serve`` on
    #: every request of its mTLS port. An entry ending in ``*`` allows a prefix
    #: (``"spiffe://cluster.local/ns/default/*"``); ``"*"`` allows any caller with a SPIFFE ID. Empty: any caller
    #: whose certificate the CA signed. Routes narrow it with ``@mesh.policy(allow=[...])``.
    allow: list[str] = Field(default_factory=list)
    #: ``fastapi-mesh serve`` also listens on this port without TLS, for ``plain_paths`` only (kubelet probes and
    #: Prometheus present no client certificate); every other path there answers 403. ``null``: no plain port.
    plain_port: int | None = Field(default=None, ge=1, le=65535)
    #: The exact paths (no prefixes, the query ignored) the plain port serves.
    plain_paths: list[str] = Field(default_factory=lambda: list(DEFAULT_PLAIN_PATHS))
    #: The mesh's SPIFFE trust domain. An upstream with no ``expected_identities`` must present an identity in it
    #: (a URI SAN ``spiffe://<trust_domain>/...``, or a DNS SAN ending in ``.<trust_domain>``) signed by the CA.
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    #: Server identities outbound calls accept from every upstream (``services.<name>.mtls.expected_identities``
    #: replaces it for one): SPIFFE IDs (``spiffe://cluster.local/ns/default/sa/payments``, matched against URI
    #: SANs) or DNS names (matched against DNS SANs); ``*`` at the end matches a prefix, at the start a suffix,
    #: alone any identity. Empty: any identity in ``trust_domain``. A server presenting none of them is refused
    #: before the request is sent, and the attempt moves to another endpoint.
    expected_identities: list[str] = Field(default_factory=list)
    #: How often the certificate, key and CA files are looked at for changes. Changed files are loaded for new
    #: connections (open ones finish on the old); a half-written or mismatched set keeps the last good one.
    reload_interval: PositiveDuration = DEFAULT_MTLS_RELOAD_INTERVAL

    @field_validator("allow")
    @classmethod
    def _check_allow(cls, value: list[str]) -> list[str]:
        for entry in value:
            body = entry[:-1] if entry.endswith("*") else entry
            if entry != "*" and (not body.startswith("spiffe://") or "*" in body):
                raise ValueError(
                    f"mtls.allow entry {entry!r} is not a SPIFFE ID (spiffe://<trust-domain>/...), a prefix of one "
                    "ending in '*', or '*'"
                )
        return value

    @field_validator("plain_paths")
    @classmethod
    def _check_plain_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"mtls.plain_paths entry {path!r} must start with '/'")
        return value

    @field_validator("trust_domain")
    @classmethod
    def _check_trust_domain(cls, value: str) -> str:
        if not _TRUST_DOMAIN.match(value):
            raise ValueError(
                f"mtls.trust_domain {value!r} is not a SPIFFE trust domain (lower-case letters, digits, '.', '-', '_')"
            )
        return value

    @field_validator("expected_identities")
    @classmethod
    def _check_expected(cls, value: list[str]) -> list[str]:
        return _check_identities(value)

    @model_validator(mode="after")
    def _paths_when_enabled(self) -> MtlsConfig:
        if self.enabled:
            missing = [n for n in ("cert_path", "key_path", "ca_path") if not getattr(self, n)]
            if missing:
                raise ValueError(f"mtls is enabled but {', '.join(missing)} not set")
        return self


class ServiceMtlsConfig(Section):
    """``services.<name>.mtls``: which server identities one upstream may present, e.g.
    ``{"expected_identities": ["spiffe://cluster.local/ns/payments/sa/payments"]}``."""

    #: Replaces ``mtls.expected_identities`` for this upstream (same forms); ``null``: the global list.
    expected_identities: list[str] | None = None

    @field_validator("expected_identities")
    @classmethod
    def _check_expected(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_identities(value)
