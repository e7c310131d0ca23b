"""``fastapi-mesh serve``: uvicorn with the mesh's mTLS, caller identities in the scope, and a plain probe port.

    MESH_MTLS__ENABLED=true MESH_MTLS__CERT_PATH=/etc/certs/tls.crt MESH_MTLS__KEY_PATH=/etc/certs/tls.key \\
    MESH_MTLS__CA_PATH=/etc/certs/ca.crt MESH_MTLS__PLAIN_PORT=8081 \\
    fastapi-mesh serve app:app --host 0.0.0.0 --port 8443

With ``mtls.enabled``, the server's port speaks TLS 1.2 or 1.3 only, and only to callers presenting a client
certificate the mesh CA (``ca_path``) signed: anything else fails in the handshake, before a byte of HTTP. The
caller's verified certificate reaches the app as the ASGI TLS extension (``scope["extensions"]["tls"]``; uvicorn
does not provide it, so the protocol classes ``serve`` runs add it), which ``peer_identity`` and the allow lists
read. ``mtls.allow`` is checked here, on every request of the TLS port.

Kubelet probes and Prometheus present no client certificate: ``mtls.plain_port`` opens a second port, without
TLS, that serves ``mtls.plain_paths`` (the probes and ``/metrics``) and answers 403 to everything else.

The certificate, key and CA files are looked at every ``mtls.reload_interval``; once they have changed and then
stayed the same for one look, they are loaded into a new context that the next handshakes use (connections
already open go on with the old one). A set that does not load (a half-written file, a certificate without its
key) keeps the last good one and logs one error, until the files change again.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import LOGGING_CONFIG
from uvicorn.importer import ImportFromStringError, import_from_string
from uvicorn.server import ServerState

from ..running import running_mesh
from ..settings import MeshSettings, MtlsConfig
from .authorization import Authorization
from .files import WatchedFiles, load_key_pair
from .identity import (
    DENIED_DETAIL,
    TLS_EXTENSION,
    WS_POLICY_VIOLATION,
    AllowList,
    identity_of,
    route_template,
    set_enforced_by_server,
)

__all__ = ["MeshGate", "MeshServerConfig", "ServerTLS", "serve", "tls_extension"]

logger = logging.getLogger("fastapi_mesh.security")

#: ``ssl.SSLObject.version()`` -> the protocol number the ASGI TLS extension reports.
TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
#: Seconds the plain port waits for its open connections to finish at shutdown.
PLAIN_CLOSE_TIMEOUT = 5.0
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.DOTALL)
_FORBIDDEN_BODY = b'{"detail":"' + DENIED_DETAIL.encode() + b'"}'


# ------------------------------------------------------------------------------------------ TLS context


class _ServerContext(ssl.SSLContext):
    #: The PEM of the certificate this context presents (the ASGI TLS extension's ``server_cert``).
    server_cert_pem: str | None = None
    #: Cipher name -> its 16-bit TLS cipher suite number.
    cipher_ids: dict[str, int]


class ServerTLS:
    """The server's TLS context, reloaded when its certificate, key or CA file changes.

    ``context`` is the one the listener is created with; each handshake switches to the newest good context
    (a ``sni_callback``, which OpenSSL calls for every ClientHello, with or without SNI), so new connections
    use new files while open ones finish on the old.

    >>> from fastapi_mesh.settings import MtlsConfig
    >>> tls = ServerTLS(MtlsConfig(enabled=True, cert_path="tls.crt", key_path="tls.key", ca_path="ca.crt"))
    Traceback (most recent call last):
    ...
    ValueError: mtls.ca_path: cannot load the CA bundle 'ca.crt' for callers: [Errno 2] No such file or directory
    """

    def __init__(self, mtls: MtlsConfig) -> None:
        assert mtls.cert_path is not None and mtls.key_path is not None and mtls.ca_path is not None
        self.cert_path, self.key_path, self.ca_path = mtls.cert_path, mtls.key_path, mtls.ca_path
        self._files = WatchedFiles(self.cert_path, self.key_path, self.ca_path)
        self.context = self._build()
        self.context.sni_callback = self._select
        self._current: _ServerContext = self.context
        #: Successful reloads since start.
        self.reloads = 0
        #: True while the files on disk do not load (the last good context is in use).
        self.failing = False

    @property
    def current(self) -> _ServerContext:
        """The context new handshakes use."""
        return self._current

    def _build(self) -> _ServerContext:
        context = _ServerContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=self.ca_path)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"mtls.ca_path: cannot load the CA bundle {self.ca_path!r} for callers: {exc}") from exc
        load_key_pair(context, self.cert_path, self.key_path)
        try:
            leaf = _PEM_BLOCK.search(Path(self.cert_path).read_bytes())
        except OSError as exc:  # gone since it was loaded a moment ago
            raise ValueError(f"mtls.cert_path: cannot read {self.cert_path!r}: {exc}") from exc
        context.server_cert_pem = leaf.group(0).decode("ascii").strip() + "\n" if leaf else None
        context.cipher_ids = {c["name"]: c["id"] & 0xFFFF for c in context.get_ciphers()}
        return context

    def _select(self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self._current
        if current is not context:
            ssl_object.context = current

    def check(self) -> bool:
        """Reload once the files have changed and then stayed the same for one look (a writer replacing the
        certificate and then the key is not caught in between); True when a new context is in use. A set that
        does not load keeps the current context and logs one error (until the files change and load again)."""
        files = self._files
        signature = files.settled()
        if signature is None:
            return False
        files.loaded = signature  # a set that does not load is not tried again until it changes
        try:
            context = self._build()
        except ValueError as exc:
            if not self.failing:
                self.failing = True
                logger.error("mTLS files changed but do not load; keeping the previous certificate: %s", exc)
            return False
        self._current = context
        self.reloads += 1
        self.failing = False
        logger.info("mTLS certificate, key and CA reloaded from %s; new connections use them", self.cert_path)
        return True

    async def watch(self, interval: float) -> None:
        """Look at the files every ``interval`` seconds, for ever (cancel to stop)."""
        while True:
            await asyncio.sleep(interval)
            self.check()


def tls_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    """The ASGI TLS extension (``scope["extensions"]["tls"]``) for a connection's verified ``ssl_object``."""
    der = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    name: str | None = None
    if der:
        chain.append(ssl.DER_cert_to_PEM_cert(der))
        try:
            name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        except ValueError:
            name = None
    context = ssl_object.context
    cipher = ssl_object.cipher()
    ids: dict[str, int] = getattr(context, "cipher_ids", {})
    return {
        "server_cert": getattr(context, "server_cert_pem", None),
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,  # a certificate that does not verify never gets this far
        "tls_version": TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": ids.get(cipher[0]) if cipher else None,
    }


