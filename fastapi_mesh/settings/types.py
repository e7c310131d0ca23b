"""The value types the sections share, and their validators: durations, status codes, endpoint URLs,
nameservers and DNS labels; and ``Section``, the base of every section model.

Durations are float seconds and also accept ``"500ms"``, ``"3s"``, ``"2m"``, ``"1h"``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

__all__ = [
    "DNS_LABEL",
    "NonNegativeDuration",
    "PositiveDuration",
    "Section",
    "StatusCode",
    "check_endpoint_url",
    "expand_statuses",
    "parse_duration",
    "split_nameserver",
]


class Section(BaseModel):
    """A settings section: unknown keys are errors and values cannot change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------- durations

_DURATION_RE = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """Turn ``"500ms"``, ``"3s"``, ``"2m"``, ``"1h"`` or a number into float seconds.

    >>> parse_duration("500ms"), parse_duration("2m"), parse_duration(3)
    (0.5, 120.0, 3.0)

    Anything else is handed on unchanged for pydantic to reject with its own message.
    """
    if isinstance(value, bool):
        raise PydanticCustomError("duration", "not a duration: {value}", {"value": repr(value)})
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match is None:
            raise PydanticCustomError(
                "duration",
                "not a duration: {value} (use seconds, or a number with ms, s, m or h, e.g. '500ms')",
                {"value": repr(value)},
            )
        unit = match.group(2).lower() if match.group(2) else None
        return float(match.group(1)) * _UNIT_SECONDS[unit]
    return value


PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, allow_inf_nan=False)]
NonNegativeDuration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, allow_inf_nan=False)]


# ------------------------------------------------------------------------------------------- status codes

#: One HTTP response status.
StatusCode = Annotated[int, Field(ge=100, le=599)]
_STATUS_RANGE = re.compile(r"^\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?$")


def expand_statuses(value: Any) -> Any:
    """``"200-399"`` or ``[200, "300-302"]`` -> a sorted list of status codes; anything else unchanged.

    >>> expand_statuses(["204", "200-202"])
    [200, 201, 202, 204]
    """
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        return value
    statuses: set[Any] = set()
    for item in items:
        if not isinstance(item, str):
            statuses.add(item)
            continue
        match = _STATUS_RANGE.match(item)
        low = int(match.group(1)) if match else 0
        high = int(match.group(2) or low) if match else 0
        if match is None or high < low:
            raise PydanticCustomError(
                "status_range",
                "not a status or a range of statuses: {value} (e.g. 204 or '200-399')",
                {"value": repr(item)},
            )
        statuses.update(range(low, high + 1))
    if all(isinstance(s, int) and not isinstance(s, bool) for s in statuses):
        return sorted(statuses)
    return list(statuses)


# ------------------------------------------------------------------------------------------ endpoint URLs

_LOOKS_IPV4 = re.compile(r"^[0-9.]+$")
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}\.?$){_LABEL}(\.{_LABEL})*\.?$")


def check_endpoint_url(value: str) -> str:
    """Validate an endpoint URL: ``http``/``https``, a host, an optional port, no path beyond ``/``."""
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError(f"malformed endpoint URL {value!r}: whitespace or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
        httpx.URL(value)
    except (ValueError, httpx.InvalidURL) as exc:
        raise ValueError(f"malformed endpoint URL {value!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"malformed endpoint URL {value!r}: the scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"malformed endpoint URL {value!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"malformed endpoint URL {value!r}: give only scheme://host[:port]")
    if port == 0:
        raise ValueError(f"malformed endpoint URL {value!r}: port 0")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"malformed endpoint URL {value!r}: no user or password in an endpoint (they would show in "
            "/mesh/status and metrics); use mTLS or pass credentials per call"
        )
    host = parts.hostname
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"malformed endpoint URL {value!r}: bad IPv6 address") from None
    elif _LOOKS_IPV4.match(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"malformed endpoint URL {value!r}: bad IPv4 address") from None
    elif not _HOSTNAME.match(host):
        raise ValueError(f"malformed endpoint URL {value!r}: bad host name {host!r}")
    return value.rstrip("/")


# ------------------------------------------------------------------------------------------- DNS and names

#: An RFC 1123 DNS label, the form of Kubernetes namespace and Service names.
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def split_nameserver(value: str) -> tuple[str, int]:
    """``"10.0.0.10:53"`` -> ``("10.0.0.10", 53)``; ``"[fd00::a]:5353"`` -> ``("fd00::a", 5353)``.

    >>> split_nameserver("127.0.0.1:5353")
    ('127.0.0.1', 5353)
    """
    match = re.match(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]+)):(\d{1,5})$", value.strip())
    if match is None:
        raise ValueError(f"nameserver {value!r} must be host:port (e.g. 10.96.0.10:53, or [fd00::a]:53)")
    host = match.group(1) or match.group(2)
    port = int(match.group(3))
    if not 1 <= port <= 65535:
        raise ValueError(f"nameserver {value!r}: port {port} is out of range")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver {value!r}: {host!r} is not an IP address") from None
    return host, port
