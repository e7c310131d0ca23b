"""Start, probe and stop demo upstream replicas as child processes on 127.0.0.1.

Each replica is ``python -m example_app.upstream`` in its own process (and session, so that Ctrl-C reaches
the parent only and the parent shuts down in order: gateway first, then upstreams). Children are told the
parent's pid and exit by themselves if it disappears, so even a parent killed with SIGKILL leaves no
orphans behind.
"""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HOST = "127.0.0.1"
"""The only address the demo ever binds or calls."""

READY_PATH = "/health/ready"
"""The readiness probe every replica answers."""

POLL_INTERVAL = 0.1
"""Seconds between readiness polls."""

STOP_TIMEOUT = 5.0
"""Seconds a replica gets to exit after SIGTERM before it is killed."""

_PROJECT_ROOT = Path(__file__).resolve().parent.parent


class StartupError(RuntimeError):
    """A replica failed to start or did not become ready in time."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1, found by binding port 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class ReplicaSpec:
    """What to run: one replica of one service."""

    service: str
    name: str
    flaky: float = 0.0
    seed: int = 0


@dataclass
class Replica:
    """A running replica process."""

    spec: ReplicaSpec
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The replica's base URL."""
        return f"http://{HOST}:{self.port}"


def _child_env() -> dict[str, str]:
    """The environment for children: ours, with this project importable."""
    env = dict(os.environ)
    paths = [str(_PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


@dataclass
class Fleet:
    """A set of replica processes with an idempotent, orphan-free :meth:`stop`."""

    log_level: str = "warning"
    replicas: list[Replica] = field(default_factory=list)

    def start(self, specs: Iterable[ReplicaSpec]) -> None:
        """Launch one process per spec, each on a fresh free port."""
        env = _child_env()
        for spec in specs:
            port = free_port()
            command: Sequence[str] = [
                sys.executable,
                "-m",
                "example_app.upstream",
                "--service",
                spec.service,
                "--replica",
                spec.name,
                "--port",
                str(port),
                "--flaky",
                str(spec.flaky),
                "--seed",
                str(spec.seed),
                "--log-level",
                self.log_level,
                "--parent-pid",
                str(os.getpid()),
            ]
            process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
            self.replicas.append(Replica(spec, port, process))

    def wait_ready(self, timeout: float) -> None:
        """Block until every replica answers its readiness probe; raise :class:`StartupError` otherwise."""
        deadline = time.monotonic() + timeout
        pending = list(self.replicas)
        with httpx.Client(timeout=1.0, trust_env=False) as http:
            while pending:
                for replica in list(pending):
                    code = replica.process.poll()
                    if code is not None:
                        raise StartupError(
                            f"{replica.spec.name} exited with code {code} before becoming ready "
                            f"(port {replica.port})"
                        )
                    try:
                        if http.get(replica.url + READY_PATH).status_code == 200:
                            pending.remove(replica)
                    except httpx.TransportError:
                        pass
                if not pending:
                    return
                if time.monotonic() >= deadline:
                    names = ", ".join(f"{r.spec.name} ({r.url})" for r in pending)
                    raise StartupError(f"not ready after {timeout:g} s: {names}")
                time.sleep(POLL_INTERVAL)

    def endpoints(self) -> dict[str, list[str]]:
        """Static-discovery endpoints: service name -> replica URLs, in start order."""
        result: dict[str, list[str]] = {}
        for replica in self.replicas:
            result.setdefault(replica.spec.service, []).append(replica.url)
        return result

    def stop(self) -> None:
        """Terminate every replica, wait up to :data:`STOP_TIMEOUT`, kill the stragglers. Idempotent."""
        for replica in self.replicas:
            if replica.process.poll() is None:
                replica.process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for replica in self.replicas:
            try:
                replica.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait()
