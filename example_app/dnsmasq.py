"""A local dnsmasq answering the Kubernetes DNS names of the demo's replicas (``make demo ARGS=--dns``).

For each replica it serves what a cluster's DNS would for a Service with a named port ``http``: an SRV
record ``_http._tcp.<service>.<namespace>.svc.<cluster_domain>`` whose target is the replica's own name,
and an A record for that name (127.0.0.1). The gateway then finds its upstreams with the ``kubernetes-dns``
backend, as it would in a cluster. ``Dnsmasq.serve(lines)`` serves any configuration (the DNS discovery
tests run their records through it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.query

HOST = "127.0.0.1"
NAMESPACE = "default"
CLUSTER_DOMAIN = "cluster.local"
#: Seconds to wait for dnsmasq to answer after a start, or to exit after a stop.
START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0


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


def free_port() -> int:
    """A port on 127.0.0.1 that is free for both UDP and TCP (dnsmasq serves both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((HOST, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((HOST, port))
                except OSError:
                    continue
        return port
    raise DnsmasqError(f"no port free for both UDP and TCP on {HOST}")


class Dnsmasq:
    """A dnsmasq process on 127.0.0.1:``port`` serving only what it was given (no upstream DNS, no hosts file).

    The port is picked at construction and kept, so ``stop()`` then ``serve()`` again answers at the same
    ``nameserver``. Its configuration, pid file and log go to ``directory`` (default: a temporary one).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, port: int = 0) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._directory = Path(directory) if directory is not None else None
        self._temporary: tempfile.TemporaryDirectory[str] | None = None

    @property
    def nameserver(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, replicas: Sequence[tuple[str, str, int]]) -> None:
        """Serve the demo's records for ``(service, replica name, port)`` triples (``config_lines``)."""
        self.serve(config_lines(replicas))

    def serve(self, lines: Iterable[str]) -> None:
        """Start dnsmasq with these configuration lines; returns once it answers queries."""
        if self.running:
            raise DnsmasqError("dnsmasq is already running; stop() it first")
        binary = find_dnsmasq()
        directory = self._working_directory()
        conf = directory / "dnsmasq.conf"
        conf.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        command = [
            binary,
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            f"--listen-address={HOST}",
            f"--port={self.port}",
            f"--conf-file={conf}",
            f"--pid-file={directory / 'dnsmasq.pid'}",
            f"--user={pwd.getpwuid(os.getuid()).pw_name}",  # as root it would switch to 'nobody'
            "--log-facility=-",  # log to stderr (the log file), not syslog
        ]
        with (directory / "dnsmasq.log").open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_answering()

    def stop(self) -> None:
        """Stop dnsmasq (SIGTERM, then SIGKILL if it lingers); its port refuses queries afterwards."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None

    def _working_directory(self) -> Path:
        if self._directory is not None:
            return self._directory
        if self._temporary is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="mesh-dnsmasq-")
        return Path(self._temporary.name)

    def _wait_answering(self) -> None:
        query = dns.message.make_query(f"probe.{CLUSTER_DOMAIN}.", "A")  # any answer will do, even REFUSED
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise DnsmasqError(f"dnsmasq exited with code {self.process.returncode}:\n{self._log()}")
            try:
                dns.query.udp(query, HOST, port=self.port, timeout=0.2)
                return
            except (OSError, dns.exception.Timeout):
                if time.monotonic() >= deadline:
                    log = self._log()
                    self.stop()
                    raise DnsmasqError(
                        f"dnsmasq did not answer on {self.nameserver} within {START_TIMEOUT:g}s:\n{log}"
                    ) from None
                time.sleep(0.02)

    def _log(self) -> str:
        try:
            text = (self._working_directory() / "dnsmasq.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-2000:]
