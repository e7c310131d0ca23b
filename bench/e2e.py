"""End to end on real sockets: a load generator in this process -> 3 uvicorn replicas on loopback, each in a
process of its own (``bench/e2e_upstream.py``, a Starlette app answering a small JSON body).

Each variant runs at a fixed concurrency (1, 16 and 64 tasks calling back to back) for a fixed time, in a
fresh event loop, after a warm-up that opens its connections. Variants and concurrencies are interleaved
within each round, and every figure is the median over the rounds:

- **raw httpx, round robin**: one ``httpx.AsyncClient()`` as a new user makes it (httpx's default pool
  limits) calling the three replica URLs in turn;
- **raw httpx -> HAProxy**: the same client calling a local HAProxy (one thread, ``balance roundrobin``
  over the three replicas, keep-alive both sides, with retries, ``redispatch`` and active and passive health
  checks set up as the mesh's development preset handles failures: see ``HAProxy``); HAProxy's own CPU is
  read from ``/proc/<pid>/stat``;
- **mesh, httpcore, one pool (before)**: ``MeshClient`` over a single ``httpx.AsyncHTTPTransport`` for
  every endpoint, as the mesh was built before ``connection.backend``;
- **mesh, httpcore per endpoint**: ``connection.backend: httpcore``, a pool per endpoint;
- **mesh, aiohttp**: ``connection.backend: aiohttp``;
- **mesh, httpx-aiohttp 0.2 (as published)**: the ``httpx-aiohttp`` package's transport as the innermost
  layer, for comparison (it does not keep the mesh's guarantees; see the architecture's connection layer);
- **... + uvloop**: the same on uvloop's event loop (``uvloop`` installed).

Figures: throughput (calls per second of wall time), p50 and p99 latency of single calls, and CPU seconds
per call of this process (``time.process_time``: the client's cost, whatever the replicas take), plus, for
the HAProxy row, HAProxy's CPU per call (``/proc`` counts it in clock ticks of 10 ms). The machine has few
cores, shared by the client, the replicas and HAProxy, so throughput and latency depend on how the replicas
get scheduled; CPU per call is the client's own.

A leak check runs each backend for many calls at concurrency 16 while the replicas are restarted one after
the other, and counts this process's open file descriptors before, after and once the client is closed. A
call fails there only when every attempt found a replica down: while replicas restart in quick succession,
the outlier detector may still hold the ones restarted before out (it never ejects the last one), leaving
retries nowhere else to go.

Targets: client CPU per call <= 0.5x raw httpx at concurrency >= 16 and <= 0.8x at concurrency 1; client +
HAProxy CPU of the HAProxy row above the mesh's; throughput >= 1.5x raw httpx; p99 no worse than raw httpx;
no descriptor left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import itertools
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from bench.rounds import in_turn
from fastapi_mesh import MeshClient, MeshError, MeshSettings
from fastapi_mesh.settings import DEFAULT_CONNECTION_BACKEND

ROOT = Path(__file__).resolve().parent.parent
PATH = "/api/users"
CONCURRENCY = (1, 16, 64)
ROUNDS = 5
SECONDS = 2.0
QUICK_ROUNDS = 1
QUICK_SECONDS = 0.3
LEAK_CALLS = 100_000
QUICK_LEAK_CALLS = 3_000
LEAK_RESTARTS = 6
QUICK_LEAK_RESTARTS = 2
LEAK_CONCURRENCY = 16
REPLICAS = 3
WARM_UP_CALLS = 50
START_TIMEOUT = 15.0
RAW = "raw httpx, round robin"
HAPROXY = "raw httpx -> HAProxy"
BEFORE = "mesh, httpcore, one pool (before)"
LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=100, keepalive_expiry=30.0)

Call = Callable[[], Awaitable["Answer"]]
Close = Callable[[], Awaitable[None]]


class Answer(Protocol):
    """What a run looks at in an answer (an ``httpx.Response`` has it)."""

    @property
    def status_code(self) -> int: ...


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def client_context(certs: Path) -> ssl.SSLContext:
    """A client context for a directory as ``fastapi-mesh certs`` writes it: trusts its ``ca.crt`` and presents
    its ``tls.crt`` (development certificates carry server and client authentication both)."""
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.check_hostname = False
    context.load_cert_chain(certs / "tls.crt", certs / "tls.key")
    return context


def _answers(port: int, context: ssl.SSLContext | None = None) -> bool:
    """Whether something on ``port`` answers ``GET /api/users`` with 200 (over TLS with ``context``)."""
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=0.5))
            if context is not None:
                sock = stack.enter_context(context.wrap_socket(sock, server_hostname="127.0.0.1"))
            sock.sendall(f"GET {PATH} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _wait_until_answering(
    port: int, process: subprocess.Popen[bytes], what: str, context: ssl.SSLContext | None = None
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(port, context):
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before answering")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer on port {port} within {START_TIMEOUT:.0f} s")
        time.sleep(0.02)


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """Terminate ``process`` (killed when it does not end within 10 s)."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class Replica:
    """One uvicorn process serving ``bench.e2e_upstream:app`` on a loopback port; it can be restarted. With
    ``certs`` (a directory as ``fastapi-mesh certs`` writes it), over TLS presenting its ``tls.crt`` and
    requiring a client certificate its ``ca.crt`` signed."""

    def __init__(self, name: str, certs: Path | None = None, *, quiet: bool = False) -> None:
        self.name = name
        self.certs = certs
        self.quiet = quiet  # the replica's stderr discarded (a fault run makes uvicorn log every cut body)
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.certs is not None else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.spawn()
        self.wait()

    def wait(self) -> None:
        assert self.process is not None
        context = client_context(self.certs) if self.certs is not None else None
        _wait_until_answering(self.port, self.process, f"replica {self.name}", context)

    def spawn(self) -> None:
        command = [sys.executable, "-m", "uvicorn", "bench.e2e_upstream:app", "--app-dir", str(ROOT)]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--backlog", "4096"]
        command += ["--log-level", "warning", "--no-access-log", "--lifespan", "off"]
        if _has("uvloop"):
            command += ["--loop", "uvloop"]
        if _has("httptools"):
            command += ["--http", "httptools"]
        if self.certs is not None:
            command += ["--ssl-certfile", str(self.certs / "tls.crt"), "--ssl-keyfile", str(self.certs / "tls.key")]
            command += ["--ssl-ca-certs", str(self.certs / "ca.crt"), "--ssl-cert-reqs", str(int(ssl.CERT_REQUIRED))]
        env = {**os.environ, "BENCH_REPLICA": self.name}
        stderr = subprocess.DEVNULL if self.quiet else None
        self.process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)

    def stop(self) -> None:
        process, self.process = self.process, None
        _stop(process)

    def restart(self) -> None:
        self.stop()
        self.start()

    def set_fault(self, **fault: float) -> dict[str, Any]:
        """Switch the replica's fault (``bench/e2e_upstream.py``: ``delay_ms``, ``factor``, ``error_rate``,
        ``hang_rate``, ``reset_rate``; none: cleared); the fault now in force. Plain HTTP replicas only."""
        response = httpx.put(f"{self.url}/_fault", json=fault, timeout=5.0, trust_env=False)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def deliveries(self) -> dict[str, Any]:
        """How many POSTs reached this replica's ``/api/orders`` and the request ids delivered more than once."""
        response = httpx.get(f"{self.url}/_deliveries", timeout=5.0, trust_env=False)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer


