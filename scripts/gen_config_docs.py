"""Generate ``docs/configuration.md`` from ``fastapi_mesh.settings``, so the reference cannot drift.

    python scripts/gen_config_docs.py           # write docs/configuration.md
    python scripts/gen_config_docs.py --check   # exit 1 if docs/configuration.md is out of date

Everything in the tables (sections, fields, types, limits, built-in defaults, preset values, environment
variable names) and every example output is read from, or produced by running, the code. A field's text is
its ``description``, else its attribute docstring or ``#:`` comment in ``settings.py``, else a note from
``NOTES`` below; a note that names no field is an error, so renaming a field cannot leave a stale note.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import inspect
import json
import os
import random
import re
import string
import sys
import textwrap
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, BeforeValidator, ValidationError
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastapi_mesh import settings as mesh_settings  # noqa: E402
from fastapi_mesh.balancing.strategies import build_strategy  # noqa: E402
from fastapi_mesh.discovery import build_discovery  # noqa: E402
from fastapi_mesh.settings import (  # noqa: E402
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    POLICY_SECTIONS,
    PRESETS,
    MeshSettings,
    parse_duration,
)

OUTPUT = ROOT / "docs" / "configuration.md"
ENVIRONMENTS = tuple(PRESETS)
NONE_MARK = "—"

# ------------------------------------------------------------------------------------------ field notes

#: Text for fields whose code carries none (no ``description``, docstring or ``#:`` comment). Keyed by
#: ``"section.field"`` (``"field"`` at the top level, ``"Model.field"`` for nested models).
NOTES: dict[str, str] = {
    "service_name": "This service's own name. It appears in probe bodies (`service`), in the `mesh_info` metric "
    "and in `/mesh/status`.",
    "environment": "Selects the preset whose values sit under the global settings (see the preset columns). "
    "Also reported by `mesh_info` and `/mesh/status`.",
    "zone": "The zone this service runs in.",
    "discovery.backend": "Which discovery backend publishes endpoint sets.",
    "discovery.endpoints": "Static endpoint sets by service name (backend `static`). Each entry is a URL string "
    "or an endpoint object (see *Endpoint entries*). From the environment: JSON.",
    "discovery.consul_url": "Base URL of the Consul HTTP API (backend `consul`).",
    "discovery.namespace": "Kubernetes namespace of the upstream services (backends `kubernetes-dns` and "
    "`kubernetes`, and the hosts `fastapi-mesh render istio` writes).",
    "discovery.cluster_domain": "Cluster DNS domain (backend `kubernetes-dns`, and `fastapi-mesh render istio`): "
    "names are looked up under `<service>.<namespace>.svc.<cluster_domain>`.",
    "discovery.refresh_interval": "How often a polling backend (`kubernetes-dns`) looks again: at a record's "
    "TTL, but never more often than this.",
    "load_balancer.strategy": "How one endpoint is picked among the eligible ones for each attempt.",
    "load_balancer.max_connections_per_instance": "Calls one endpoint may carry at once. A full endpoint is "
    "skipped; when every healthy endpoint is full the call fails with `BulkheadFull`.",
    "circuit_breaker.failure_threshold": "Failures inside the window needed to open the breaker (together with "
    "`failure_threshold_percentage`).",
    "circuit_breaker.failure_threshold_percentage": "Failure rate, in percent of the calls inside the window, "
    "needed to open the breaker (together with `failure_threshold`).",
    "circuit_breaker.timeout": "The per-attempt timeout (connect, read, write and pool), applied under retry: a "
    "timed-out attempt is an attempt failure. A call's own httpx `timeout=` replaces it.",
    "circuit_breaker.reset_timeout": "How long the breaker stays open before it lets probe calls through (half-open).",
    "circuit_breaker.fallback_enabled": "Whether a per-call `fallback=` may answer for this service.",
    "circuit_breaker.enabled": "`false`: the breaker starts `disabled` (admits every call, records nothing).",
    "circuit_breaker.sliding_window_type": "`count`: the window is the last `sliding_window_size` calls; "
    "`time`: the last `sliding_window_size` seconds.",
    "circuit_breaker.slow_call_duration": "Calls that take at least this long count as slow; `null`: no call is slow.",
    "circuit_breaker.slow_call_rate_threshold": "Slow calls, in percent of the calls inside the window, that open "
    "the breaker (at least `failure_threshold` of them; only with `slow_call_duration`).",
    "circuit_breaker.half_open_max_calls": "Probe calls let through while half-open. That many successes close "
    "the breaker; one failure opens it again.",
    "circuit_breaker.max_reset_timeout": "Upper bound of the open period as `reset_timeout_multiplier` grows it.",
    "circuit_breaker.failure_on_status": "Response statuses the breaker counts as failures. Any other response, "
    "4xx included, is a success; no response at all is a failure.",
    "outlier_detection.enabled": "`false`: no endpoint is ever ejected.",
    "outlier_detection.consecutive_failures": "Failures in a row (on one endpoint) that eject it.",
    "outlier_detection.base_ejection_time": "The n-th ejection of an endpoint lasts n times this, up to "
    "`max_ejection_time`.",
    "outlier_detection.max_ejection_time": "Upper bound of one ejection.",
    "outlier_detection.max_ejection_percent": "At most this share of a service's endpoints is ejected at once; "
    "the last endpoint still in is never ejected.",
    "bulkhead.max_concurrent": "Calls to the service in flight at once; `null`: no limit (the layer passes "
    "calls straight through).",
    "bulkhead.max_queue": "Calls that may wait for a free slot; any more are refused at once with `BulkheadFull`.",
    "bulkhead.queue_timeout": "How long a queued call waits for a slot before it fails with `BulkheadFull`.",
    "retry.max_retries": "Retries after the first attempt: a call makes at most `1 + max_retries` attempts.",
    "retry.initial_delay": "The base delay before the first retry.",
    "retry.max_delay": "Upper bound of any one delay between attempts, a `Retry-After` hint included.",
    "retry.backoff_strategy": "How the delay grows from `initial_delay`: `exponential` (doubling), `fibonacci`, "
    "`linear`, `fixed`, or `decorrelated-jitter` (random between `initial_delay` and three times the "
    "previous delay).",
    "retry.jitter": "How the delay is spread: `full` (random between 0 and the delay), `equal` (half the delay "
    "plus a random half) or `none`. `decorrelated-jitter` brings its own randomness.",
    "retry.max_elapsed": "The default overall deadline of a call, across every attempt and backoff; `null`: none.",
    "retry.retry_on_status": "Response statuses that are retried (idempotent requests only); when retries run "
    "out the last response is returned.",
    "retry.budget_ttl": "The window the retry budget counts requests and retries over.",
    "health_check.liveness_interval": "How often liveness checks run.",
    "health_check.readiness_interval": "How often readiness checks run, and startup checks until they have all "
    "passed once.",
    "health_check.failure_threshold": "Failures in a row after which a critical check fails its probe (503).",
    "health_check.check_timeout": "Time limit of one check run; a check that takes longer has failed.",
    "mtls.enabled": "Present the client certificate below, and verify upstreams against `ca_path`, on `https` "
    "endpoints. Needs all three paths.",
    "mtls.cert_path": "Client certificate (PEM).",
    "mtls.key_path": "Private key of the client certificate (PEM).",
    "mtls.ca_path": "CA bundle (PEM) that upstream certificates are verified against.",
    "EndpointConfig.url": "`http` or `https`, a host (an IP address or a DNS name) and an optional port; no path, "
    "query, fragment, user or password (they would show in `/mesh/status` and metrics), no whitespace.",
    "EndpointConfig.weight": "Relative weight for the `weighted` and `random` strategies.",
    "EndpointConfig.metadata": "Free-form string labels.",
    "EndpointConfig.zone": "The endpoint's zone.",
}

#: Fields that are validated but read by no code outside ``settings.py`` yet, each with the pattern that
#: would show a use. The generator fails once a pattern turns up in the package, so the mark cannot outlive
#: the fact.
UNUSED: dict[str, str] = {}
UNUSED_NOTE = " *Not used by this version: the value is validated, nothing reads it yet.*"

# ------------------------------------------------------------------------------------------- prose blocks

TITLE = "# Configuration reference"

GENERATED_NOTE = (
    "<!-- Generated by scripts/gen_config_docs.py from fastapi_mesh/settings.py. Do not edit by hand: "
    "run `python scripts/gen_config_docs.py`. -->"
)

INTRO = """\
All of the mesh's settings live in one validated object, `MeshSettings`. Give it values in code, or let it
read `MESH_*` environment variables: `Mesh()` and `MeshClient()` without settings call `MeshSettings()`,
which reads the environment.

