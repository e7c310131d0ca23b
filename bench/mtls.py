"""mTLS against plain HTTP on pooled, warm connections: what a call costs the client with ``mtls.enabled``
(TLS to the endpoint, the client certificate presented, the server's identity checked in each handshake)
against the same call over plain HTTP, on each connection backend and event loop.

Two uvicorn processes serve ``bench.e2e_upstream:app`` on loopback, started alike: one plain, one over TLS
requiring a client certificate from a development CA (``fastapi_mesh.security.certs``, the certificates
``fastapi-mesh certs`` writes), so the only difference is TLS. The **raw aiohttp** rows are a bare
``aiohttp.ClientSession`` (no mesh) making the same calls with the same certificates, for what TLS costs any
client on this event loop. Each variant calls its server back to back at
concurrency 1 and 16 for a fixed time, in a fresh event loop, after a warm-up that opens its connections
(no handshake falls in the measurement); variants are interleaved within each round, and every figure is
the median over the rounds. Figures: the client's CPU per call (``time.process_time``), throughput and
p50 latency.

Targets: client CPU per call over mTLS within 1.10x of plain HTTP once connections are warm, for the
default backend on each event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.e2e import PATH, ROOT, Sample, _drive, _free_port, _loop_factory, _percentile
from fastapi_mesh import MeshClient, MeshSettings
from fastapi_mesh.security.certs import CertificateAuthority
from fastapi_mesh.settings import DEFAULT_CONNECTION_BACKEND

CONCURRENCY = (1, 16)
ROUNDS = 5
SECONDS = 2.0
QUICK_ROUNDS = 1
QUICK_SECONDS = 0.3
WARM_UP_CALLS = 50
START_TIMEOUT = 15.0
BACKENDS = ("aiohttp", "httpcore")
#: The rows of a bare aiohttp client, without the mesh.
RAW = "raw aiohttp"
TARGET = 1.10
PLAIN, MTLS = "plain HTTP", "mTLS"


@dataclass(frozen=True)
class Certificates:
    """A development CA, the server's certificate and the client's, on disk."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def create(cls, directory: Path) -> Certificates:
        ca = CertificateAuthority.create()
        ca.write(directory / "ca")
        ca.issue("users").write(directory / "users")
        ca.issue("bench").write(directory / "bench")
        return cls(
            directory / "ca" / "ca.crt",
            directory / "users" / "tls.crt",
            directory / "users" / "tls.key",
            directory / "bench" / "tls.crt",
            directory / "bench" / "tls.key",
        )

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.check_hostname = False
        context.load_cert_chain(self.client_cert, self.client_key)
        return context


class Server:
    """One uvicorn process serving the benchmark's upstream app, plain or over TLS with client certificates."""

    def __init__(self, certificates: Certificates | None) -> None:
        self.certificates = certificates
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.certificates is not None else 'http'}://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        command = [sys.executable, "-m", "uvicorn", "bench.e2e_upstream:app", "--app-dir", str(ROOT)]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--backlog", "4096"]
        command += ["--log-level", "warning", "--no-access-log", "--lifespan", "off"]
        if importlib.util.find_spec("uvloop") is not None:
            command += ["--loop", "uvloop"]
        if importlib.util.find_spec("httptools") is not None:
            command += ["--http", "httptools"]
        certificates = self.certificates
        if certificates is not None:
            command += ["--ssl-certfile", str(certificates.server_cert), "--ssl-keyfile", str(certificates.server_key)]
            command += ["--ssl-ca-certs", str(certificates.ca), "--ssl-cert-reqs", str(int(ssl.CERT_REQUIRED))]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)

    def _answers(self) -> bool:
        try:
            with contextlib.ExitStack() as stack:
                sock = stack.enter_context(socket.create_connection(("127.0.0.1", self.port), timeout=0.5))
                if self.certificates is not None:
                    context = self.certificates.client_context()
                    sock = stack.enter_context(context.wrap_socket(sock, server_hostname="127.0.0.1"))
                sock.sendall(f"GET {PATH} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
                return sock.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def wait(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.url} server exited with {self.process.returncode} before answering")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {self.url} server did not answer within {START_TIMEOUT:.0f} s")
            time.sleep(0.02)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@dataclass