@contextlib.contextmanager
def started(replicas: list[Replica]) -> Iterator[list[Replica]]:
    """``replicas`` started all at once, then each waited for; stopped at the end of the block."""
    try:
        for replica in replicas:
            replica.spawn()
        for replica in replicas:
            replica.wait()
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


class HAProxy:
    """A local HAProxy (one thread) balancing round robin over the replicas, with keep-alive both sides, and
    the failure handling of the mesh's development preset:

    - ``retries 2`` with ``option redispatch 1`` (every retry on another server, as the mesh's
      ``retry.max_retries: 2`` re-picks an endpoint) and ``retry-on`` connection failures, empty, cut or
      unparsable answers, the per-attempt timeout and 502/503/504 (the mesh's retried failures for a GET and
      its ``retry.retry_on_status``); HAProxy retries at once, with no backoff and no budget;
    - ``timeout server 10s``, the preset's per-attempt ``circuit_breaker.timeout``;
    - active checks, ``GET /_check`` every second (down after 3 failures, up after 2 passes), and passive
      ones, ``observe layer7`` with ``error-limit 5 on-error mark-down`` (5 failed answers in a row take a
      server out until its checks pass again: the mesh's outlier detection, whose ``consecutive_failures``
      is 5, ejects for ``base_ejection_time`` instead).
    """

    def __init__(self, replicas: list[Replica], directory: Path) -> None:
        self.port = _free_port()
        servers = "\n".join(f"    server {r.name} 127.0.0.1:{r.port}" for r in replicas)
        self.config = directory / "haproxy.cfg"
        self.config.write_text(
            f"""global
    maxconn 8192
    nbthread 1

defaults
    mode http
    option http-keep-alive
    http-reuse safe
    timeout connect 5s
    timeout client 60s
    timeout server 10s
    timeout check 1s
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response junk-response response-timeout 502 503 504

frontend bench
    bind 127.0.0.1:{self.port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /_check
    default-server check inter 1s fall 3 rise 2 observe layer7 error-limit 5 on-error mark-down
{servers}
"""
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        haproxy = shutil.which("haproxy")
        assert haproxy is not None
        self.process = subprocess.Popen(
            [haproxy, "-q", "-db", "-f", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_until_answering(self.port, self.process, "haproxy")

    def cpu_seconds(self) -> float:
        """User + system CPU HAProxy has used so far (all its threads)."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        process, self.process = self.process, None
        _stop(process)


@dataclass
class Environment:
    """What the variants call: the replicas and, when installed, HAProxy in front of them."""

    replicas: list[Replica]
    haproxy: HAProxy | None

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]


@contextlib.contextmanager
def running(count: int = REPLICAS, *, haproxy: bool = True) -> Iterator[Environment]:
    """``count`` replicas (and HAProxy when asked and installed) for the duration of the block."""
    proxy: HAProxy | None = None
    with (
        tempfile.TemporaryDirectory(prefix="mesh-bench-") as directory,
        started([Replica(f"r{i + 1}") for i in range(count)]) as replicas,
    ):
        try:
            if haproxy and shutil.which("haproxy"):
                proxy = HAProxy(replicas, Path(directory))
                proxy.start()
            yield Environment(replicas, proxy)
        finally:
            if proxy is not None:
                proxy.stop()


# ------------------------------------------------------------------------------------------------ variants


def mesh_settings(urls: list[str], backend: str = "httpcore") -> MeshSettings:
    """The mesh as a new user would set it up (development preset), calling ``users`` at ``urls``."""
    return MeshSettings(
        service_name="bench", discovery={"endpoints": {"users": urls}}, connection={"backend": backend}
    )


async def _raw(env: Environment) -> tuple[Call, Close]:
    client = httpx.AsyncClient(trust_env=False)
    urls = itertools.cycle([httpx.URL(url + PATH) for url in env.urls])

    async def call() -> httpx.Response:
        return await client.get(next(urls))

    return call, client.aclose


async def _via_haproxy(env: Environment) -> tuple[Call, Close]:
    assert env.haproxy is not None
    client = httpx.AsyncClient(trust_env=False)
    url = httpx.URL(env.haproxy.url + PATH)

    async def call() -> httpx.Response:
        return await client.get(url)

    return call, client.aclose


def _mesh(backend: str) -> Callable[[Environment], Awaitable[tuple[Call, Close]]]:
    async def make(env: Environment) -> tuple[Call, Close]:
        client = MeshClient(mesh_settings(env.urls, backend))
        await client.initialize()

        async def call() -> httpx.Response:
            return await client.get("users", PATH)

        return call, client.aclose

    return make


def _mesh_over(build: Callable[[], httpx.AsyncBaseTransport]) -> Callable[[Environment], Awaitable[tuple[Call, Close]]]:
    async def make(env: Environment) -> tuple[Call, Close]:
        transport = build()
        client = MeshClient(mesh_settings(env.urls), transport=transport)
        await client.initialize()

        async def call() -> httpx.Response:
            return await client.get("users", PATH)

        async def close() -> None:
            await client.aclose()
            await transport.aclose()  # a transport passed in stays the caller's to close

        return call, close

    return make


def _httpx_aiohttp() -> httpx.AsyncBaseTransport:
    from httpx_aiohttp import AiohttpTransport

    return AiohttpTransport(verify=httpx.create_ssl_context(trust_env=False), limits=LIMITS, trust_env=False)


@dataclass(frozen=True)
class Variant:
    label: str
    make: Callable[[Environment], Awaitable[tuple[Call, Close]]]
    loop: str = "asyncio"
    via_proxy: bool = False


def variants(env: Environment) -> list[Variant]:
    """Every variant this machine can run, in table order."""
    found = [Variant(RAW, _raw)]
    if env.haproxy is not None:
        found.append(Variant(HAPROXY, _via_haproxy, via_proxy=True))
    found += [
        Variant(BEFORE, _mesh_over(lambda: httpx.AsyncHTTPTransport(limits=LIMITS, trust_env=False))),
        Variant("mesh, httpcore per endpoint", _mesh("httpcore")),
        Variant("mesh, aiohttp", _mesh("aiohttp")),
    ]
    if _has("httpx_aiohttp"):
        found.append(Variant("mesh, httpx-aiohttp 0.2 (as published)", _mesh_over(_httpx_aiohttp)))
    if _has("uvloop"):
        found += [
            Variant(RAW + " + uvloop", _raw, loop="uvloop"),
            Variant("mesh, httpcore per endpoint + uvloop", _mesh("httpcore"), loop="uvloop"),
            Variant("mesh, aiohttp + uvloop", _mesh("aiohttp"), loop="uvloop"),
        ]
    return found


# ------------------------------------------------------------------------------------------------- running


@dataclass
class Sample:
    """One variant at one concurrency for one round."""

    calls: int
    wall_s: float
    cpu_s: float
    proxy_cpu_s: float
    p50_s: float
    p99_s: float

    @property
    def throughput(self) -> float:
        return self.calls / self.wall_s

    @property
    def cpu_per_call(self) -> float:
        return self.cpu_s / self.calls

    @property
    def proxy_cpu_per_call(self) -> float:
        return self.proxy_cpu_s / self.calls


async def _drive(call: Call, concurrency: int, *, until: float | None = None, calls: int = 0) -> list[float]:
    """``concurrency`` tasks calling back to back until ``until`` (perf_counter) or ``calls`` calls in all;
    the latency of every call."""
    latencies: list[float] = []
    left = [calls]

    async def worker() -> None:
        while True:
            start = time.perf_counter()
            if until is not None:
                if start >= until:
                    return
            elif left[0] <= 0:
                return
            else:
                left[0] -= 1
            response = await call()
            if response.status_code != 200:
                raise AssertionError(f"status {response.status_code}")
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def timed(call: Call, concurrency: int, seconds: float, proxy: HAProxy | None = None) -> Sample:
    """``call`` at ``concurrency`` for ``seconds``, after a warm-up that opens its connections and warms its
    caches; with ``proxy``, HAProxy's CPU too."""
    await _drive(call, concurrency, calls=WARM_UP_CALLS + 2 * concurrency)
    gc.collect()
    proxy_start = proxy.cpu_seconds() if proxy is not None else 0.0
    cpu_start = time.process_time()
    start = time.perf_counter()
    latencies = await _drive(call, concurrency, until=start + seconds)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    proxy_cpu = proxy.cpu_seconds() - proxy_start if proxy is not None else 0.0
    latencies.sort()
    return Sample(len(latencies), wall, cpu, proxy_cpu, _percentile(latencies, 0.5), _percentile(latencies, 0.99))


async def _measure(variant: Variant, env: Environment, concurrency: int, seconds: float) -> Sample:
    call, close = await variant.make(env)
    try:
        return await timed(call, concurrency, seconds, env.haproxy if variant.via_proxy else None)
    finally:
        await close()


def _loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def in_loop(loop: str, work: Coroutine[Any, Any, Sample]) -> Sample:
    """Run ``work`` in a fresh event loop of kind ``loop`` (``asyncio`` or ``uvloop``)."""
    with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
        return runner.run(work)


def measure(variant: Variant, env: Environment, concurrency: int, seconds: float) -> Sample:
    """One round of ``variant`` at ``concurrency`` for ``seconds``, in an event loop of its own."""
    return in_loop(variant.loop, _measure(variant, env, concurrency, seconds))


def interleaved(
    labels: list[str],
    measure_one: Callable[[int, int], Sample],
    *,
    rounds: int,
    concurrency: tuple[int, ...],
    name: str,
    progress: Callable[[str], None] | None = None,
) -> dict[tuple[int, str], Row]:
    """``rounds`` rounds of every (concurrency, variant) pair, variants interleaved within each round
    (``measure_one(level, index of the variant)``); the medians per (concurrency, label)."""
    samples: dict[tuple[int, str], list[Sample]] = {}
    for round_ in range(rounds):
        for level in concurrency:
            for index, label in in_turn(enumerate(labels), round_):
                samples.setdefault((level, label), []).append(measure_one(level, index))
        if progress is not None:
            progress(f"{name}: round {round_ + 1}/{rounds} done")
    return {
        key: Row(
            throughput=statistics.median(s.throughput for s in taken),
            p50_s=statistics.median(s.p50_s for s in taken),
            p99_s=statistics.median(s.p99_s for s in taken),
            cpu_per_call=statistics.median(s.cpu_per_call for s in taken),
            proxy_cpu_per_call=statistics.median(s.proxy_cpu_per_call for s in taken),
        )
        for key, taken in samples.items()
    }


@dataclass
class Row:
    """Medians over the rounds for one variant at one concurrency."""

    throughput: float
    p50_s: float
    p99_s: float
    cpu_per_call: float
    proxy_cpu_per_call: float


@dataclass
class Leak:
    """The descriptor count around many calls with replicas restarting."""

    calls: int
    restarts: int
    failed: int
    fds_before: int
    fds_peak: int
    fds_after: int
    fds_closed: int


@dataclass
class Results:
    rows: dict[int, dict[str, Row]] = field(default_factory=dict)
    leaks: dict[str, Leak] = field(default_factory=dict)
    haproxy: str | None = None
    rounds: int = 0
    seconds: float = 0.0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _leak_run(backend: str, env: Environment, calls: int, restarts: int) -> Leak:
    """``calls`` calls at ``LEAK_CONCURRENCY`` while ``restarts`` replica restarts happen, evenly spread."""
    client = MeshClient(mesh_settings(env.urls, backend))
    failed = done = 0
    async with client:

        async def call() -> httpx.Response:
            nonlocal failed, done
            try:
                return await client.get("users", PATH)
            except MeshError:  # no replica answered this call while they restarted
                failed += 1
                return httpx.Response(200)
            finally:
                done += 1

        await _drive(call, LEAK_CONCURRENCY, calls=200)
        failed = done = 0
        before = peak = _fds()
        traffic = asyncio.ensure_future(_drive(call, LEAK_CONCURRENCY, calls=calls))
        restarted = 0
        for i in range(restarts):
            threshold = calls * (i + 1) // (restarts + 1)
            while done < threshold and not traffic.done():
                peak = max(peak, _fds())
                await asyncio.sleep(0.005)
            if traffic.done():
                break
            restart = asyncio.ensure_future(asyncio.to_thread(env.replicas[i % len(env.replicas)].restart))
            while not restart.done():
                peak = max(peak, _fds())
                await asyncio.sleep(0.005)
            await restart
            restarted += 1
        await traffic
        await asyncio.sleep(0.1)  # closed sockets are reaped by the loop
        after = _fds()
    return Leak(calls, restarted, failed, before, peak, after, _fds())


def leak_check(env: Environment, calls: int, restarts: int = LEAK_RESTARTS) -> dict[str, Leak]:
    found = {}
    for backend in ("httpcore", "aiohttp"):
        with asyncio.Runner() as runner:
            found[backend] = runner.run(_leak_run(backend, env, calls, restarts))
    return found


def _haproxy_version() -> str | None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        return None
    out = subprocess.run([haproxy, "-v"], capture_output=True, text=True, timeout=10).stdout
    return " ".join(out.split()[:3]) if out else "haproxy"


def run(
    *,
    rounds: int = ROUNDS,
    seconds: float = SECONDS,
    concurrency: tuple[int, ...] = CONCURRENCY,
    leak_calls: int = LEAK_CALLS,
    leak_restarts: int = LEAK_RESTARTS,
    progress: Callable[[str], None] | None = None,
) -> Results:
    """Every variant at every concurrency, ``rounds`` interleaved rounds of ``seconds`` each, then the leak
    check with ``leak_calls`` calls per backend (0: none)."""
    results = Results(haproxy=_haproxy_version(), rounds=rounds, seconds=seconds)
    with running() as env:
        found = variants(env)
        rows = interleaved(
            [variant.label for variant in found],
            lambda level, index: measure(found[index], env, level, seconds),
            rounds=rounds,
            concurrency=concurrency,
            name="e2e",
            progress=progress,
        )
        for level in concurrency:
            results.rows[level] = {variant.label: rows[level, variant.label] for variant in found}
        if leak_calls:
            results.leaks = leak_check(env, leak_calls, leak_restarts)
    return results


# ------------------------------------------------------------------------------------------------ reporting


def report(results: Results) -> str:
    """The figures as markdown: one table per concurrency, then the leak check."""
    out: list[str] = []
    for level, rows in results.rows.items():
        raw = rows[RAW]
        out += [
            f"Concurrency {level}:",
            "",
            "| variant | calls/s | x raw | p50 | p99 | client CPU per call | x raw | + HAProxy CPU | total x raw |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for label, row in rows.items():
            total = row.cpu_per_call + row.proxy_cpu_per_call
            proxy = f"{row.proxy_cpu_per_call * 1e6:.0f} µs" if label == HAPROXY else ""
            out.append(
                f"| {label} | {row.throughput:,.0f} | {row.throughput / raw.throughput:.2f}x "
                f"| {row.p50_s * 1e3:.2f} ms | {row.p99_s * 1e3:.2f} ms | {row.cpu_per_call * 1e6:.0f} µs "
                f"| {row.cpu_per_call / raw.cpu_per_call:.2f}x | {proxy} | {total / raw.cpu_per_call:.2f}x |"
            )
        if HAPROXY not in rows:
            out.append(f"| {HAPROXY} | haproxy not installed | | | | | | | |")
        out.append("")
    if results.leaks:
        out += [
            "| backend | calls | replica restarts | calls failed | open fds before | peak | after | after close |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for backend, leak in results.leaks.items():
            out.append(
                f"| {backend} | {leak.calls:,} | {leak.restarts} | {leak.failed} | {leak.fds_before} "
                f"| {leak.fds_peak} | {leak.fds_after} | {leak.fds_closed} |"
            )
    return "\n".join(out).rstrip()


#: The table row of each ``connection.backend``.
BACKEND_ROWS = {"httpcore": "mesh, httpcore per endpoint", "aiohttp": "mesh, aiohttp"}


def targets(results: Results, backend: str) -> str:
    """Whether ``backend``'s row meets each target, per concurrency, as markdown."""
    label = BACKEND_ROWS[backend]
    out = [
        "| concurrency | client CPU vs raw httpx | vs raw httpx -> HAProxy (client + HAProxy) "
        "| throughput vs raw httpx | p99 vs raw httpx |",
        "| ---: | --- | --- | --- | --- |",
    ]
    for level, rows in results.rows.items():
        mesh, raw = rows[label], rows[RAW]
        cpu = mesh.cpu_per_call / raw.cpu_per_call
        goal = 0.8 if level == 1 else 0.5
        cells = [f"{cpu:.2f}x (target <= {goal}x) {_verdict(cpu <= goal)}"]
        proxied = rows.get(HAPROXY)
        if proxied is None:
            cells.append("haproxy not installed")
        else:
            total = proxied.cpu_per_call + proxied.proxy_cpu_per_call
            cells.append(f"{mesh.cpu_per_call / total:.2f}x (target < 1x) {_verdict(mesh.cpu_per_call < total)}")
        speed = mesh.throughput / raw.throughput
        cells.append(f"{speed:.2f}x (target >= 1.5x) {_verdict(speed >= 1.5)}")
        tail = mesh.p99_s / raw.p99_s
        cells.append(f"{tail:.2f}x (target <= 1x) {_verdict(tail <= 1.0)}")
        out.append(f"| {level} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def machine() -> str:
    """The client side of the run: cores, Python, the HTTP libraries, HAProxy."""
    import platform

    parts = [f"{platform.machine()}, {os.cpu_count()} cores", f"Python {platform.python_version()}"]
    for module in ("httpx", "httpcore", "aiohttp", "uvloop", "uvicorn"):
        with contextlib.suppress(Exception):
            parts.append(f"{module} {__import__(module).__version__}")
    version = _haproxy_version()
    parts.append(version or "haproxy not installed")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    quick = "--quick" in args
    results = run(
        rounds=QUICK_ROUNDS if quick else ROUNDS,
        seconds=QUICK_SECONDS if quick else SECONDS,
        leak_calls=QUICK_LEAK_CALLS if quick else LEAK_CALLS,
        leak_restarts=QUICK_LEAK_RESTARTS if quick else LEAK_RESTARTS,
        progress=lambda line: print(line, file=sys.stderr),
    )
    print(machine())
    print(report(results))
    print()
    print(targets(results, DEFAULT_CONNECTION_BACKEND))


if __name__ == "__main__":
    main()