class _WithTls:
    """The app of one TLS connection: adds the connection's TLS extension to each request's scope."""

    __slots__ = ("app", "tls")

    def __init__(self, app: ASGIApp, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        extensions = scope.get("extensions")
        if extensions is None:
            scope["extensions"] = {TLS_EXTENSION: self.tls}
        else:
            extensions[TLS_EXTENSION] = self.tls
        await self.app(scope, receive, send)


def _with_tls_scope(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """A subclass of one of uvicorn's protocol classes whose TLS connections carry the TLS extension."""

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        base.connection_made(self, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.app = _WithTls(self.app, tls_extension(ssl_object))

    return type(f"Mesh{base.__name__}", (base,), {"connection_made": connection_made, "__module__": __name__})


# -------------------------------------------------------------------------------------------------- gate


class MeshGate:
    """The outermost ASGI layer ``serve`` puts around the app: what the TLS layer cannot decide.

    - A request that did not come over TLS came through the plain port: only ``mtls.plain_paths`` pass (HTTP
      only); anything else gets 403.
    - A TLS request passes when ``mtls.allow`` is empty or lists the caller's identity; else 403.

    The settings are those of the app's running Mesh (found on ``app.state`` after its lifespan started), else
    those ``serve`` read. Denials are counted and logged by that Mesh.
    """

    def __init__(self, app: ASGIApp, settings: MeshSettings, *, tls: bool, target: Any = None) -> None:
        self.app = app
        self.settings = settings
        self.tls = tls
        #: The application object as imported (to find its Mesh and route templates).
        self.target = target
        self._compiled: tuple[MtlsConfig, AllowList | None, frozenset[str]] | None = None

    def _rules(self, mesh: Any) -> tuple[AllowList | None, frozenset[str]]:
        mtls: MtlsConfig = mesh.settings.mtls if mesh is not None else self.settings.mtls
        compiled = self._compiled
        if compiled is None or compiled[0] is not mtls:
            allow = AllowList(mtls.allow) if mtls.allow else None
            compiled = self._compiled = (mtls, allow, frozenset(mtls.plain_paths))
        return compiled[1], compiled[2]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if not self.tls or kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        mesh = running_mesh(self.target)
        allow, plain_paths = self._rules(mesh)
        extensions = scope.get("extensions")
        if not extensions or TLS_EXTENSION not in extensions:
            if kind == "http" and scope["path"] in plain_paths:
                await self.app(scope, receive, send)
                return
            reason = "no client certificate: the plain port serves only the probes and metrics"
            await self._deny(mesh, scope, send, None, reason)
            return
        if allow is not None:
            caller = identity_of(scope)
            if not allow.allows(caller):
                await self._deny(mesh, scope, send, caller, "not on mtls.allow")
                return
        await self.app(scope, receive, send)

    async def _deny(self, mesh: Any, scope: Scope, send: Send, caller: str | None, reason: str) -> None:
        record: Authorization = mesh.authorization if mesh is not None else Authorization()
        record.denied(route_template(scope, self.target), caller, reason)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": DENIED_DETAIL})
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(_FORBIDDEN_BODY)).encode())]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": _FORBIDDEN_BODY})


