"""OpenTelemetry traces: a client span per outbound request, a server span per inbound one, and the W3C
trace context (``traceparent``, ``tracestate``, ``baggage``) carried across both.

Off unless ``observability.tracing`` is on (off, a call pays one attribute check for it). When on:

- every request a ``MeshClient`` sends through its layer stack is one ``CLIENT`` span (a followed redirect
  or an auth step is a request of its own, so a span of its own), with the HTTP client attributes of the
  semantic conventions (``http.request.method``, ``server.address``, ``url.full`` with the query values
  redacted, ``http.response.status_code``, ``error.type``) and the mesh's (``mesh.service``,
  ``mesh.endpoint``: the endpoint that answered, ``mesh.attempts``). Retries, hedges and rejections by the
  circuit breaker or the bulkhead are events on it. The global propagator injects the span's context into
  the outbound request;
- ``MeshMiddleware`` extracts the caller's context and opens a ``SERVER`` span around the request, unless
  another instrumentation already did (opentelemetry-instrumentation-fastapi, say): then the mesh's client
  spans are children of that one and no second server span is made. The mesh's own probe, status and
  metrics routes are not traced.

Spans come from the ``tracer_provider`` given to ``Mesh`` / ``MeshClient``, else from the global one. With
neither configured, ``configure_from_environment`` sets up an SDK provider exporting over OTLP when the
``OTEL_*`` variables ask for it and an OTLP exporter package is installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextvars import Token
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import httpx
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.util.types import AttributeValue
from starlette.types import Scope

from .._httpx_compat import add_header_if_absent, set_header, url_key
from .._streams import ReleasingStream
from .._version import __version__
from ..context import EXTENSION
from ..errors import BulkheadFull, CircuitOpen

if TYPE_CHECKING:
    from ..context import CallContext, InboundContext

__all__ = [
    "BREAKER_REJECTED_EVENT",
    "BULKHEAD_REJECTED_EVENT",
    "HEDGE_EVENT",
    "RETRY_EVENT",
    "RETRY_EXHAUSTED_EVENT",
    "TRACER_NAME",
    "MeshTracing",
    "ServerSpan",
    "client_failed",
    "configure_from_environment",
    "end_client",
    "redact_url",
]

logger = logging.getLogger("fastapi_mesh.tracing")

#: The instrumentation scope of the mesh's spans.
TRACER_NAME = "fastapi_mesh"
#: Span events on a call's client span.
RETRY_EVENT = "mesh.retry"
RETRY_EXHAUSTED_EVENT = "mesh.retry.exhausted"
HEDGE_EVENT = "mesh.hedge"
BREAKER_REJECTED_EVENT = "mesh.circuit_breaker.rejected"
BULKHEAD_REJECTED_EVENT = "mesh.bulkhead.rejected"

#: The methods the semantic conventions know; any other is ``_OTHER`` (its span named ``HTTP``).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
REDACTED = "REDACTED"
#: Start attributes kept per (method, URL); paths with ids in them make this unbounded, so it is cleared.
_CACHE_SIZE = 1024


def redact_url(url: httpx.URL) -> str:
    """``url`` as ``url.full`` shows it: every query value and any user info replaced by ``REDACTED``,
    no fragment.

    >>> redact_url(httpx.URL("http://users/api?token=s3cret&page=2&flag#top"))
    'http://users/api?token=REDACTED&page=REDACTED&flag'
    >>> redact_url(httpx.URL("https://ada:pw@10.0.0.1:8443/"))
    'https://REDACTED:REDACTED@10.0.0.1:8443/'
    """
    if url.userinfo:
        url = url.copy_with(username=REDACTED, password=REDACTED)
    if url.fragment:
        url = url.copy_with(fragment=None)
    text = str(url)
    base, sep, query = text.partition("?")
    if not sep:
        return text
    parts = [part.partition("=")[0] + "=" + REDACTED if "=" in part else part for part in query.split("&")]
    return base + "?" + "&".join(parts)


class _HeaderSetter(Setter[httpx.Headers]):
    """Sets a propagation header on an outbound request, replacing any copy forwarded from the inbound one.

    >>> headers = httpx.Headers({"traceparent": "forwarded"})
    >>> _SETTER.set(headers, "traceparent", "00-ab-cd-01"); _SETTER.set(headers, "tracestate", "k=v")
    >>> headers.multi_items()
    [('traceparent', '00-ab-cd-01'), ('tracestate', 'k=v')]
    """

    def __init__(self) -> None:
        self._names: dict[str, bytes] = {}

    def set(self, carrier: httpx.Headers, key: str, value: str) -> None:
        name = self._names.get(key)
        if name is None:
            name = self._names[key] = key.lower().encode("latin-1")
        raw = value.encode("latin-1")
        if not add_header_if_absent(carrier, name, raw):  # there already (forwarded): replace it
            set_header(carrier, name, raw)


class _AsgiGetter(Getter[Sequence[tuple[bytes, bytes]]]):
    """Reads propagation headers from an ASGI scope's raw header list."""

    def get(self, carrier: Sequence[tuple[bytes, bytes]], key: str) -> list[str] | None:
        wanted = key.lower().encode("latin-1")
        values = [value.decode("latin-1") for name, value in carrier if name == wanted or name.lower() == wanted]
        return values or None

    def keys(self, carrier: Sequence[tuple[bytes, bytes]]) -> list[str]:
        return [name.decode("latin-1") for name, _ in carrier]