class Environment:
    certificates: Certificates
    plain: Server
    tls: Server


@contextlib.contextmanager
def running() -> Iterator[Environment]:
    """A plain and a TLS server for the duration of the block."""
    with tempfile.TemporaryDirectory(prefix="mesh-bench-mtls-") as directory:
        certificates = Certificates.create(Path(directory))
        servers = [Server(None), Server(certificates)]
        try:
            for server in servers:
                server.spawn()
            for server in servers:
                server.wait()
            yield Environment(certificates, *servers)
        finally:
            for server in servers:
                server.stop()


def settings(env: Environment, backend: str, mtls: bool) -> MeshSettings:
    """The development preset calling ``users`` on one server, over mTLS or plain HTTP."""
    if not mtls:
        return MeshSettings(
            service_name="bench", discovery={"endpoints": {"users": [env.plain.url]}}, connection={"backend": backend}
        )
    certificates = env.certificates
    return MeshSettings(
        service_name="bench",
        discovery={"endpoints": {"users": [env.tls.url]}},
        connection={"backend": backend},
        mtls={
            "enabled": True,
            "cert_path": str(certificates.client_cert),
            "key_path": str(certificates.client_key),
            "ca_path": str(certificates.ca),
        },
    )


@dataclass(frozen=True)
class Variant:
    backend: str
    loop: str
    mtls: bool

    @property
    def label(self) -> str:
        return f"{self.backend}{' + uvloop' if self.loop == 'uvloop' else ''}, {MTLS if self.mtls else PLAIN}"


def variants(loops: tuple[str, ...] | None = None, backends: tuple[str, ...] = BACKENDS) -> list[Variant]:
    """Every (backend, loop) pair this machine runs, each plain and over mTLS."""
    if loops is None:
        loops = ("asyncio", "uvloop") if importlib.util.find_spec("uvloop") is not None else ("asyncio",)
    return [Variant(backend, loop, mtls) for loop in loops for backend in (*backends, RAW) for mtls in (False, True)]


class _Answer:
    """What ``_drive`` looks at in an answer."""

    __slots__ = ("status_code",)

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


async def _measure_raw(variant: Variant, env: Environment, concurrency: int, seconds: float) -> Sample:
    """The bare aiohttp client: one session, the body read, as the mesh's aiohttp backend does."""
    import aiohttp

    ssl_option: ssl.SSLContext | bool = env.certificates.client_context() if variant.mtls else True
    url = (env.tls if variant.mtls else env.plain).url + PATH
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_option, limit=0)) as session:

        async def call() -> _Answer:
            async with session.get(url) as response:
                await response.read()
                return _Answer(response.status)

        return await _timed(call, concurrency, seconds)


async def _timed(call: Callable[[], Awaitable[object]], concurrency: int, seconds: float) -> Sample:
    await _drive(call, concurrency, calls=WARM_UP_CALLS + 2 * concurrency)  # type: ignore[arg-type]
    gc.collect()
    cpu_start = time.process_time()
    start = time.perf_counter()
    latencies = await _drive(call, concurrency, until=start + seconds)  # type: ignore[arg-type]
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    latencies.sort()
    return Sample(len(latencies), wall, cpu, 0.0, _percentile(latencies, 0.5), _percentile(latencies, 0.99))


async def _measure(variant: Variant, env: Environment, concurrency: int, seconds: float) -> Sample:
    if variant.backend == RAW:
        return await _measure_raw(variant, env, concurrency, seconds)
    async with MeshClient(settings(env, variant.backend, variant.mtls)) as client:

        async def call() -> object:
            return await client.get("users", PATH)

        return await _timed(call, concurrency, seconds)


def measure(variant: Variant, env: Environment, concurrency: int, seconds: float) -> Sample:
    """One round of ``variant`` at ``concurrency`` for ``seconds``, in an event loop of its own."""
    with asyncio.Runner(loop_factory=_loop_factory(variant.loop)) as runner:
        return runner.run(_measure(variant, env, concurrency, seconds))


