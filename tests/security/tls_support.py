"""Certificates and real TLS servers for the mTLS tests.

``ClientPki`` issues certificates from a development CA (``fastapi_mesh.security.certs``) and from a second,
unrelated one, each written to a directory of its own (``Files``). ``TlsServer`` runs
``tests.security.client_app`` in a child process: under ``fastapi-mesh serve`` (client certificates required,
the caller's identity at ``/whoami``) or under plain uvicorn with the ssl options a test needs (a certificate
from another CA, an expired one, TLS 1.0 or 1.1 only). Servers start together (``start_all``) and are waited
for with a deadline. ``ConnectionCounter`` sits in front of a server and counts the TCP connections made to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi_mesh import MeshSettings
from fastapi_mesh.security.certs import CertificateAuthority, IssuedCertificate
from tests.upstreams import unused_port

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.security.client_app:app"
START_TIMEOUT = 30.0
#: Bounded waits for a condition in the tests (rotation picked up, ...).
WAIT_TIMEOUT = 10.0


@dataclass
class Files:
    """A certificate and its key on disk (``tls.crt``, ``tls.key`` in ``directory``), as issued."""

    directory: Path
    issued: IssuedCertificate

    @property
    def identity(self) -> str | None:
        """The SPIFFE ID it carries."""
        return self.issued.identity

    @property
    def cert(self) -> Path:
        return self.directory / "tls.crt"

    @property
    def key(self) -> Path:
        return self.directory / "tls.key"


class ClientPki:
    """The mesh CA (``ca_path``), another CA (``other_ca_path``) and certificates issued by them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = CertificateAuthority.create()
        self.ca.write(root / "ca")
        self.ca_path = root / "ca" / "ca.crt"
        self.other_ca = CertificateAuthority.create(common_name="another CA")
        self.other_ca.write(root / "other-ca")
        self.other_ca_path = root / "other-ca" / "ca.crt"

    def issue(self, name: str, service: str, *, ca: CertificateAuthority | None = None, **options: Any) -> Files:
        issued = (ca or self.ca).issue(service, **options)
        return self.write(name, issued)

    def write(self, name: str, issued: IssuedCertificate) -> Files:
        directory = self.root / name
        issued.write(directory)
        return Files(directory, issued)

    def issue_expired(self, name: str, service: str) -> Files:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        return self.issue(name, service, not_before=past, not_after=past + dt.timedelta(days=1))


def permissive_context(client: Files | None = None) -> ssl.SSLContext:
    """A context that accepts any server (any CA, expired, TLS 1.0): for readiness checks and for showing what
    a server speaks. Presents ``client``'s certificate when given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():  # TLS 1.0 is deprecated: that is why a server offering only it is refused
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


def handshake(port: int, context: ssl.SSLContext) -> str:
    """The TLS version a new handshake with the server on ``port`` settles on."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        version = tls.version()
    assert version is not None
    return version