_SETTER = _HeaderSetter()
_GETTER = _AsgiGetter()


class MeshTracing:
    """Where the mesh's spans come from: a tracer of ``tracer_provider``, or of the global provider (looked
    up at each span, so a provider set after the mesh was built is used).

    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    >>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    >>> exporter = InMemorySpanExporter()
    >>> provider = TracerProvider()
    >>> provider.add_span_processor(SimpleSpanProcessor(exporter))
    >>> tracing = MeshTracing(provider)
    >>> tracing.tracer.start_span("GET").end()
    >>> [span.name for span in exporter.get_finished_spans()]
    ['GET']
    """

    __slots__ = ("_starts", "provider_given", "tracer")

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        #: Whether a provider was passed (then ``configure_from_environment`` never runs).
        self.provider_given = tracer_provider is not None
        self.tracer: Tracer = trace.get_tracer(TRACER_NAME, __version__, tracer_provider=tracer_provider)
        self._starts: dict[tuple[str, object], tuple[str, Mapping[str, AttributeValue]]] = {}  # client_start

    def client_start(self, method: str, service: str, url: httpx.URL) -> tuple[str, Mapping[str, AttributeValue]]:
        """The span name and start attributes of a request (what a sampler sees), kept per method and URL (the
        parsed reference a URL shares with the service's cached one)."""
        key = (method, url_key(url))
        found = self._starts.get(key)
        if found is not None:
            return found
        attributes: dict[str, AttributeValue] = {}
        if method in KNOWN_METHODS:
            name = method
            attributes["http.request.method"] = method
        else:
            name = "HTTP"
            attributes["http.request.method"] = "_OTHER"
            attributes["http.request.method_original"] = method
        attributes["server.address"] = url.host
        if url.port is not None:
            attributes["server.port"] = url.port
        attributes["url.full"] = redact_url(url)
        attributes["mesh.service"] = service
        if len(self._starts) >= _CACHE_SIZE:
            self._starts.clear()
        found = self._starts[key] = (name, MappingProxyType(attributes))  # shared: read-only
        return found

    def start_client(self, request: httpx.Request) -> Span | None:
        """Open the ``CLIENT`` span of a request about to go through the stack and inject its context into
        the request's headers. Returns the span when it records (``end_client`` or ``client_failed`` ends
        it), None when it does not: then nothing else is to be done for it.

        The parent is the current span, or, when there is none (a route using ``Depends(get_mesh)`` without
        ``MeshMiddleware`` or another instrumentation), the context in the inbound request's headers.
        """
        ctx: CallContext = request.extensions[EXTENSION]
        url = request.url
        start = self._starts.get((request.method, url_key(url)))
        name, attributes = start if start is not None else self.client_start(request.method, ctx.service.name, url)
        inbound = ctx.inbound
        parent = _inbound_parent(inbound) if inbound is not None and inbound.forward else None
        span = self.tracer.start_span(name, parent, SpanKind.CLIENT, attributes)
        propagate.inject(request.headers, trace.set_span_in_context(span, parent), _SETTER)
        if span.is_recording():
            ctx.span = span
            return span
        ctx.span = None
        return None

    def server_span(self, scope: Scope, untraced: frozenset[str] = frozenset()) -> ServerSpan | None:
        """A ``SERVER`` span for an inbound request, made current; None when another instrumentation made one
        already (or ``scope["path"]`` is in ``untraced``)."""
        if getattr(scope.get("app"), "_is_instrumented_by_opentelemetry", False) or scope.get("path") in untraced:
            return None
        current = trace.get_current_span().get_span_context()
        if current.is_valid and not current.is_remote:  # a span of this process serves the request already
            return None
        parent = propagate.extract(scope.get("headers", ()), getter=_GETTER)
        method = scope["method"]
        attributes: dict[str, AttributeValue] = {
            "http.request.method": method if method in KNOWN_METHODS else "_OTHER",
            "url.path": scope.get("path", ""),
            "url.scheme": scope.get("scheme", "http"),
        }
        if method not in KNOWN_METHODS:
            attributes["http.request.method_original"] = method
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
        version = scope.get("http_version")
        if version:
            attributes["network.protocol.version"] = version
        name = method if method in KNOWN_METHODS else "HTTP"
        span = self.tracer.start_span(name, parent, SpanKind.SERVER, attributes)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return ServerSpan(span, token, name)