```python
from fastapi_mesh import Mesh, MeshSettings

mesh = Mesh(MeshSettings(service_name="api-gateway", environment="production",
                         retry={"max_retries": 3}, services={"payment-service": {"retry": {"max_retries": 0}}}))
```

## Where a value comes from

The effective policy for one upstream service is built in four layers, each over the one before:

1. the built-in default (the *Default* column below);
2. the environment preset chosen by `environment` (the *development*, *staging* and *production* columns;
   `${none}` where the preset does not set the field);
3. the global settings (code or `MESH_*` variables);
4. `services[name]`, partial overrides for one upstream service.

Preset values show on the settings object wherever nothing overrides them, and a global value replaces the
preset's for that one field only:

```python
${preset_example}
```

Settings objects are frozen: build a new one to change a value.

## Values from the environment

Every field has a variable: `MESH_` + section + `__` + field, in any case (`MESH_RETRY__MAX_RETRIES=3`;
top-level fields have no section: `MESH_SERVICE_NAME`). Scalars are written as they are: numbers,
`true`/`false`, strings without quotes. Dict and list values are JSON:

```sh
MESH_DISCOVERY__ENDPOINTS='{"user-service": ["http://10.0.0.1:8080", {"url": "http://10.0.0.2:8080", "weight": 3}]}'
MESH_RETRY__RETRY_ON_STATUS='[502, 503, 504]'
MESH_SERVICES='{"payment-service": {"retry": {"max_retries": 0}}}'
```