def _get(port: int, path: str, context: ssl.SSLContext, timeout: float = 2.0) -> dict[str, Any]:
    """``GET path`` over a fresh TLS connection with ``context``; the JSON body of a 200."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"answered {head[:40]!r}")
    answer: dict[str, Any] = json.loads(body)
    return answer


class TlsServer:
    """``client_app`` over TLS in a child process: ``fastapi-mesh serve`` (``serve=True``: mTLS from ``MESH_MTLS__*``,
    client certificates signed by ``ca_path`` required) or plain uvicorn with ``uvicorn_options``."""

    def __init__(
        self,
        name: str,
        cert: Files,
        *,
        serve: bool = True,
        ca_path: Path | None = None,
        caller: Files | None = None,
        uvicorn_options: Sequence[str] = (),
        log_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.cert = cert
        self.serve = serve
        self.ca_path = ca_path
        self.caller = caller  #: what readiness checks and ``received`` present, when the server asks
        self.uvicorn_options = list(uvicorn_options)
        self.port = unused_port()
        self.log_path = (log_dir or Path(os.environ.get("TMPDIR", "/tmp"))) / f"tls-{name}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESH_")}
        env["PYTHONPATH"] = str(ROOT)
        if self.serve:
            assert self.ca_path is not None
            env.update(
                MESH_SERVICE_NAME=self.name,
                MESH_MTLS__ENABLED="true",
                MESH_MTLS__CERT_PATH=str(self.cert.cert),
                MESH_MTLS__KEY_PATH=str(self.cert.key),
                MESH_MTLS__CA_PATH=str(self.ca_path),
            )
            command = [sys.executable, "-m", "fastapi_mesh.cli", "serve", APP, "--host", "127.0.0.1"]
            return [*command, "--port", str(self.port), "--log-level", "warning"], env
        command = [sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--log-level", "warning", "--lifespan", "off", "--no-access-log"]
        command += ["--ssl-certfile", str(self.cert.cert), "--ssl-keyfile", str(self.cert.key)]
        if self.ca_path is not None:
            command += ["--ssl-ca-certs", str(self.ca_path), "--ssl-cert-reqs", str(int(ssl.CERT_REQUIRED))]
        return [*command, *self.uvicorn_options], env

    def spawn(self) -> None:
        command, env = self.command()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def wait(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        context = permissive_context(self.caller)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server {self.name} exited with {self.process.returncode}:\n{self.log()}")
            try:
                _get(self.port, "/count", context, timeout=1.0)
                return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {self.name} did not answer within {START_TIMEOUT:.0f} s:\n{self.log()}")
            time.sleep(0.05)

    def received(self) -> int:
        """How many requests (other than these counts) the server's app has received."""
        count: int = _get(self.port, "/count", permissive_context(self.caller))["received"]
        return count

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM to ``process`` if it still runs, SIGKILL when it has not ended 10 s later."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def start_all(servers: Iterable[TlsServer]) -> Any:
    """Start every server at once, wait for each, stop them all at the end."""
    started = list(servers)
    try:
        for server in started:
            server.spawn()
        for server in started:
            server.wait()
        yield started
    finally:
        for server in started:
            server.stop()


class ConnectionCounter:
    """A TCP forwarder on loopback in front of ``port``, counting the connections made through it."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.connections = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ConnectionCounter]:
        self.server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        try:
            yield self
        finally:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)


def mesh_settings(
    pki: ClientPki,
    caller: Files,
    endpoints: dict[str, list[str]],
    *,
    backend: str = "aiohttp",
    expected: dict[str, list[str]] | None = None,
    retries: int = 2,
    ca_path: Path | None = None,
    active_health_check: dict[str, Any] | None = None,
    **mtls: Any,
) -> MeshSettings:
    """Settings calling ``endpoints`` with mTLS as ``caller``; ``expected``: per service expected identities.
    Retries have no backoff pause; outlier detection and the breaker are off, so every call picks afresh and
    each refusal is seen as it is. ``active_health_check``: that section (off without)."""
    return MeshSettings(
        active_health_check=active_health_check or {},
        service_name="api-gateway",
        discovery={"endpoints": endpoints},
        connection={"backend": backend},
        retry={"max_retries": retries, "initial_delay": 0, "jitter": "none"},
        outlier_detection={"enabled": False},
        circuit_breaker={"enabled": False},
        load_balancer={"strategy": "round-robin"},
        mtls={
            "enabled": True,
            "cert_path": str(caller.cert),
            "key_path": str(caller.key),
            "ca_path": str(ca_path or pki.ca_path),
            **mtls,
        },
        services={name: {"mtls": {"expected_identities": ids}} for name, ids in (expected or {}).items()},
    )


async def eventually(predicate: Any, timeout: float = WAIT_TIMEOUT, interval: float = 0.02) -> None:
    """Await ``predicate()`` until it returns true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(interval)