class ServerSpan:
    """One inbound request's server span, current while the app runs; ``end`` names it by its route.

    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> server = MeshTracing(TracerProvider()).server_span({"type": "http", "method": "GET", "path": "/"})
    >>> server.end({"route": None}, 200)
    """

    __slots__ = ("error", "name", "span", "token")

    def __init__(self, span: Span, token: Token[otel_context.Context], name: str) -> None:
        self.span = span
        self.token = token
        self.name = name
        #: What escaped the app, if anything (recorded on the span).
        self.error: BaseException | None = None

    def end(self, scope: Scope, status: int) -> None:
        """Restore the context before the request and end the span with the response's status."""
        otel_context.detach(self.token)
        span = self.span
        if not span.is_recording():
            return
        template = getattr(scope.get("route"), "path", None)
        attributes: dict[str, AttributeValue] = {"http.response.status_code": status}
        if template is not None:
            attributes["http.route"] = template
            span.update_name(f"{self.name} {template}")
        error = self.error
        if isinstance(error, Exception):  # not a cancellation (the client went away)
            span.record_exception(error)
        if status >= 500 or isinstance(error, Exception):  # a failure after the answer began counts too
            attributes["error.type"] = str(status) if status >= 500 else type(error).__qualname__
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}" if error else None))
        span.set_attributes(attributes)
        span.end()


def end_client(span: Span, request: httpx.Request, response: httpx.Response) -> None:
    """End a recording client span with the response's status (a streamed one when its body is closed)."""
    ctx: CallContext = request.extensions[EXTENSION]
    status = response.status_code
    finished: dict[str, AttributeValue] = {"http.response.status_code": status, "mesh.attempts": ctx.attempts}
    endpoint = ctx.endpoint
    if endpoint is not None:
        finished["mesh.endpoint"] = endpoint.url
    if status >= 400:
        finished["error.type"] = str(status)
        span.set_status(Status(StatusCode.ERROR))
    span.set_attributes(finished)
    if ctx.stream and not response.is_closed:
        response.stream = ReleasingStream(response.stream, span.end)  # type: ignore[arg-type]
    else:
        span.end()