A whole section may also be given as one JSON object (`MESH_RETRY='{"max_retries": 3}'`). A `MESH_`
variable that names no setting, at any level, is an error, not ignored, so a typo cannot go unnoticed:

```text
${error_unknown_env}
```

A list or dict value that is not JSON names the setting and the variable:

```text
${error_bad_json}
```

A validation error names the variable only when the value came from it: a value passed in code wins over
the variable, and an error in it names no variable.

## Durations

Fields of type *duration* are seconds as a number, or a string with a unit: `ms`, `s`, `m` or `h` (any
case). For example:

${duration_table}

## Per-service overrides

`services` maps an upstream service's name to partial overrides of the sections
${policy_sections}.
Only the fields given are replaced; the rest come from the global values (which already include the
preset). A field is replaced whole: a dict such as `routing.split` given for a service replaces the global
one (`{}` clears it), it is not merged key by key. An explicit `null` sets a field that allows it to `null`.

```python
${override_example}
```

`settings.for_service(name)` returns the effective policy for one upstream (a `ServicePolicy` with the
sections above and `service`); it is computed once per name. The function
`get_service_config(name, settings=None)` does the same, and reads `MeshSettings()` from the environment
when no settings are given. From the environment, use `MESH_SERVICES` with JSON as above, or one variable
per field: `MESH_SERVICES__<NAME>__<SECTION>__<FIELD>`. Variable names are read without regard to case, so
the service name arrives in lower case (`MESH_SERVICES__PAYMENT-SERVICE__RETRY__MAX_RETRIES=0` configures
`payment-service`).

`fastapi-mesh check` validates the `MESH_*` variables and prints the settings as JSON;
`fastapi-mesh policy <service>` prints one service's effective policy.

## Validation errors

A bad value fails when the settings are built, at start-up, with pydantic's `ValidationError`. The
message names the field and, when a `MESH_*` variable set it, the variable and its value:

