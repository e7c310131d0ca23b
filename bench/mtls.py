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

import contextlib
import importlib.util
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.e2e import PATH, Answer, Replica, Row, Sample, client_context, in_loop, interleaved, started, timed
from fastapi_mesh import MeshClient, MeshSettings
from fastapi_mesh.security.certs import write_dev_certificates
from fastapi_mesh.settings import DEFAULT_CONNECTION_BACKEND

CONCURRENCY = (1, 16)
ROUNDS = 5
SECONDS = 2.0
QUICK_ROUNDS = 1
QUICK_SECONDS = 0.3
BACKENDS = ("aiohttp", "httpcore")
#: The rows of a bare aiohttp client, without the mesh.
RAW = "raw aiohttp"
TARGET = 1.10
PLAIN, MTLS = "plain HTTP", "mTLS"
#: The services ``fastapi-mesh certs`` makes certificates for: the server's and the calling client's.
SERVER, CLIENT = "users", "bench"


@dataclass
class Environment:
    #: The client's certificates, as ``fastapi-mesh certs`` writes them (``tls.crt``, ``tls.key``, ``ca.crt``).
    client: Path
    plain: Replica
    tls: Replica


@contextlib.contextmanager
def running() -> Iterator[Environment]:
    """A plain and a TLS server for the duration of the block."""
    with tempfile.TemporaryDirectory(prefix="mesh-bench-mtls-") as directory:
        certs = Path(directory)
        write_dev_certificates(certs, [SERVER, CLIENT])
        with started([Replica("plain"), Replica("tls", certs=certs / SERVER)]) as (plain, tls):
            yield Environment(certs / CLIENT, plain, tls)


def settings(env: Environment, backend: str, mtls: bool) -> MeshSettings:
    """The development preset calling ``users`` on one server, over mTLS or plain HTTP."""
    if not mtls:
        return MeshSettings(
            service_name="bench", discovery={"endpoints": {"users": [env.plain.url]}}, connection={"backend": backend}
        )
    return MeshSettings(
        service_name="bench",
        discovery={"endpoints": {"users": [env.tls.url]}},
        connection={"backend": backend},
        mtls={
            "enabled": True,
            "cert_path": str(env.client / "tls.crt"),
            "key_path": str(env.client / "tls.key"),
            "ca_path": str(env.client / "ca.crt"),
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
    """What a run looks at in an answer."""

    __slots__ = ("status_code",)

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


async def _measure_raw(variant: Variant, env: Environment, concurrency: int, seconds: float) -> Sample:
    """The bare aiohttp client: one session, the body read, as the mesh's aiohttp backend does."""
    import aiohttp

    ssl_option = client_context(env.client) if variant.mtls else True
    url = (env.tls if variant.mtls else env.plain).url + PATH
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_option, limit=0)) as session:

        async def call() -> _Answer:
            async with session.get(url) as response:
                await response.read()
                return _Answer(response.status)

        return await timed(call, concurrency, seconds)


async def _measure(variant: Variant, env: Environment, concurrency: int, seconds: float) -> Sample:
    if variant.backend == RAW:
        return await _measure_raw(variant, env, concurrency, seconds)
    async with MeshClient(settings(env, variant.backend, variant.mtls)) as client:

        async def call() -> Answer:
            return await client.get("users", PATH)

        return await timed(call, concurrency, seconds)


def measure(variant: Variant, env: Environment, concurrency: int, seconds: float) -> Sample:
    """One round of ``variant`` at ``concurrency`` for ``seconds``, in an event loop of its own."""
    return in_loop(variant.loop, _measure(variant, env, concurrency, seconds))


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
    with running() as env:
        results.rows = interleaved(
            [variant.label for variant in found],
            lambda level, index: measure(found[index], env, level, seconds),
            rounds=rounds,
            concurrency=concurrency,
            name="mtls",
            progress=progress,
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