def client_failed(span: Span, request: httpx.Request, exc: BaseException) -> None:
    """End a recording client span for a request that got no response."""
    ctx: CallContext = request.extensions[EXTENSION]
    attributes: dict[str, AttributeValue] = {"error.type": type(exc).__qualname__, "mesh.attempts": ctx.attempts}
    if ctx.endpoint is not None:
        attributes["mesh.endpoint"] = ctx.endpoint.url
    if isinstance(exc, CircuitOpen):
        span.add_event(BREAKER_REJECTED_EVENT, {"mesh.circuit_breaker.state": ctx.service.breaker.state})
    elif isinstance(exc, BulkheadFull):
        span.add_event(BULKHEAD_REJECTED_EVENT)
    if isinstance(exc, Exception):
        span.record_exception(exc)
    span.set_attributes(attributes)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}".rstrip(": ")))
    span.end()


def _inbound_parent(inbound: InboundContext) -> otel_context.Context | None:
    """The inbound request's trace context, when no span is current to be the parent."""
    if trace.get_current_span().get_span_context().is_valid:
        return None
    return propagate.extract(dict(inbound.forward))


# --------------------------------------------------------------------------------------- export from OTEL_*

#: Variables that ask for export; without one of them the mesh sets up nothing (no surprise traffic).
EXPORT_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)
_OTLP_EXPORTERS = {
    "http/protobuf": "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "grpc": "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
}


def configure_from_environment(service_name: str) -> TracerProvider | None:
    """Set up the global ``TracerProvider`` from the standard ``OTEL_*`` variables, when nothing did yet.

    Runs when a mesh with ``observability.tracing`` on and no ``tracer_provider`` starts. Does nothing when
    a global provider is set already (by ``opentelemetry-instrument`` or the application), when
    ``OTEL_SDK_DISABLED=true``, or when none of ``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set. Otherwise: an SDK provider (``OTEL_TRACES_SAMPLER``,
    ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME`` honoured; ``service.name`` defaults to
    ``service_name``) with a batch processor (``OTEL_BSP_*``) per exporter ``OTEL_TRACES_EXPORTER`` names
    (default ``otlp``; ``console`` and ``none`` too). ``otlp`` uses ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` /
    ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf`` or ``grpc``; unset: whichever exporter package is
    installed, HTTP first), and the exporter reads its own ``OTEL_EXPORTER_OTLP_*`` variables. Returns the
    provider it set, or None.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if not any(os.environ.get(name) for name in EXPORT_VARIABLES):
        return None
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = _exporters()
    if not exporters:
        return None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = SdkTracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    logger.info("tracing: exporting spans with %s", ", ".join(type(e).__name__ for e in exporters))
    return provider


def _exporters() -> list[Any]:
    """The span exporters ``OTEL_TRACES_EXPORTER`` names that can be built here."""
    import importlib

    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    exporters: list[Any] = []
    for name in names:
        if name == "none":
            continue
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
            continue
        if name != "otlp":
            logger.warning("tracing: OTEL_TRACES_EXPORTER=%s is not one the mesh sets up (otlp, console, none)", name)
            continue
        protocol = (
            os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
        ).strip()
        candidates = [protocol] if protocol else list(_OTLP_EXPORTERS)
        for candidate in candidates:
            module_name = _OTLP_EXPORTERS.get(candidate)
            if module_name is None:
                logger.warning("tracing: OTLP protocol %r is not supported (http/protobuf, grpc)", candidate)
                break
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            exporters.append(module.OTLPSpanExporter())
            break
        else:
            logger.warning(
                "tracing: OTLP export asked for, but no exporter package is installed "
                "(pip install opentelemetry-exporter-otlp-proto-http, or -grpc)"
            )
    return exporters
