"""A local dnsmasq answering the Kubernetes DNS names of the demo's replicas (``make demo ARGS=--dns``).

For each replica it serves what a cluster's DNS would for a Service with a named port ``http``: an SRV
record ``_http._tcp.<service>.<namespace>.svc.<cluster_domain>`` whose target is the replica's own name,
and an A record for that name (127.0.0.1). The gateway then finds its upstreams with the ``kubernetes-dns``
backend, as it would in a cluster.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
NAMESPACE = "default"
CLUSTER_DOMAIN = "cluster.local"
START_TIMEOUT = 5.0


class DnsmasqError(RuntimeError):
    """dnsmasq could not be started."""


class DnsmasqMissing(DnsmasqError):
    """The ``dnsmasq`` binary is not installed."""


def find_dnsmasq() -> str:
    """The path of ``dnsmasq`` (also looked for in /usr/sbin, which is not on every user's PATH)."""
    found = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if found is None:
        raise DnsmasqMissing(
            "dnsmasq is not installed (Debian/Ubuntu: apt-get install dnsmasq-base); run the demo without --dns"
        )
    return found


def srv_name(service: str, port_name: str = "http", protocol: str = "tcp") -> str:
    return f"_{port_name}._{protocol}.{service}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}"


def config_lines(replicas: Iterable[tuple[str, str, int]]) -> list[str]:
    """dnsmasq configuration for ``(service, replica name, port)`` triples, all on 127.0.0.1.

    >>> for line in config_lines([("users", "users-1", 8001)]):
    ...     print(line)
    local-ttl=1
    host-record=users-1.users.default.svc.cluster.local,127.0.0.1
    srv-host=_http._tcp.users.default.svc.cluster.local,users-1.users.default.svc.cluster.local,8001,0,100
    """
    lines = ["local-ttl=1"]
    for service, name, port in replicas:
        target = f"{name}.{service}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}"
        lines.append(f"host-record={target},{HOST}")
        lines.append(f"srv-host={srv_name(service)},{target},{port},0,100")
    return lines


@dataclass
class Dnsmasq:
    """A dnsmasq process on 127.0.0.1:``port`` serving only the records it was given (no upstream DNS)."""

    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    _dir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def nameserver(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, replicas: Sequence[tuple[str, str, int]]) -> None:
        binary = find_dnsmasq()
        self._dir = tempfile.TemporaryDirectory(prefix="mesh-dnsmasq-")
        conf = Path(self._dir.name) / "dnsmasq.conf"
        conf.write_text("\n".join(config_lines(replicas)) + "\n")
        self.port = self.port or _free_udp_port()
        command = [
            binary,
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            f"--listen-address={HOST}",
            f"--port={self.port}",
            f"--conf-file={conf}",
            f"--pid-file={Path(self._dir.name) / 'dnsmasq.pid'}",
        ]
        if os.geteuid() == 0:
            command.append("--user=root")  # dnsmasq would switch to 'nobody', who cannot read the conf
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_answering()

    def _wait_answering(self) -> None:
        import dns.exception
        import dns.message
        import dns.query
        import dns.rdatatype

        deadline = time.monotonic() + START_TIMEOUT
        query = dns.message.make_query(srv_name("user-service"), dns.rdatatype.SRV)
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise DnsmasqError(f"dnsmasq exited with code {self.process.returncode}")
            try:
                dns.query.udp(query, HOST, port=self.port, timeout=0.2)
                return
            except (OSError, dns.exception.Timeout):
                if time.monotonic() >= deadline:
                    raise DnsmasqError(
                        f"dnsmasq did not answer on {self.nameserver} within {START_TIMEOUT:g}s"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port
