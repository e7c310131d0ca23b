"""A real dnsmasq for DNS discovery tests: serves ``srv-host`` and ``host-record`` entries on 127.0.0.1 at a
free high port, in the foreground, until stopped.

dnsmasq reads ``srv-host`` and ``host-record`` only at start-up (SIGHUP rereads hosts files, not these), so
``restart(records)`` stops it and starts it again with the new records on the same port. Names under the
served domain that have no record get NXDOMAIN (``local=/<domain>/``); any other name is REFUSED (there are no
upstream servers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import dns.asyncquery
import dns.exception
import dns.message

#: Where Debian's dnsmasq-base puts the binary (often not on a user's PATH).
DEBIAN_PATH = "/usr/sbin/dnsmasq"
#: Seconds to wait for dnsmasq to answer after a start, or to exit after a stop.
START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0
MISSING = (
    "dnsmasq is not installed: the DNS discovery tests run a real dnsmasq. Run `make test` (it installs "
    "Debian's dnsmasq-base when missing) or `apt-get install dnsmasq-base`."
)


class Srv(NamedTuple):
    """An SRV record: ``srv-host=<name>,<target>,<port>,<priority>,<weight>``."""

    name: str
    target: str
    port: int
    priority: int = 0
    weight: int = 0

    def line(self) -> str:
        return f"srv-host={self.name},{self.target},{self.port},{self.priority},{self.weight}"


class Host(NamedTuple):
    """An A (IPv4) or AAAA (IPv6) record: ``host-record=<name>,<address>``."""

    name: str
    address: str

    def line(self) -> str:
        return f"host-record={self.name},{self.address}"


Record = Srv | Host


def find_dnsmasq() -> str | None:
    """The dnsmasq binary, or None when it is not installed."""
    found = shutil.which("dnsmasq")
    if found:
        return found
    return DEBIAN_PATH if os.access(DEBIAN_PATH, os.X_OK) else None


def free_port() -> int:
    """A high port on 127.0.0.1 that is free for both UDP and TCP (dnsmasq serves both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")


class Dnsmasq:
    """One dnsmasq process serving ``records`` under ``domain``, with ``ttl`` on every answer (``local-ttl``).

    ``await server.start(records)``, ``await server.restart(records)`` (same port), ``await server.stop()``;
    ``server.nameserver`` is ``"127.0.0.1:<port>"`` for ``discovery.nameservers``.
    """

    def __init__(self, binary: str, directory: Path, *, domain: str = "cluster.local") -> None:
        self.binary = binary
        self.directory = directory
        self.domain = domain
        self.port = free_port()
        self.ttl = 0
        self.records: list[Record] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.conf_file = directory / "dnsmasq.conf"
        self.pid_file = directory / "dnsmasq.pid"
        self.log_file = directory / "dnsmasq.log"

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        """The dnsmasq command line: foreground, loopback only, this directory's config and pid file."""
        return [
            self.binary,
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            f"--port={self.port}",
            f"--conf-file={self.conf_file}",
            f"--pid-file={self.pid_file}",
            f"--user={pwd.getpwuid(os.getuid()).pw_name}",  # as root it would switch to "nobody"
            "--log-facility=-",  # log to stderr (the log file), not syslog
        ]

    def config(self) -> str:
        lines = [f"local=/{self.domain}/", f"local-ttl={self.ttl}", *(record.line() for record in self.records)]
        return "\n".join(lines) + "\n"

    async def start(self, records: Iterable[Record] = (), *, ttl: int | None = None) -> None:
        """Start serving ``records``; returns once dnsmasq answers queries."""
        if self.running:
            raise RuntimeError("dnsmasq is already running; use restart()")
        self.records = list(records)
        if ttl is not None:
            self.ttl = ttl
        self.conf_file.write_text(self.config(), encoding="utf-8")
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        await self._wait_until_answering()

    async def restart(self, records: Iterable[Record] | None = None, *, ttl: int | None = None) -> None:
        """Stop, then start again on the same port with ``records`` (default: the current ones)."""
        records = list(self.records if records is None else records)
        await self.stop()
        await self.start(records, ttl=ttl)

    async def stop(self) -> None:
        """Stop dnsmasq (SIGTERM, then SIGKILL if it lingers); its port refuses queries afterwards."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
                break
            await asyncio.sleep(0.01)

    async def _wait_until_answering(self) -> None:
        assert self.process is not None
        probe = dns.message.make_query(f"probe.{self.domain}.", "A")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"dnsmasq exited with {self.process.returncode}:\n{self._log()}")
            try:
                await dns.asyncquery.udp(probe, "127.0.0.1", port=self.port, timeout=0.2)
                return
            except (dns.exception.Timeout, OSError):
                pass
            if time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"dnsmasq did not answer within {START_TIMEOUT}s:\n{self._log()}")
            await asyncio.sleep(0.02)

    def _log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_file.read_text(encoding="utf-8", errors="replace")[-2000:]
        return ""