```text
${error_env}
```

Checks across fields name both fields; a per-service override that breaks one is reported under its
`services.<name>.<section>` path:

```text
${error_service}
```

An unknown key is an error in code (`extra="forbid"`) as in the environment:

```text
${error_unknown}
```

## Reference

Values are shown as JSON (`true`, `null`, `"text"`). *duration* is seconds (see above); limits follow the
type, e.g. `int (≥ 0, ≤ 100)`.
"""

SERVICES_TEXT = """\
Partial overrides for one upstream service, keyed by its name. Each entry may hold the sections
${policy_sections},
with any subset of their fields; see *Per-service overrides* above. From the environment: `MESH_SERVICES`
as JSON, or `MESH_SERVICES__<NAME>__<SECTION>__<FIELD>`.
"""


# ----------------------------------------------------------------------------------------- running code


@contextmanager
def _environment(values: Mapping[str, str] | None = None) -> Iterator[None]:
    """Run with no ``MESH_*`` variables but ``values``, then put the environment back as it was."""
    saved = {key: value for key, value in os.environ.items() if key.upper().startswith(ENV_PREFIX)}
    for key in saved:
        del os.environ[key]
    os.environ.update(values or {})
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.upper().startswith(ENV_PREFIX)]:
            del os.environ[key]
        os.environ.update(saved)


def _error_text(build: typing.Callable[[], object], env: Mapping[str, str] | None = None) -> str:
    """The message of the error ``build`` raises (it must raise one)."""
    with _environment(env):
        try:
            build()
        except (ValidationError, ValueError) as exc:
            return str(exc)
    raise AssertionError("the example was meant to fail")


def _preset_example() -> str:
    production = MeshSettings(environment="production")
    tuned = MeshSettings(environment="production", circuit_breaker={"timeout": 1})
    lines = [
        '>>> s = MeshSettings(environment="production")',
        ">>> s.circuit_breaker.failure_threshold, s.circuit_breaker.timeout, s.retry.backoff_strategy",
        repr(
            (
                production.circuit_breaker.failure_threshold,
                production.circuit_breaker.timeout,
                production.retry.backoff_strategy,
            )
        ),
        '>>> s = MeshSettings(environment="production", circuit_breaker={"timeout": 1})',
        ">>> s.circuit_breaker.failure_threshold, s.circuit_breaker.timeout",
        repr((tuned.circuit_breaker.failure_threshold, tuned.circuit_breaker.timeout)),
    ]
    return "\n".join(lines)


def _override_example() -> str:
    settings = MeshSettings(
        environment="production",
        retry={"max_retries": 3},
        services={"payment-service": {"retry": {"max_retries": 0}, "circuit_breaker": {"timeout": "10s"}}},
    )
    pay = settings.for_service("payment-service")
    other = settings.for_service("user-service")
    lines = [
        '>>> s = MeshSettings(environment="production", retry={"max_retries": 3},',
        '...                  services={"payment-service": {"retry": {"max_retries": 0},',
        '...                                                "circuit_breaker": {"timeout": "10s"}}})',
        '>>> pay = s.for_service("payment-service")',
        ">>> pay.retry.max_retries, pay.retry.backoff_strategy, pay.circuit_breaker.timeout",
        repr((pay.retry.max_retries, pay.retry.backoff_strategy, pay.circuit_breaker.timeout)),
        '>>> s.for_service("user-service").retry.max_retries',
        repr(other.retry.max_retries),
    ]
    return "\n".join(lines)


def _duration_table() -> str:
    rows = ["| written | seconds |", "| --- | --- |"]
    for text in ("2.5", "500ms", "3s", "2m", "1h", "1.5S"):
        rows.append(f"| `{text}` | `{parse_duration(text)!r}` |")
    return "\n".join(rows)


def _backend_note() -> str:
    """Which discovery backends this version can build from settings alone (found by trying each)."""
    available, unavailable = [], []
    for backend in typing.get_args(mesh_settings.DiscoveryBackend):
        with _environment():
            settings = MeshSettings(discovery={"backend": backend})
        try:
            build_discovery(settings)
        except NotImplementedError:
            unavailable.append(backend)
            continue
        except ValueError:
            continue  # "custom": needs a Discovery object, said below
        available.append(backend)
    note = f" Built from settings in this version: {_or_list(available)}."
    if unavailable:
        note += f" Not available yet (start-up fails with `NotImplementedError`): {_or_list(unavailable)}."
    if "custom" in typing.get_args(mesh_settings.DiscoveryBackend):
        note += (
            " `custom`: pass your own `Discovery` object, `Mesh(settings, discovery=...)`, or name its class in"
            " `custom_class`."
        )
    return note


def _or_list(names: typing.Sequence[str]) -> str:
    quoted = [f"`{name}`" for name in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1] if quoted else "none"


def _strategy_note() -> str:
    """One line per strategy, from the docstring of the class each name builds."""
    lines = []
    for name in typing.get_args(mesh_settings.Strategy):
        doc = inspect.getdoc(type(build_strategy(name, random.Random(0)))) or ""
        first = _rst_to_md(doc.splitlines()[0]) if doc else ""
        lines.append(f"`{name}`: {first[:1].lower() + first[1:]}")
    return " " + "; ".join(line.rstrip(".") for line in lines) + "."


def _idempotent_note() -> str:
    from fastapi_mesh.resilience import retry

    methods = sorted(retry.IDEMPOTENT_METHODS)
    header = getattr(retry, "IDEMPOTENCY_HEADER", None)
    note = f" Idempotent requests are {_or_list(methods)}"
    if header:
        note += f", and any request with an `{header.title()}` header"
    return note + "."


#: Extra text computed from the code, appended to a field's description.
COMPUTED: dict[str, typing.Callable[[], str]] = {
    "discovery.backend": _backend_note,
    "load_balancer.strategy": _strategy_note,
    "retry.retry_on_status": _idempotent_note,
}

# ---------------------------------------------------------------------------------------- field details


def _rst_to_md(text: str) -> str:
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _source_docs(model: type[BaseModel]) -> dict[str, str]:
    """Attribute docstrings and ``#:`` comments of ``model``'s fields, from its source."""
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    tree = ast.parse(source)
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for index, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        following = body[index + 1] if index + 1 < len(body) else None
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[name] = inspect.cleandoc(following.value.value)
            continue
        comment: list[str] = []
        row = node.lineno - 2
        while row >= 0 and lines[row].strip().startswith("#:"):
            comment.insert(0, lines[row].strip()[2:].strip())
            row -= 1
        if comment:
            docs[name] = " ".join(comment)
    return docs