# ---------------------------------------------------------------------------------------------- uvicorn


def _server_ssl_context(config: uvicorn.Config, default: Any) -> ssl.SSLContext:
    """uvicorn's ``ssl_context_factory``: the mesh's reloading server context (built in each worker)."""
    assert isinstance(config, MeshServerConfig)
    config.mesh_tls = ServerTLS(config.mesh_settings.mtls)
    return config.mesh_tls.context


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, with the mesh's own loggers (``fastapi_mesh.*``) at INFO on its default handler."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["fastapi_mesh"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


class _MeshLifespan:
    """Runs the app's lifespan (uvicorn's class), then the plain port and the file watch, stopping them first."""

    def __init__(self, config: MeshServerConfig) -> None:
        self.config = config
        self.inner = config.app_lifespan_class(config)
        self.plain: asyncio.Server | None = None
        self.plain_state = ServerState()
        self.watch: asyncio.Task[None] | None = None
        self.failed = False

    @property
    def should_exit(self) -> bool:
        return bool(self.inner.should_exit) or self.failed

    @property
    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.inner.state
        return state

    async def startup(self) -> None:
        await self.inner.startup()
        if self.inner.should_exit:
            return
        config = self.config
        port = config.mesh_settings.mtls.plain_port
        if port is not None:
            try:
                await self._open_plain(port)
            except OSError as exc:
                logger.error("cannot listen on the plain port %s:%d: %s", config.host, port, exc)
                self.failed = True
                await self.inner.shutdown()
                return
        tls = config.mesh_tls
        if tls is not None:
            self.watch = asyncio.get_running_loop().create_task(tls.watch(config.mesh_settings.mtls.reload_interval))

    async def _open_plain(self, port: int) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        self.plain_state.default_headers = list(config.encoded_headers)

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.plain_state, app_state=self.inner.state, _loop=loop
            )

        self.plain = await loop.create_server(
            protocol, host=config.host, port=port, backlog=config.backlog, reuse_port=config.workers > 1 or None
        )
        logger.info(
            "plain port http://%s:%d serves %s without TLS", config.host, port, ", ".join(config.mesh_plain_paths())
        )

    async def shutdown(self) -> None:
        if self.watch is not None:
            self.watch.cancel()
        if self.plain is not None:
            self.plain.close()
            for connection in list(self.plain_state.connections):
                connection.shutdown()
            try:
                async with asyncio.timeout(PLAIN_CLOSE_TIMEOUT):
                    while self.plain_state.connections:
                        await asyncio.sleep(0.05)
            except TimeoutError:
                logger.warning("plain port: %d connections still open at shutdown", len(self.plain_state.connections))
        await self.inner.shutdown()


