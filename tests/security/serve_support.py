"""``fastapi-mesh serve`` as a real process for tests, and the certificates its callers present.

``Pki`` issues, from one development CA (``fastapi_mesh.security.certs``, through ``tls_support.ClientPki``),
the server's certificate and the callers' (plus one from another CA, an expired one, one without a SPIFFE ID).
``Served`` starts ``python -m fastapi_mesh.cli serve`` on loopback with ``MESH_*`` variables, waits until it
answers, keeps its log in a file, and stops it.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx
from cryptography import x509

from tests.security.tls_support import ROOT, ClientPki, Files, stop_process
from tests.upstreams import unused_port

APP = "tests.security.server_app:app"
START_TIMEOUT = 20.0
GATEWAY = "spiffe://cluster.local/ns/default/sa/api-gateway"
USERS = "spiffe://cluster.local/ns/default/sa/user-service"
BACKUP = "spiffe://cluster.local/ns/ops/sa/backup"


class Pki(ClientPki):
    """A CA in ``root``, another unrelated one, and the certificates of the server (``orders``) and its callers."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.server = self.issue("orders", "orders")
        self.gateway = self.issue("api-gateway", "api-gateway")
        self.users = self.issue("user-service", "user-service")
        self.backup = self.issue("backup", "backup", namespace="ops")
        self.no_spiffe = self.issue("no-spiffe", "legacy", identity=None)
        self.foreign = self.issue("foreign", "api-gateway", ca=self.other_ca)
        self.expired = self.issue_expired("expired", "api-gateway")

    def client_context(self, who: Files | None, *, ca: Path | None = None) -> ssl.SSLContext:
        """What a caller uses: trusts the mesh CA (or ``ca``), presents ``who``'s certificate (None: none)."""
        context = ssl.create_default_context(cafile=str(ca or self.ca_path))
        if who is not None:
            context.load_cert_chain(who.cert, who.key)
        return context

    def server_env(self, server: Files | None = None, ca: Path | None = None) -> dict[str, str]:
        server = server or self.server
        return {
            "MESH_MTLS__ENABLED": "true",
            "MESH_MTLS__CERT_PATH": str(server.cert),
            "MESH_MTLS__KEY_PATH": str(server.key),
            "MESH_MTLS__CA_PATH": str(ca or self.ca_path),
        }


def peer_certificate(port: int, context: ssl.SSLContext) -> x509.Certificate:
    """The certificate the server on ``port`` presents in a new handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(
        raw, server_hostname="127.0.0.1"
    ) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


class Served:
    """``fastapi-mesh serve`` in a child process, with its own ``MESH_*`` variables.

    ``with Served(env, plain=True) as served: httpx.get(served.plain_url + "/health/ready")``
    """

    def __init__(
        self,
        env: dict[str, str],
        *,
        plain: bool = True,
        tls: bool = True,
        ready_context: ssl.SSLContext | None = None,
        args: tuple[str, ...] = (),
        wait: bool = True,
        log_dir: Path | None = None,
    ) -> None:
        self.port = unused_port()
        self.plain_port = unused_port() if plain else None
        self.tls = tls
        self.ready_context = ready_context
        self.args = args
        self.wait = wait
        self.env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESH_")}
        self.env.update(PYTHONPATH=str(ROOT), MESH_SERVICE_NAME="orders", **env)
        if self.plain_port is not None:
            self.env["MESH_MTLS__PLAIN_PORT"] = str(self.plain_port)
        self.log_path = (log_dir or Path(os.environ.get("TMPDIR", "/tmp"))) / f"serve-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def plain_url(self) -> str:
        assert self.plain_port is not None
        return f"http://127.0.0.1:{self.plain_port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def start(self) -> Served:
        command = [sys.executable, "-m", "fastapi_mesh.cli", "serve", APP, "--host", "127.0.0.1"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port), *self.args],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if self.wait:
            self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        if self.plain_port is not None:
            url, verify = self.plain_url + "/health/ready", None
        else:
            url, verify = self.url + "/health/ready", self.ready_context
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(verify=verify if verify is not None else True, trust_env=False, timeout=2.0) as http:
            while True:
                assert self.process.poll() is None, f"serve exited ({self.process.returncode}):\n{self.log()}"
                try:
                    if http.get(url).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"serve did not become ready:\n{self.log()}"
                time.sleep(0.05)

    def exit_code(self, timeout: float = 15.0) -> int:
        """Wait for the process to end by itself; its exit status."""
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> Served:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def client(pki: Pki, who: Files | None, **options: object) -> httpx.Client:
    """An httpx client presenting ``who``'s certificate to the mesh."""
    return httpx.Client(verify=pki.client_context(who), trust_env=False, timeout=5.0, **options)  # type: ignore[arg-type]


def wait_until(predicate: object, timeout: float = 5.0, interval: float = 0.05) -> None:
    """Poll ``predicate()`` until it is true; fail after ``timeout`` seconds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)