def _description(model: type[BaseModel], key: str, name: str, info: FieldInfo, sources: dict[str, str]) -> str:
    text = info.description or sources.get(name) or NOTES.get(key, "")
    text = _rst_to_md(" ".join(text.split()))
    extra = COMPUTED.get(key)
    if extra is not None:
        text += extra()
    if key in UNUSED:
        text += UNUSED_NOTE
    return text.strip()


def _is_duration(metadata: typing.Iterable[Any]) -> bool:
    return any(isinstance(m, BeforeValidator) and m.func is parse_duration for m in metadata)


def _limits(metadata: typing.Iterable[Any]) -> list[str]:
    limits: list[str] = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            limits += _limits(item.metadata)
        elif isinstance(item, annotated_types.Ge):
            limits.append(f"≥ {_number(item.ge)}")
        elif isinstance(item, annotated_types.Gt):
            limits.append(f"> {_number(item.gt)}")
        elif isinstance(item, annotated_types.Le):
            limits.append(f"≤ {_number(item.le)}")
        elif isinstance(item, annotated_types.Lt):
            limits.append(f"< {_number(item.lt)}")
        elif isinstance(item, annotated_types.MinLen):
            limits.append(f"length ≥ {item.min_length}")
        elif isinstance(item, annotated_types.MaxLen):
            limits.append(f"length ≤ {item.max_length}")
    return limits


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}".replace(",", " ") if isinstance(value, int) and abs(value) >= 10_000 else str(value)


