"""The ``discovery`` section: where endpoints come from, and the shape of one endpoint entry."""

from __future__ import annotations

import re
import warnings
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator

from .types import (
    DNS_LABEL,
    NonNegativeDuration,
    PositiveDuration,
    Section,
    check_endpoint_url,
    parse_duration,
    split_nameserver,
)

__all__ = [
    "DEFAULT_CHECK_INTERVAL",
    "DEFAULT_CLUSTER_DOMAIN",
    "DEFAULT_CONSUL_URL",
    "DEFAULT_CONSUL_WAIT",
    "DEFAULT_DEREGISTER_AFTER",
    "DEFAULT_DISCOVERY_BACKOFF",
    "DEFAULT_DISCOVERY_MAX_BACKOFF",
    "DEFAULT_DNS_TIMEOUT",
    "DEFAULT_EMPTY_GRACE",
    "DEFAULT_INITIAL_SYNC_TIMEOUT",
    "DEFAULT_NAMESPACE",
    "DEFAULT_PORT_NAME",
    "DEFAULT_REFRESH_INTERVAL",
    "DiscoveryBackend",
    "DiscoveryConfig",
    "EndpointConfig",
]

DiscoveryBackend = Literal["static", "consul", "kubernetes-dns", "kubernetes", "custom"]

DEFAULT_REFRESH_INTERVAL = 30.0
DEFAULT_CONSUL_URL = "http://127.0.0.1:8500"
DEFAULT_NAMESPACE = "default"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_PORT_NAME = "http"
DEFAULT_DNS_TIMEOUT = 5.0
DEFAULT_EMPTY_GRACE = 30.0
DEFAULT_INITIAL_SYNC_TIMEOUT = 5.0
DEFAULT_DISCOVERY_BACKOFF = 1.0
DEFAULT_DISCOVERY_MAX_BACKOFF = 30.0
DEFAULT_CONSUL_WAIT = 300.0
DEFAULT_CHECK_INTERVAL = 10.0
DEFAULT_DEREGISTER_AFTER = 60.0


class EndpointConfig(Section):
    """One upstream replica: ``{"url": "http://10.0.0.2:8080", "weight": 3, "metadata": {...}, "zone": "a"}``."""

    #: ``http`` or ``https``, a host (an IP address or a DNS name) and an optional port; no path, query, fragment,
    #: user or password (they would show in ``/mesh/status`` and metrics), no whitespace.
    url: str
    #: Relative weight for the ``weighted`` and ``random`` strategies.
    weight: int = Field(default=1, ge=0, le=10_000)
    #: Free-form string labels.
    metadata: dict[str, str] = Field(default_factory=dict)
    #: The endpoint's zone.
    zone: str | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return check_endpoint_url(value)


def _coerce_endpoint(value: Any) -> Any:
    return {"url": value} if isinstance(value, str) else value


