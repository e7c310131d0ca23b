"""Kubernetes and Istio manifests written from ``MeshSettings``, so the library and the sidecar agree.

``fastapi-mesh render istio --service NAME`` prints a DestinationRule and a VirtualService for upstream
``NAME`` from its effective policy; ``fastapi-mesh render k8s`` prints a Deployment whose probes, grace
period and ``MESH_*`` env follow this service's settings::

    >>> settings = MeshSettings(mode="istio", environment="production", discovery={"namespace": "shop"},
    ...                         routing={"split": {"v1": 90, "v2": 10}})
    >>> rule, route = istio_manifests(settings, "user-service")
    >>> rule["spec"]["host"], rule["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"]
    ('user-service.shop.svc.cluster.local', 5)
    >>> [(d["destination"]["subset"], d["weight"]) for d in route["spec"]["http"][-1]["route"]]
    [('v1', 90), ('v2', 10)]
    >>> route["spec"]["http"][-1]["retries"]["attempts"]     # the production preset's 10 retries, in Envoy
    10

Retries go to the sidecar as they are configured: in ``mode: istio`` the mesh makes none itself, so a
call is tried ``1 + retry.max_retries`` times in all, never ``(1 + n) * (1 + m)``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, SecretStr

from .resilience.retry import IDEMPOTENCY_HEADER, IDEMPOTENT_METHODS
from .settings import DEFAULT_PORT_NAME, ENV_NESTED_DELIMITER, ENV_PREFIX, MeshSettings, ServicePolicy

__all__ = [
    "LIFESPAN_SHUTDOWN",
    "deployment",
    "destination_rule",
    "duration",
    "istio_manifests",
    "mesh_env",
    "probes",
    "termination_grace_period",
    "to_yaml",
    "virtual_service",
]

#: Seconds the lifespan shutdown (health loops, discovery deregistration, pools) is given after the drain
#: and the grace, in ``terminationGracePeriodSeconds``.
LIFESPAN_SHUTDOWN = 5
#: The container port's name: the Service's named port, the one callers' discovery looks up by default
#: (``discovery.port_name``: the EndpointSlice port, the ``kubernetes-dns`` SRV lookup's ``_http``).
PORT_NAME = DEFAULT_PORT_NAME
#: The label ``render`` marks its manifests with.
MANAGED_BY = {"app.kubernetes.io/managed-by": "fastapi-mesh"}

_SIMPLE = {
    "round-robin": "ROUND_ROBIN",
    "weighted": "ROUND_ROBIN",  # Envoy weighs endpoints in round robin and least request alike
    "random": "RANDOM",
    "least-connections": "LEAST_REQUEST",
    "least-response-time": "LEAST_REQUEST",
    "p2c-ewma": "LEAST_REQUEST",
}
#: Methods the mesh retries only when the request never left (a refused connection): Envoy is told the same.
_UNSAFE_METHODS = "|".join(sorted({"POST", "PATCH", "CONNECT"} - IDEMPOTENT_METHODS))
_GATEWAY_ERRORS = frozenset({502, 503, 504})


# ------------------------------------------------------------------------------------------------ istio


def duration(seconds: float) -> str:
    """Seconds as a protobuf duration, the form Istio reads: ``0.25`` -> ``"0.25s"``, ``30.0`` -> ``"30s"``
    (at least ``0.001s``: Istio refuses shorter timeouts)."""
    text = f"{max(seconds, 0.001):.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


def _names(settings: MeshSettings, service: str) -> tuple[str, str, str]:
    """``(name, namespace, host)`` of upstream ``service``, named as discovery names it: ``users`` is
    ``users.<namespace>.svc.<cluster_domain>``, ``users.billing`` is in namespace ``billing``, and a name
    with more dots is the full host (``users.billing.svc.cluster.local``)."""
    labels = service.rstrip(".").split(".")
    domain = settings.discovery.cluster_domain
    if len(labels) > 2 or service.endswith("."):
        namespace = labels[1] if len(labels) > 2 and labels[2] == "svc" else settings.discovery.namespace
        return labels[0], namespace, service.rstrip(".")
    namespace = labels[1] if len(labels) == 2 else settings.discovery.namespace
    return labels[0], namespace, f"{labels[0]}.{namespace}.svc.{domain}"


def _metadata(name: str, namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)}


def _sidecar_policy(settings: MeshSettings, service: str) -> ServicePolicy:
    """The policy the sidecar enforces: what the mesh itself would do in library mode (``mode: istio``
    turns these parts off in the application precisely because the sidecar does them)."""
    if settings.mode == "library":
        return settings.for_service(service)
    return settings.model_copy(update={"mode": "library"}).for_service(service)


def _subsets(policy: ServicePolicy) -> list[str]:
    names = list(policy.routing.split)
    names += [rule.subset for rule in policy.routing.rules if rule.subset not in names]
    return names


def _load_balancer(policy: ServicePolicy) -> dict[str, Any]:
    config = policy.load_balancer
    balancer: dict[str, Any]
    if config.session_affinity or config.strategy == "ip-hash":
        kind, _, name = config.affinity_key.partition(":")
        if kind == "header":
            balancer = {"consistentHash": {"httpHeaderName": name}}
        elif kind == "cookie":
            balancer = {"consistentHash": {"httpCookie": {"name": name, "ttl": "0s"}}}
        else:
            balancer = {"consistentHash": {"useSourceIp": True}}
    else:
        balancer = {"simple": _SIMPLE[config.strategy]}
        if config.slow_start_window > 0:
            balancer["warmupDurationSecs"] = duration(config.slow_start_window)
    balancer["localityLbSetting"] = {"enabled": config.zone_aware}
    return balancer


def _connection_pool(policy: ServicePolicy) -> dict[str, Any]:
    pool: dict[str, Any] = {"tcp": {"maxConnections": policy.load_balancer.max_connections_per_instance}}
    bulkhead = policy.bulkhead
    if bulkhead.max_concurrent is not None:
        # Envoy reads 0 pending requests as "no limit"; 1 is the nearest it has to the mesh's "no queue".
        pool["http"] = {
            "http2MaxRequests": bulkhead.max_concurrent,
            "http1MaxPendingRequests": max(bulkhead.max_queue, 1),
        }
    return pool


def _outlier_detection(policy: ServicePolicy) -> dict[str, Any] | None:
    config = policy.outlier_detection
    if not config.enabled:
        return None
    return {
        # The mesh counts 5xx answers, refused connections and timeouts; Envoy's 5xx count includes the
        # locally originated failures unless they are split out.
        "consecutive5xxErrors": config.consecutive_failures,
        "interval": "1s",
        "baseEjectionTime": duration(config.base_ejection_time),
        "maxEjectionPercent": int(config.max_ejection_percent),
    }


def destination_rule(settings: MeshSettings, service: str) -> dict[str, Any]:
    """The DestinationRule for upstream ``service``: balancing, connection pool, outlier detection, subsets."""
    policy = _sidecar_policy(settings, service)
    traffic: dict[str, Any] = {
        "loadBalancer": _load_balancer(policy),
        "connectionPool": _connection_pool(policy),
    }
    outliers = _outlier_detection(policy)
    if outliers is not None:
        traffic["outlierDetection"] = outliers
    name, namespace, host = _names(settings, service)
    spec: dict[str, Any] = {"host": host, "trafficPolicy": traffic}
    subsets = _subsets(policy)
    if subsets:
        key = policy.routing.subset_key
        spec["subsets"] = [{"name": name, "labels": {key: name}} for name in subsets]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": _metadata(name, namespace),
        "spec": spec,
    }


def _retry_on(statuses: Iterable[int]) -> str:
    codes = set(statuses)
    conditions = ["connect-failure", "refused-stream", "reset"]
    if codes >= _GATEWAY_ERRORS:
        conditions.append("gateway-error")  # 502-504 and per-try timeouts
        codes -= _GATEWAY_ERRORS
    return ",".join(conditions + [str(code) for code in sorted(codes)])


def _weights(split: Mapping[str, float]) -> list[tuple[str, int]]:
    """Relative weights as whole percentages adding up to 100 (largest remainders get the rest)."""
    total = sum(split.values())
    exact = {name: weight * 100 / total for name, weight in split.items()}
    shares = {name: math.floor(value) for name, value in exact.items()}
    rest = 100 - sum(shares.values())
    for name in sorted(exact, key=lambda n: (shares[n] - exact[n], list(split).index(n)))[:rest]:
        shares[name] += 1
    return [(name, shares[name]) for name in split]


def virtual_service(settings: MeshSettings, service: str) -> dict[str, Any]:
    """The VirtualService for upstream ``service``: routing rules, the weighted split, timeouts, retries.

    Each route comes twice when retries are on: first for non-idempotent methods without an
    ``Idempotency-Key`` (retried only on refused connections, as the mesh does), then for the rest."""
    policy = _sidecar_policy(settings, service)
    name, namespace, host = _names(settings, service)
    retry, attempt_timeout = policy.retry, policy.circuit_breaker.timeout
    timing: dict[str, Any] = {}
    if retry.max_elapsed is not None:
        timing["timeout"] = duration(retry.max_elapsed)
    retries = {"attempts": retry.max_retries, "perTryTimeout": duration(attempt_timeout)}

    def routes(route: str, match: dict[str, Any] | None, destinations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        full = {**retries, "retryOn": _retry_on(retry.retry_on_status)} if retry.max_retries else {"attempts": 0}
        plain: dict[str, Any] = {"name": route}
        if match:
            plain["match"] = [match]
        plain.update(route=destinations, **timing, retries=full)
        if not retry.max_retries:
            return [plain]
        unsafe_match = {
            **(match or {}),
            "method": {"regex": _UNSAFE_METHODS},
            "withoutHeaders": {IDEMPOTENCY_HEADER: {}},
        }
        unsafe = {
            "name": f"{route}-non-idempotent",
            "match": [unsafe_match],
            "route": destinations,
            **timing,
            "retries": {**retries, "retryOn": "connect-failure,refused-stream"},
        }
        return [unsafe, plain]

    http: list[dict[str, Any]] = []
    for i, rule in enumerate(policy.routing.rules):
        headers = {name.lower(): {"exact": value} for name, value in rule.match.headers.items()}
        destination = [{"destination": {"host": host, "subset": rule.subset}}]
        http += routes(f"rule-{i}-{rule.subset}", {"headers": headers} if headers else None, destination)
    split = policy.routing.split
    if split:
        weighted = [
            {"destination": {"host": host, "subset": name}, "weight": weight}
            for name, weight in _weights(split)
            if weight
        ]
    else:
        weighted = [{"destination": {"host": host}}]
    http += routes("default", None, weighted)
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": _metadata(name, namespace),
        "spec": {"hosts": [host], "http": http},
    }


def istio_manifests(settings: MeshSettings, service: str) -> list[dict[str, Any]]:
    """``[DestinationRule, VirtualService]`` for upstream ``service``."""
    return [destination_rule(settings, service), virtual_service(settings, service)]


# ------------------------------------------------------------------------------------------- kubernetes


def termination_grace_period(settings: MeshSettings) -> int:
    """``drain_delay + shutdown_grace + LIFESPAN_SHUTDOWN``, rounded up: the pod is never killed mid-drain."""
    health = settings.health_check
    return math.ceil(health.drain_delay + health.shutdown_grace) + LIFESPAN_SHUTDOWN


def probes(settings: MeshSettings) -> dict[str, dict[str, Any]]:
    """The three probes, with the timings docs/health.md gives: startup up to 2 minutes, readiness as often
    as readiness checks run, liveness every 10 s with three chances."""

    def get(path: str) -> dict[str, Any]:
        return {"path": path, "port": PORT_NAME}

    readiness_period = max(1, math.ceil(settings.health_check.readiness_interval))
    return {
        "startupProbe": {"httpGet": get("/health/startup"), "periodSeconds": 2, "failureThreshold": 60},
        "readinessProbe": {
            "httpGet": get("/health/ready"),
            "periodSeconds": readiness_period,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": get("/health/live"),
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
    }


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(", ", ": "))


def _secret_ref(settings: MeshSettings, name: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": f"{settings.service_name}-mesh", "key": name.replace("_", "-")}}


def mesh_env(settings: MeshSettings) -> list[dict[str, Any]]:
    """The ``MESH_*`` variables that rebuild ``settings`` in a pod: the name, environment and mode, then
    every value that differs from the environment's preset. Secrets come from the Secret
    ``<service_name>-mesh`` (key: the field name with dashes), never in clear."""
    baseline = MeshSettings.model_validate({"environment": settings.environment})
    env: list[dict[str, Any]] = [
        {"name": f"{ENV_PREFIX}SERVICE_NAME", "value": settings.service_name},
        {"name": f"{ENV_PREFIX}ENVIRONMENT", "value": settings.environment},
        {"name": f"{ENV_PREFIX}MODE", "value": settings.mode},
    ]
    shown = {"service_name", "environment", "mode"}
    for field in type(settings).model_fields:
        if field in shown:
            continue
        value, base = getattr(settings, field), getattr(baseline, field)
        variable = f"{ENV_PREFIX}{field.upper()}"
        if field == "services":
            if value:
                overrides = {name: o.model_dump(mode="json", exclude_unset=True) for name, o in value.items()}
                env.append({"name": variable, "value": _env_text(overrides)})
        elif isinstance(value, BaseModel):
            env += _section_env(settings, variable, value, base)
        elif value != base:
            env.append({"name": variable, "value": _env_text(value)})
    return env


def _section_env(settings: MeshSettings, variable: str, value: BaseModel, base: BaseModel) -> list[dict[str, Any]]:
    """One section's changed fields: one variable each, or, when one of them is ``null`` (which a single
    variable cannot say), one JSON variable for the section; secrets always from the Secret."""
    dumped = value.model_dump(mode="json")
    changed = [name for name in type(value).model_fields if getattr(value, name) != getattr(base, name)]
    secrets = [name for name in changed if isinstance(getattr(value, name), SecretStr)]
    plain = [name for name in changed if name not in secrets]
    env = [
        {"name": f"{variable}{ENV_NESTED_DELIMITER}{name.upper()}", "valueFrom": _secret_ref(settings, name)}
        for name in secrets
    ]
    if any(dumped[name] is None for name in plain):
        env.insert(0, {"name": variable, "value": _env_text({name: dumped[name] for name in plain})})
    else:
        env += [
            {"name": f"{variable}{ENV_NESTED_DELIMITER}{name.upper()}", "value": _env_text(dumped[name])}
            for name in plain
        ]
    return env


def deployment(settings: MeshSettings, *, image: str, port: int = 8080) -> dict[str, Any]:
    """A Deployment for this service (``settings.service_name``) with the mesh's probes, grace period and
    env. Its container is named after the service, so it also serves as a kustomize patch."""
    name = settings.service_name
    labels = {"app.kubernetes.io/name": name}
    container = {
        "name": name,
        "image": image,
        "ports": [{"name": PORT_NAME, "containerPort": port}],
        "env": mesh_env(settings),
        **probes(settings),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {**labels, **MANAGED_BY}},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": termination_grace_period(settings),
                    "containers": [container],
                },
            },
        },
    }


# ------------------------------------------------------------------------------------------------- yaml

#: Strings written without quotes: names, paths, images, ``30s``-style durations. Nothing YAML would read as
#: another type (a number, a boolean, a date) is plain.
_PLAIN = re.compile(r"^(?:[A-Za-z/][A-Za-z0-9_./,:-]*(?<!:)|\d+(?:\.\d+)?(?:ms|s|m|h))$")
_YAML_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)  # the shortest text that reads back as the same float
        return text if "." in text else text.replace("e", ".0e")  # PyYAML wants a dot: 1.0e+16
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    if text.isprintable():
        return "'" + text.replace("'", "''") + "'"
    return '"' + "".join(_escape(ch) for ch in text) + '"'


def _escape(ch: str) -> str:
    """One character of a YAML double-quoted scalar (YAML's escapes: ``\\x``, ``\\u``, ``\\U``)."""
    if ch in '"\\':
        return "\\" + ch
    if ch.isprintable():
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        lines = []
        for key, item in value.items():
            head = f"{pad}{_scalar(key)}:"
            if isinstance(item, Mapping | list) and item:
                lines.append(head)
                lines += _lines(item, indent + 2 if isinstance(item, Mapping) else indent)
            else:
                lines.append(f"{head} {_inline(item)}")
        return lines
    lines = []
    for item in value:
        if isinstance(item, Mapping | list) and item:
            nested = _lines(item, indent + 2)
            lines.append(f"{pad}- {nested[0][indent + 2:]}")
            lines += nested[1:]
        else:
            lines.append(f"{pad}- {_inline(item)}")
    return lines


def _inline(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def to_yaml(documents: Iterable[Mapping[str, Any]], *, header: str | None = None) -> str:
    """Documents as block-style YAML, ``---`` between them; ``header`` becomes ``#`` comment lines on top.

    >>> print(to_yaml([{"kind": "Service", "spec": {"ports": [{"name": "http", "port": 80}]}}]), end="")
    kind: Service
    spec:
      ports:
      - name: http
        port: 80
    """
    text = "\n---\n".join("\n".join(_lines(document, 0)) for document in documents) + "\n"
    if header is None:
        return text
    return "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + text