def _type_name(annotation: Any, metadata: typing.Sequence[Any] = ()) -> str:
    """A short readable name for a field's type, with its limits."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0], [*args[1:], *metadata])
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(arg, metadata) for arg in args if arg is not type(None)]
        if type(None) in args:
            parts.append("null")
        return " or ".join(parts)
    if origin is typing.Literal:
        return " / ".join(json.dumps(arg) for arg in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if origin is dict:
        return f"dict[{_type_name(args[0])}, {_type_name(args[1])}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model_label(annotation)
    name = "duration" if _is_duration(metadata) else getattr(annotation, "__name__", str(annotation))
    limits = _limits(metadata)
    return f"{name} ({', '.join(limits)})" if limits else name


def _model_label(model: type[BaseModel]) -> str:
    return {"EndpointConfig": "endpoint"}.get(model.__name__, model.__name__)


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            found.append(arg)
        else:
            found += _nested_models(arg)
    return found


def _value(value: Any) -> str:
    """A value as JSON, with long runs of consecutive integers shortened."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if (
        isinstance(value, list)
        and len(value) > 4
        and all(isinstance(v, int) for v in value)
        and value == list(range(value[0], value[0] + len(value)))
    ):
        return f"`[{value[0]}, {value[1]}, …, {value[-1]}]`"
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    return _value(info.get_default(call_default_factory=True))


def _env_var(*parts: str) -> str:
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(parts).upper()


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


# ------------------------------------------------------------------------------------------------ render


def _field_table(
    model: type[BaseModel], section: str | None, with_presets: bool, key_prefix: str | None = None
) -> list[str]:
    sources = _source_docs(model)
    header = ["Field", "Type", "Default"]
    if with_presets:
        header += list(ENVIRONMENTS)
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    notes: list[str] = []
    for name, info in model.model_fields.items():
        row = [f"`{name}`", _cell(_type_name(info.annotation, info.metadata)), _cell(_default(info))]
        if with_presets and section is not None:
            for environment in ENVIRONMENTS:
                preset = PRESETS[environment].get(section, {})
                row.append(_cell(_value(preset[name])) if name in preset else NONE_MARK)
        out.append("| " + " | ".join(row) + " |")
        prefix = key_prefix if key_prefix is not None else section
        key = f"{prefix}.{name}" if prefix else name
        env = f" (`{_env_var(section, name)}`)" if key_prefix is None and section is not None else ""
        text = _description(model, key, name, info, sources)
        notes.append(f"- `{name}`{env}: {text}".rstrip(": "))
    return [*out, "", *notes]


def _check_notes() -> None:
    """Every note must name a field that exists (so a rename cannot leave a stale note behind)."""
    known: set[str] = set()
    nested: set[type[BaseModel]] = set()
    for name, info in MeshSettings.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            known.update(f"{name}.{field}" for field in annotation.model_fields)
            nested.update(_nested_models_of(annotation))
        else:
            known.add(name)
    for model in nested:
        known.update(f"{model.__name__}.{field}" for field in model.model_fields)
    stale = sorted(set(NOTES) - known) + sorted(set(COMPUTED) - known) + sorted(set(UNUSED) - known)
    if stale:
        raise RuntimeError(f"gen_config_docs.py: notes for fields that do not exist: {', '.join(stale)}")
    package = Path(mesh_settings.__file__).parent
    for path in sorted(package.rglob("*.py")):
        if path.name == "settings.py" and path.parent == package:
            continue
        source = path.read_text(encoding="utf-8")
        for key, pattern in UNUSED.items():
            if re.search(pattern, source):
                where = path.relative_to(package.parent).as_posix()
                raise RuntimeError(
                    f"gen_config_docs.py: {key} is marked unused but {where} reads it; remove it from UNUSED"
                )


def _nested_models_of(model: type[BaseModel]) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for info in model.model_fields.values():
        found += _nested_models(info.annotation)
    return found