with warnings.catch_warnings():
    # ``register`` is the setting's public name; pydantic notes that the metaclass (ABCMeta) has a
    # ``register`` too, which instances never see, so the field reads as expected.
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class DiscoveryConfig(Section):
        """Where endpoints come from. ``static`` reads ``endpoints``; the others are separate backends."""

        #: Which discovery backend publishes endpoint sets.
        backend: DiscoveryBackend = "static"
        #: Static endpoint sets by service name (backend ``static``). Each entry is a URL string or an endpoint object
        #: (see *Endpoint entries*). From the environment: JSON.
        endpoints: dict[str, list[Annotated[EndpointConfig, BeforeValidator(_coerce_endpoint)]]] = Field(
            default_factory=dict
        )
        #: Base URL of the Consul HTTP API (backend ``consul``).
        consul_url: str = DEFAULT_CONSUL_URL
        #: ACL token sent to Consul as ``X-Consul-Token`` (backend ``consul``); never shown in status or logs.
        consul_token: SecretStr | None = None
        #: Consul datacenter to ask (``?dc=``); ``null``: the agent's own.
        datacenter: str | None = None
        #: Only endpoints carrying every one of these tags (backend ``consul``); self-registration sends them too.
        tags: list[str] = Field(default_factory=list)
        #: CA bundle (PEM) that an ``https`` ``consul_url`` is verified against; ``null``: ``mtls.ca_path`` when mTLS
        #: is on, else the system's. With mTLS on, the client certificate is presented to Consul as well.
        consul_ca_path: str | None = None
        #: How long one Consul blocking query may wait for a change (Consul caps it at 10 minutes).
        consul_wait: Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=600, allow_inf_nan=False)] = (
            DEFAULT_CONSUL_WAIT
        )
        #: Register this service with the Consul agent at start-up and deregister it at shutdown.
        register: bool = False
        #: The address other services reach this one at (self-registration); ``null``: this host's name.
        service_address: str | None = None
        #: The port other services reach this one at (self-registration; needed when ``register`` is on).
        service_port: int | None = Field(default=None, ge=1, le=65535)
        #: The registration's unique ID; ``null``: ``<service_name>-<host name>-<port>``.
        service_id: str | None = None
        #: Service meta sent with the registration (``weight``, ``version`` and ``zone`` are read by callers).
        service_meta: dict[str, str] = Field(default_factory=dict)
        #: How often Consul calls the registration's HTTP check on ``/health/ready``.
        check_interval: PositiveDuration = DEFAULT_CHECK_INTERVAL
        #: Consul removes the registration after its check has been critical this long (a crashed process).
        deregister_critical_after: PositiveDuration = DEFAULT_DEREGISTER_AFTER
        #: Kubernetes namespace of the upstream services (backends ``kubernetes-dns`` and ``kubernetes``, and the
        #: hosts ``fastapi-mesh render istio`` writes).
        namespace: str = DEFAULT_NAMESPACE
        #: Cluster DNS domain (backend ``kubernetes-dns``, and ``fastapi-mesh render istio``): names are looked up
        #: under ``<service>.<namespace>.svc.<cluster_domain>``.
        cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
        #: Named port to look up: the SRV record ``_<port_name>._<protocol>.<service>.<namespace>.svc.<domain>``
        #: (backend ``kubernetes-dns``) or the EndpointSlice port (backend ``kubernetes``). ``null``: A/AAAA records
        #: of a headless service, on ``port`` (``kubernetes-dns``), or the slice's only port (``kubernetes``).
        port_name: str | None = DEFAULT_PORT_NAME
        #: The SRV record's protocol label (backend ``kubernetes-dns``).
        protocol: Literal["tcp", "udp", "sctp"] = "tcp"
        #: The port used with A/AAAA records when ``port_name`` is ``null`` (backend ``kubernetes-dns``).
        port: int | None = Field(default=None, ge=1, le=65535)
        #: DNS servers as ``host:port`` (``[v6addr]:port`` for IPv6); empty: those of ``/etc/resolv.conf``.
        nameservers: list[str] = Field(default_factory=list)
        #: How long one DNS lookup may take in all, every try and nameserver (backend ``kubernetes-dns``); one
        #: try to one nameserver gets at most 2 s of it.
        dns_timeout: PositiveDuration = DEFAULT_DNS_TIMEOUT
        #: Path of a kubeconfig file (backend ``kubernetes``); ``null``: the in-cluster service account when
        #: running in a pod, else ``$KUBECONFIG`` or ``~/.kube/config``.
        kubeconfig: str | None = None
        #: ``module:Class`` or ``module.Class`` of a ``Discovery`` implementation (backend ``custom``), built with
        #: no arguments or with the ``DiscoveryConfig``.
        custom_class: str | None = None
        #: How often a polling backend (``kubernetes-dns``) looks again: at a record's TTL, but never more often
        #: than this.
        refresh_interval: PositiveDuration = DEFAULT_REFRESH_INTERVAL
        #: An empty answer for a service that had endpoints is believed only after it has lasted this long.
        empty_grace: NonNegativeDuration = DEFAULT_EMPTY_GRACE
        #: Services this one cannot work without: the startup probe waits for their first sync and readiness
        #: fails while one of them has no endpoints. Other services never affect the probes.
        critical_services: list[str] = Field(default_factory=list)
        #: A call to a service whose first sync has not come yet waits at most this long (and never past the
        #: call's deadline), then fails with ``NoHealthyEndpoints``.
        initial_sync_timeout: PositiveDuration = DEFAULT_INITIAL_SYNC_TIMEOUT
        #: First delay before a failed discovery query is retried; it doubles (with jitter) up to ``max_backoff``.
        backoff: PositiveDuration = DEFAULT_DISCOVERY_BACKOFF
        #: Upper bound of the delay between retries of a failing discovery query.
        max_backoff: PositiveDuration = DEFAULT_DISCOVERY_MAX_BACKOFF

        @field_validator("consul_url")
        @classmethod
        def _check_consul_url(cls, value: str) -> str:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"consul_url must be an http:// or https:// URL with a host, e.g. {DEFAULT_CONSUL_URL}"
                )
            return value.rstrip("/")

        @field_validator("port_name", mode="before")
        @classmethod
        def _null_port_name(cls, value: Any) -> Any:
            # From the environment, MESH_DISCOVERY__PORT_NAME=null arrives as the string "null".
            return None if isinstance(value, str) and value.strip().lower() in ("null", "none") else value

        @field_validator("nameservers")
        @classmethod
        def _check_nameservers(cls, value: list[str]) -> list[str]:
            for item in value:
                split_nameserver(item)
            return value

        @field_validator("namespace")
        @classmethod
        def _check_namespace(cls, value: str) -> str:
            if not DNS_LABEL.match(value):
                raise ValueError(f"namespace {value!r} is not a Kubernetes namespace name (a DNS label)")
            return value

        @field_validator("custom_class")
        @classmethod
        def _check_custom_class(cls, value: str | None) -> str | None:
            if value is not None and not re.match(r"^[A-Za-z_][\w.]*[.:][A-Za-z_]\w*$", value):
                raise ValueError(f"custom_class {value!r} must be a dotted path, e.g. 'myapp.discovery:MyDiscovery'")
            return value

        @model_validator(mode="after")
        def _check_backend_needs(self) -> DiscoveryConfig:
            if self.register and self.backend == "consul" and self.service_port is None:
                raise ValueError("discovery.register needs discovery.service_port (the port Consul tells callers)")
            if self.backend == "kubernetes-dns" and self.port_name is None and self.port is None:
                raise ValueError("kubernetes-dns without port_name (A/AAAA records) needs discovery.port")
            if self.max_backoff < self.backoff:
                raise ValueError("discovery.max_backoff must not be below discovery.backoff")
            return self