@dataclass
class Row:
    """Medians over the rounds for one variant at one concurrency."""

    throughput: float
    p50_s: float
    cpu_per_call: float


@dataclass
class Results:
    #: (concurrency, label) -> its row
    rows: dict[tuple[int, str], Row] = field(default_factory=dict)
    variants: list[Variant] = field(default_factory=list)
    concurrency: tuple[int, ...] = ()
    rounds: int = 0
    seconds: float = 0.0


def run(
    *,
    rounds: int = ROUNDS,
    seconds: float = SECONDS,
    concurrency: tuple[int, ...] = CONCURRENCY,
    loops: tuple[str, ...] | None = None,
    backends: tuple[str, ...] = BACKENDS,
    progress: Callable[[str], None] | None = None,
) -> Results:
    """Every variant at every concurrency, ``rounds`` interleaved rounds of ``seconds`` each."""
    found = variants(loops, backends)
    results = Results(variants=found, concurrency=concurrency, rounds=rounds, seconds=seconds)
    samples: dict[tuple[int, str], list[Sample]] = {}
    with running() as env:
        for round_ in range(rounds):
            for level in concurrency:
                for variant in found:
                    samples.setdefault((level, variant.label), []).append(measure(variant, env, level, seconds))
            if progress is not None:
                progress(f"mtls: round {round_ + 1}/{rounds} done")
    for key, taken in samples.items():
        results.rows[key] = Row(
            throughput=statistics.median(s.throughput for s in taken),
            p50_s=statistics.median(s.p50_s for s in taken),
            cpu_per_call=statistics.median(s.cpu_per_call for s in taken),
        )
    return results


def _pairs(results: Results) -> Iterator[tuple[int, Variant, Row, Row]]:
    """(concurrency, the plain variant, its row, the mTLS row) in table order."""
    for level in results.concurrency:
        for variant in results.variants:
            if not variant.mtls:
                secure = Variant(variant.backend, variant.loop, True)
                yield level, variant, results.rows[level, variant.label], results.rows[level, secure.label]


def report(results: Results) -> str:
    """One markdown table: each backend and loop at each concurrency, plain against mTLS."""
    out = [
        "| backend | concurrency | client CPU per call, plain | mTLS | mTLS / plain | calls/s, plain | mTLS "
        "| p50, plain | mTLS |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level, variant, plain, secure in _pairs(results):
        name = variant.backend + (" + uvloop" if variant.loop == "uvloop" else "")
        out.append(
            f"| {name} | {level} | {plain.cpu_per_call * 1e6:.0f} µs | {secure.cpu_per_call * 1e6:.0f} µs "
            f"| {secure.cpu_per_call / plain.cpu_per_call:.2f}x | {plain.throughput:,.0f} | {secure.throughput:,.0f} "
            f"| {plain.p50_s * 1e3:.2f} ms | {secure.p50_s * 1e3:.2f} ms |"
        )
    return "\n".join(out)


def targets(results: Results, backend: str = DEFAULT_CONNECTION_BACKEND) -> str:
    """Whether ``backend`` meets the target at each loop and concurrency, as markdown."""
    out = ["| backend | concurrency | client CPU, mTLS vs plain |", "| --- | ---: | --- |"]
    for level, variant, plain, secure in _pairs(results):
        if variant.backend != backend:
            continue
        ratio = secure.cpu_per_call / plain.cpu_per_call
        verdict = "met" if ratio <= TARGET else "**missed**"
        name = variant.backend + (" + uvloop" if variant.loop == "uvloop" else "")
        out.append(f"| {name} | {level} | {ratio:.2f}x (target <= {TARGET:.2f}x) {verdict} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    quick = "--quick" in args
    results = run(
        rounds=QUICK_ROUNDS if quick else ROUNDS,
        seconds=QUICK_SECONDS if quick else SECONDS,
        progress=lambda line: print(line, file=sys.stderr),
    )
    print(report(results))
    print()
    print(targets(results))


if __name__ == "__main__":
    main()