class MeshServerConfig(uvicorn.Config):
    """A uvicorn ``Config`` for ``fastapi-mesh serve``: the mesh's server TLS from ``settings.mtls``, the TLS
    extension in every TLS request's scope, ``MeshGate`` around the app, the plain port and the file watch.

    >>> config = MeshServerConfig("app:app", settings=MeshSettings(), port=8080, log_config=None)
    >>> config.is_ssl
    False
    """

    def __init__(self, app: str | ASGIApp, *, settings: MeshSettings, **options: Any) -> None:
        if settings.mtls.enabled:
            options["ssl_context_factory"] = _server_ssl_context
        options.setdefault("log_config", _log_config())
        super().__init__(app, **options)
        self.mesh_settings = settings
        #: Built in ``load()``, in the process that serves (each worker has its own).
        self.mesh_tls: ServerTLS | None = None

    def configure_logging(self) -> None:
        super().configure_logging()
        if self.log_level is not None:  # the mesh's own lines follow --log-level too
            level = self.log_level if isinstance(self.log_level, int) else self.log_level.upper()
            logging.getLogger("fastapi_mesh").setLevel(5 if level == "TRACE" else level)

    def mesh_plain_paths(self) -> list[str]:
        return list(self.mesh_settings.mtls.plain_paths)

    def load(self) -> None:
        super().load()
        self.http_protocol_class = _with_tls_scope(self.http_protocol_class)
        if self.ws_protocol_class is not None:
            self.ws_protocol_class = _with_tls_scope(self.ws_protocol_class)
        target: Any = self.app
        if isinstance(target, str):
            try:
                target = import_from_string(target)
            except ImportFromStringError:  # pragma: no cover - super().load() has already imported it
                target = None
        self.loaded_app = MeshGate(self.loaded_app, self.mesh_settings, tls=self.mesh_tls is not None, target=target)
        self.app_lifespan_class = self.lifespan_class
        self.lifespan_class = _MeshLifespan
        set_enforced_by_server(self.mesh_tls is not None)


def check_serve_settings(settings: MeshSettings, port: int) -> list[str]:
    """What makes ``serve`` refuse to start, as messages naming the settings."""
    mtls = settings.mtls
    problems: list[str] = []
    if not mtls.enabled:
        if mtls.allow:
            problems.append("mtls.allow needs mtls.enabled: without client certificates no caller has an identity")
        if mtls.plain_port is not None:
            problems.append("mtls.plain_port needs mtls.enabled: without TLS the server's own port is plain already")
    elif mtls.plain_port is not None and mtls.plain_port == port:
        problems.append(f"mtls.plain_port {mtls.plain_port} is the server's own --port")
    return problems


def serve(
    app: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: str | None = None,
    settings: MeshSettings | None = None,
    options: Mapping[str, Any] | None = None,
) -> int:
    """Run ``app`` (``"module:attribute"``) under uvicorn with the mesh's server TLS; returns the exit status.

    Invalid settings or unreadable TLS files raise ``ValueError`` before anything listens.
    """
    settings = settings if settings is not None else MeshSettings()
    problems = check_serve_settings(settings, port)
    if problems:
        raise ValueError("; ".join(problems))
    if settings.mtls.enabled:
        ServerTLS(settings.mtls)  # fail now, naming the setting, rather than in every worker
    config = MeshServerConfig(
        app, settings=settings, host=host, port=port, workers=workers, log_level=log_level, **dict(options or {})
    )
    server = uvicorn.Server(config)
    if config.workers > 1:
        from uvicorn.supervisors import Multiprocess

        sock = config.bind_socket()
        Multiprocess(config, sockets=[sock]).run()
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        return 3  # uvicorn's STARTUP_FAILURE
    return 0