def render() -> str:
    """The whole of ``docs/configuration.md``."""
    _check_notes()
    policy_sections = ", ".join(f"`{name}`" for name in POLICY_SECTIONS)
    with _environment():
        intro = string.Template(INTRO).substitute(
            none=NONE_MARK,
            preset_example=_preset_example(),
            duration_table=_duration_table(),
            policy_sections=policy_sections,
            override_example=_override_example(),
            error_env=_error_text(MeshSettings, {"MESH_RETRY__MAX_RETRIES": "-1"}),
            error_service=_error_text(
                lambda: MeshSettings(services={"payment-service": {"retry": {"initial_delay": "5s"}}})
            ),
            error_unknown=_error_text(lambda: MeshSettings(retry={"max_retry": 3})),
            error_unknown_env=_error_text(MeshSettings, {"MESH_RETRIES__MAX_RETRIES": "3"}),
            error_bad_json=_error_text(MeshSettings, {"MESH_RETRY__RETRY_ON_STATUS": "502,503"}),
        )
    parts = [TITLE, "", GENERATED_NOTE, "", intro.rstrip(), ""]
    top: list[str] = []
    sections: list[str] = []
    for name, info in MeshSettings.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections.append(name)
        else:
            top.append(name)

    if top:
        parts += ["### Top-level fields", ""]
        parts += _top_level_table([n for n in top if n != "services"])
        parts.append("")
    for section in sections:
        model = MeshSettings.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        parts += [f"### `{section}`", ""]
        doc = inspect.getdoc(model)
        if doc:
            parts += [_rst_to_md(" ".join(doc.split())), ""]
        if section in POLICY_SECTIONS:
            parts += [f"May be overridden per service (`services.<name>.{section}`).", ""]
        parts += _field_table(model, section, with_presets=True)
        parts.append("")
        for nested in dict.fromkeys(_nested_models_of(model)):
            parts += [
                f"#### Endpoint entries (`{section}`)"
                if nested.__name__ == "EndpointConfig"
                else f"#### `{nested.__name__}`",
                "",
            ]
            nested_doc = inspect.getdoc(nested)
            if nested_doc:
                parts += [_rst_to_md(" ".join(nested_doc.split())), ""]
            parts += _field_table(nested, section, with_presets=False, key_prefix=nested.__name__)
            parts.append("")
    if "services" in top:
        services_text = string.Template(SERVICES_TEXT).substitute(policy_sections=policy_sections)
        parts += ["### `services`", "", services_text.rstrip(), ""]
    return "\n".join(parts).rstrip() + "\n"


def _top_level_table(names: list[str]) -> list[str]:
    sources = _source_docs(MeshSettings)
    out = ["| Field | Type | Default |", "| --- | --- | --- |"]
    notes: list[str] = []
    for name in names:
        info = MeshSettings.model_fields[name]
        out.append(f"| `{name}` | {_cell(_type_name(info.annotation, info.metadata))} | {_cell(_default(info))} |")
        text = _description(MeshSettings, name, name, info, sources)
        notes.append(f"- `{name}` (`{_env_var(name)}`): {text}".rstrip(": "))
    return [*out, "", *notes]


# -------------------------------------------------------------------------------------------------- main


def check(path: Path = OUTPUT) -> list[str]:
    """The differences between ``path`` and what the generator writes now (empty when up to date)."""
    expected = render()
    actual = path.read_text(encoding="utf-8") if path.exists() else ""
    if actual == expected:
        return []
    return list(
        difflib.unified_diff(actual.splitlines(), expected.splitlines(), str(path.name), "generated", lineterm="", n=1)
    )


def main(argv: typing.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate docs/configuration.md from fastapi_mesh.settings.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date; write nothing")
    args = parser.parse_args(argv)
    if args.check:
        diff = check()
        if diff:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date; run: python scripts/gen_config_docs.py", file=sys.stderr)
            print("\n".join(diff[:60]), file=sys.stderr)
            return 1
        print(f"{OUTPUT.relative_to(ROOT)} is up to date")
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
