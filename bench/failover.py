"""Failover on real sockets: what callers see, and what the replicas receive, when one replica of three dies,
turns slow or flaps, and when all of them fail at once; ``MeshClient`` against HAProxy.

Three uvicorn processes serve ``bench.e2e_upstream:app`` on loopback, each answering after a base latency of
2 ms (``delay_ms``), so that a replica ten times slower is a real difference. A load generator in this
process offers ``GET /api/users`` calls at a fixed rate, 600 a second (about a sixth of what client and
replicas can serve together on two cores, so that a busy moment does not turn into a lasting queue), for a
fixed time, in a fresh asyncio event loop, after a warm-up of healthy calls that opens the connections. The
loop is open: a call is started when it is due, however long the earlier ones take, and its latency counts
from the time it was due, so a stall shows in the latencies rather than in fewer calls, and every client is
offered the same calls whatever its failures cost. Each round runs every scenario with every client,
interleaved, and every figure is the median over the rounds. The scenarios:

- **steady**: no fault, the reference each client's p99 is compared with;
- **kill**: as the call a third of the way into the run is started, one replica is killed (``SIGKILL``:
  connections in flight are cut, new ones refused); it stays dead to the end of the run and is started
  again afterwards, outside the measurement;
- **slow**: one replica answers ten times slower (20 ms);
- **flapping**: one replica answers 30 % of its requests with 503;
- **total outage**: every replica answers every request with 503 from the start of the run.

The clients:

- **mesh**: ``MeshClient`` as a new user sets it up, the development preset with the three replica URLs as
  static discovery endpoints and nothing else: round robin, 2 retries on another endpoint with exponential
  backoff from 100 ms and full jitter, the retry budget (20 % of the last 10 s of calls, plus 10 retries a
  second), outlier detection (5 failures in a row eject a replica for 30 s), the service breaker (opens at
  5 failures and 50 % of the last 100 calls, for 10 s), the default connection backend;
- **mesh, p2c-ewma** (steady and slow): the same with ``load_balancer.strategy: p2c-ewma``, the strategy
  the load-balancing guide gives for replicas whose latency differs;
- **mesh, breaker off** (steady and total outage): the same with ``circuit_breaker.enabled: false``, so
  that in the outage the retry budget alone bounds what is sent;
- **aiohttp -> HAProxy**: a bare ``aiohttp.ClientSession`` (a light client, so that the figures are
  HAProxy's rather than the client's) calling a local HAProxy (one thread, round robin,
  keep-alive both sides) started for each run with the mesh's failure handling as far as HAProxy has it:
  2 retries, each on another server (``option redispatch``), on connection failures, cut or empty answers,
  timeouts and 502/503/504, with no backoff and no budget; health checks every second (down after 3
  failures, up after 2 passes) and passive ones (``observe layer7``, 5 failed answers in a row take a
  server down until its checks pass).

Every client is built afresh for each run (and HAProxy started afresh), so no ejection, breaker state or
server marked down carries over from one run to the next.

Figures, per scenario and client: the calls offered (made by the load generator in the run); the success
rate (answers 200; a 503 returned after retries, or an error such as ``CircuitOpen``, is a failure); p50 and
p99 latency of every call, failed ones included; p99 against the same client's steady p99; the slowest
call (a kill delays only a handful of calls, which p99 does not see); upstream requests per call offered:
the ``GET /api/users`` requests the replicas received during the run (each counts what arrives, whatever it
answers; ``/_served``), divided by the calls offered; and the faulty replica's share of them. HAProxy's
health checks go to another path and are not counted. A refused connection reaches no replica and is not
counted either. The killed replica's count is read just before the kill, so the few requests it receives
between that read and its death are missed. Runs in which the load generator started more than 1 % of its
calls over 10 ms late (its loop was busy) are named under the tables.

Targets: >= 99.9 % success through the kill with p99 <= 2x the steady p99; upstream requests <= 1.2x the
calls offered during a total outage (the retry budget).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench.e2e import (
    PATH,
    Call,
    Close,
    HAProxy,
    Replica,
    _answers,
    _haproxy_version,
    _percentile,
    _verdict,
    machine,
    started,
)
from bench.rounds import in_turn
from fastapi_mesh import MeshClient, MeshSettings

#: Calls offered a second, about a sixth of what the client and the replicas can serve on two cores.
RATE = 600.0
ROUNDS = 5
SECONDS = 5.0
QUICK_ROUNDS = 1
QUICK_SECONDS = 2.0
REPLICAS = 3
WARM_UP_CALLS = 150
WARM_UP_CONCURRENCY = 8
#: A call started this long after it was due was started late (the load generator's loop was busy).
LATE_S = 0.01
#: A run with more late calls than this share is named under the report's tables.
BUSY_SHARE = 0.01
#: How long calls still running at the end of a run may take before they are cancelled (and failed).
DRAIN_S = 30.0
#: Every replica's latency, so that "ten times slower" means something.
BASE_DELAY_MS = 2.0
SLOW_FACTOR = 10.0
FLAPPING_ERROR_RATE = 0.3
#: The share of the run's calls started before the kill.
KILL_AT = 1 / 3
SERVICE = "users"

STEADY, KILL, SLOW, FLAPPING, OUTAGE = "steady", "kill", "slow", "flapping", "total outage"
SCENARIOS = (STEADY, KILL, SLOW, FLAPPING, OUTAGE)
#: The replica each fault hits, by name: a different one each, so that the flapping replica is never the
#: one restarted after a kill, and its draws (seeded once per process) go on from run to run instead of
#: repeating.
FAULTY = {KILL: "r3", SLOW: "r1", FLAPPING: "r2"}
MESH = "mesh"
MESH_EWMA = "mesh, p2c-ewma"
MESH_NO_BREAKER = "mesh, breaker off"
HAPROXY = "aiohttp -> HAProxy"

SUCCESS_TARGET = 0.999
P99_TARGET = 2.0
UPSTREAM_TARGET = 1.2


# ------------------------------------------------------------------------------------------------- clients


@dataclass
class Fleet:
    """The replicas, and a directory for HAProxy's configuration."""

    replicas: list[Replica]
    directory: Path

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    def replica(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)


def mesh_settings(urls: list[str], **sections: Any) -> MeshSettings:
    """The development preset calling ``users`` at ``urls``, with ``sections`` (e.g. ``load_balancer=``)."""
    return MeshSettings(service_name="bench", discovery={"endpoints": {SERVICE: urls}}, **sections)


def _mesh(**sections: Any) -> Callable[[Fleet], Awaitable[tuple[Call, Close]]]:
    async def make(fleet: Fleet) -> tuple[Call, Close]:
        client = MeshClient(mesh_settings(fleet.urls, **sections))
        await client.initialize()

        async def call() -> httpx.Response:
            return await client.get(SERVICE, PATH)

        return call, client.aclose

    return make


class _Answer:
    """What a run looks at in an answer."""

    __slots__ = ("status_code",)

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


#: What a bare aiohttp client answers when it got no response (a failed call).
NO_ANSWER = _Answer(0)


async def _via_haproxy(fleet: Fleet) -> tuple[Call, Close]:
    """A bare aiohttp session (one connector, no limit, the body read, as the mesh's aiohttp backend does)
    calling a HAProxy started for this run."""
    proxy = HAProxy(fleet.replicas, fleet.directory)
    try:
        proxy.start()
    except BaseException:
        proxy.stop()
        raise
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    url = proxy.url + PATH

    async def call() -> _Answer:
        try:
            async with session.get(url) as response:
                await response.read()
                return _Answer(response.status)
        except aiohttp.ClientError:
            return NO_ANSWER

    async def close() -> None:
        await session.close()
        proxy.stop()

    return call, close


@dataclass(frozen=True)
class Client:
    label: str
    make: Callable[[Fleet], Awaitable[tuple[Call, Close]]]
    #: The scenarios this client runs in.
    scenarios: tuple[str, ...] = SCENARIOS


def clients(haproxy: bool = True) -> list[Client]:
    """Every client, in table order (HAProxy when asked and installed)."""
    found = [
        Client(MESH, _mesh()),
        Client(MESH_EWMA, _mesh(load_balancer={"strategy": "p2c-ewma"}), scenarios=(STEADY, SLOW)),
        Client(MESH_NO_BREAKER, _mesh(circuit_breaker={"enabled": False}), scenarios=(STEADY, OUTAGE)),
    ]
    if haproxy and shutil.which("haproxy"):
        found.append(Client(HAPROXY, _via_haproxy))
    return found


# ------------------------------------------------------------------------------------------------- running


@dataclass
class Kill:
    """Evidence of one kill: which replica, how far into the run, how its process ended and whether its
    port still answered right after."""

    replica: str
    at_s: float
    returncode: int | None
    answered_after: bool


@dataclass
class Sample:
    """One client in one scenario for one round."""

    offered: int
    succeeded: int
    p50_s: float
    p99_s: float
    max_s: float
    #: ``GET /api/users`` requests each replica received during the run (the killed one: until the kill).
    served: dict[str, int]
    #: Calls the load generator started more than ``LATE_S`` after they were due.
    late: int = 0
    kill: Kill | None = None

    @property
    def upstream(self) -> int:
        return sum(self.served.values())


@dataclass
class Figures:
    """Medians over the rounds for one client in one scenario."""

    offered: float
    success_rate: float
    p50_s: float
    p99_s: float
    max_s: float
    upstream_per_request: float
    #: The share of those requests the killed, slow or flapping replica received (None: no such replica).
    faulty_share: float | None
    #: The same client's steady p99 (the reference of ``vs_steady_p99``).
    steady_p99_s: float

    @property
    def vs_steady_p99(self) -> float:
        return self.p99_s / self.steady_p99_s


@dataclass
class FailoverResults:
    #: scenario -> client label -> medians, in table order.
    rows: dict[str, dict[str, Figures]] = field(default_factory=dict)
    #: scenario -> client label -> every round's sample.
    samples: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)
    haproxy: str | None = None
    rounds: int = 0
    seconds: float = 0.0
    rate: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain data for plots: every figure (with ``vs_steady_p99``) and every sample."""
        figures = {
            scenario: {label: {**asdict(f), "vs_steady_p99": f.vs_steady_p99} for label, f in rows.items()}
            for scenario, rows in self.rows.items()
        }
        samples = {
            scenario: {label: [asdict(s) for s in taken] for label, taken in rows.items()}
            for scenario, rows in self.samples.items()
        }
        return {
            "scenarios": list(self.rows),
            "rows": figures,
            "samples": samples,
            "haproxy": self.haproxy,
            "rounds": self.rounds,
            "seconds": self.seconds,
            "rate": self.rate,
        }


def served(replica: Replica) -> int:
    """The ``GET /api/users`` requests ``replica``'s process has received so far."""
    response = httpx.get(f"{replica.url}/_served", timeout=5.0, trust_env=False)
    response.raise_for_status()
    count: int = response.json()["users"]
    return count


def _kill(replica: Replica, start: float) -> tuple[int, Kill]:
    """What ``replica`` has received so far, then ``SIGKILL``; the count and the evidence of the kill."""
    count = served(replica)
    process, replica.process = replica.process, None
    assert process is not None
    at = time.perf_counter() - start
    process.kill()
    process.wait(timeout=10)
    return count, Kill(replica.name, at, process.returncode, _answers(replica.port))


def _fault(scenario: str, fleet: Fleet) -> None:
    """Switch ``scenario``'s faults on (every replica keeps the base latency)."""
    if scenario == SLOW:
        fleet.replica(FAULTY[SLOW]).set_fault(delay_ms=BASE_DELAY_MS, factor=SLOW_FACTOR)
    elif scenario == FLAPPING:
        fleet.replica(FAULTY[FLAPPING]).set_fault(delay_ms=BASE_DELAY_MS, error_rate=FLAPPING_ERROR_RATE)
    elif scenario == OUTAGE:
        for replica in fleet.replicas:
            replica.set_fault(delay_ms=BASE_DELAY_MS, error_rate=1.0)


def _heal(fleet: Fleet) -> None:
    """Every replica running again, with only the base latency."""
    for replica in fleet.replicas:
        if replica.process is None:
            replica.start()
        replica.set_fault(delay_ms=BASE_DELAY_MS)


async def _warm_up(call: Call) -> None:
    """``WARM_UP_CALLS`` healthy calls, ``WARM_UP_CONCURRENCY`` at a time: connections open, caches warm."""
    left = [WARM_UP_CALLS]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            await call()

    await asyncio.gather(*(worker() for _ in range(WARM_UP_CONCURRENCY)))


@dataclass
class Offered:
    """What the load generator saw of one run."""

    #: Every call's latency, from the time it was due.
    latencies: list[float]
    succeeded: int
    #: Calls started more than ``LATE_S`` after they were due (the loop was busy).
    late: int


async def _offer(
    call: Call, rate: float, seconds: float, start: float, at: tuple[int, Callable[[], object]] | None = None
) -> Offered:
    """Calls started at a fixed ``rate`` from ``start`` for ``seconds``, whatever the answers take (an open
    loop: every call due is started, at once when the loop is late); with ``at`` (index, action), the
    action runs as that call is started. Calls still running ``DRAIN_S`` after the last one was due are
    cancelled and count as failed."""
    latencies: list[float] = []
    succeeded = late = 0

    async def one(due: float) -> None:
        nonlocal succeeded, late
        if time.perf_counter() - due > LATE_S:
            late += 1
        try:
            ok = (await call()).status_code == 200
        except httpx.HTTPError:  # MeshError and its subclasses included
            ok = False
        latencies.append(time.perf_counter() - due)
        succeeded += ok

    total = round(rate * seconds)
    tasks: set[asyncio.Task[None]] = set()
    sent = 0
    while sent < total:
        now = time.perf_counter()
        while sent < total and start + sent / rate <= now:
            if at is not None and sent == at[0]:
                at[1]()
            task = asyncio.ensure_future(one(start + sent / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if sent < total:
            await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
    if tasks:
        _, stuck = await asyncio.wait(set(tasks), timeout=DRAIN_S)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
        latencies += [DRAIN_S] * len(stuck)
    return Offered(latencies, succeeded, late)


async def _measure(scenario: str, client: Client, fleet: Fleet, rate: float, seconds: float) -> Sample:
    call, close = await client.make(fleet)
    try:
        await _warm_up(call)
        await asyncio.to_thread(_fault, scenario, fleet)
        before = {r.name: await asyncio.to_thread(served, r) for r in fleet.replicas}
        gc.collect()
        start = time.perf_counter()
        killer: list[asyncio.Future[tuple[int, Kill]]] = []
        at = None
        if scenario == KILL:  # as the call a third of the way in is started, whenever the loop gets to it
            index = round(rate * seconds * KILL_AT)
            victim = fleet.replica(FAULTY[KILL])
            at = (index, lambda: killer.append(asyncio.ensure_future(asyncio.to_thread(_kill, victim, start))))
        offered = await _offer(call, rate, seconds, start, at)
        after: dict[str, int] = {}
        kill = None
        if killer:
            after[victim.name], kill = await killer[0]
        for replica in fleet.replicas:
            if replica.process is not None:
                after[replica.name] = await asyncio.to_thread(served, replica)
    finally:
        await close()
    latencies = sorted(offered.latencies)
    return Sample(
        offered=len(latencies),
        succeeded=offered.succeeded,
        p50_s=_percentile(latencies, 0.5),
        p99_s=_percentile(latencies, 0.99),
        max_s=latencies[-1],
        served={name: after[name] - before[name] for name in before},
        late=offered.late,
        kill=kill,
    )


def measure(scenario: str, client: Client, fleet: Fleet, rate: float, seconds: float) -> Sample:
    """One run of ``client`` in ``scenario``, in an event loop of its own; the replicas healed after."""
    try:
        with asyncio.Runner() as runner:
            return runner.run(_measure(scenario, client, fleet, rate, seconds))
    finally:
        _heal(fleet)


@contextlib.contextmanager
def running(count: int = REPLICAS) -> Iterator[Fleet]:
    """``count`` replicas at the base latency for the duration of the block."""
    with (
        tempfile.TemporaryDirectory(prefix="mesh-bench-failover-") as directory,
        started([Replica(f"r{i + 1}", quiet=True) for i in range(count)]) as replicas,
    ):
        fleet = Fleet(replicas, Path(directory))
        _heal(fleet)
        yield fleet


def _figures(taken: list[Sample], faulty: str | None, steady_p99_s: float) -> Figures:
    return Figures(
        offered=statistics.median(s.offered for s in taken),
        success_rate=statistics.median(s.succeeded / s.offered for s in taken),
        p50_s=statistics.median(s.p50_s for s in taken),
        p99_s=statistics.median(s.p99_s for s in taken),
        max_s=statistics.median(s.max_s for s in taken),
        upstream_per_request=statistics.median(s.upstream / s.offered for s in taken),
        faulty_share=None
        if faulty is None
        else statistics.median(s.served[faulty] / max(s.upstream, 1) for s in taken),
        steady_p99_s=steady_p99_s,
    )


def run(
    quick: bool = False,
    *,
    rounds: int | None = None,
    seconds: float | None = None,
    rate: float = RATE,
    haproxy: bool = True,
    progress: Callable[[str], None] | None = None,
) -> FailoverResults:
    """Every scenario with every client, ``rounds`` interleaved rounds of ``seconds`` each at ``rate`` calls
    a second (``quick``: the quick defaults); HAProxy's row when ``haproxy`` and it is installed."""
    rounds = rounds if rounds is not None else QUICK_ROUNDS if quick else ROUNDS
    seconds = seconds if seconds is not None else QUICK_SECONDS if quick else SECONDS
    found = clients(haproxy)
    results = FailoverResults(
        haproxy=_haproxy_version() if any(c.label == HAPROXY for c in found) else None,
        rounds=rounds,
        seconds=seconds,
        rate=rate,
    )
    samples: dict[str, dict[str, list[Sample]]] = {
        scenario: {c.label: [] for c in found if scenario in c.scenarios} for scenario in SCENARIOS
    }
    with running() as fleet:
        assert set(FAULTY.values()) <= {r.name for r in fleet.replicas}
        for round_ in range(rounds):
            for scenario in SCENARIOS:
                for client in in_turn(found, round_):
                    if scenario in client.scenarios:
                        samples[scenario][client.label].append(measure(scenario, client, fleet, rate, seconds))
            if progress is not None:
                progress(f"failover: round {round_ + 1}/{rounds} done")
    steady = {label: statistics.median(s.p99_s for s in taken) for label, taken in samples[STEADY].items()}
    results.samples = samples
    results.rows = {
        scenario: {label: _figures(taken, FAULTY.get(scenario), steady[label]) for label, taken in rows.items()}
        for scenario, rows in samples.items()
    }
    return results


# ------------------------------------------------------------------------------------------------ reporting

_DESCRIPTIONS = {
    STEADY: "no fault",
    KILL: f"replica {FAULTY[KILL]} killed {KILL_AT:.0%} of the way into the run, dead to its end",
    SLOW: f"replica {FAULTY[SLOW]} {SLOW_FACTOR:.0f}x slower ({BASE_DELAY_MS * SLOW_FACTOR:.0f} ms)",
    FLAPPING: f"replica {FAULTY[FLAPPING]} answers {FLAPPING_ERROR_RATE:.0%} of its requests with 503",
    OUTAGE: "every replica answers 503",
}


def report(results: FailoverResults) -> str:
    """The figures as markdown: one table per scenario, then the evidence of each kill."""
    out: list[str] = []
    for scenario, rows in results.rows.items():
        out += [
            f"{scenario.capitalize()} ({_DESCRIPTIONS[scenario]}):",
            "",
            "| client | calls offered | success | p50 | p99 | p99 vs steady | slowest | upstream requests per call "
            "| of which the faulty replica |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for label, f in rows.items():
            share = "" if f.faulty_share is None else f"{f.faulty_share * 100:.1f} %"
            out.append(
                f"| {label} | {f.offered:,.0f} | {_rate(f.success_rate)} | {f.p50_s * 1e3:.2f} ms "
                f"| {f.p99_s * 1e3:.2f} ms | {f.vs_steady_p99:.2f}x | {f.max_s * 1e3:.1f} ms "
                f"| {f.upstream_per_request:.3f} | {share} |"
            )
        if HAPROXY not in rows:
            out.append(f"| {HAPROXY} | haproxy not installed | | | | | | | |")
        out.append("")
    busy = [
        f"{scenario}, {label}: {s.late / s.offered:.1%}"
        for scenario, rows in results.samples.items()
        for label, taken in rows.items()
        for s in taken
        if s.late > BUSY_SHARE * s.offered
    ]
    if busy:
        out += [
            f"Calls the load generator started over {LATE_S * 1e3:.0f} ms late (the machine was busy; those "
            f"runs' latencies include the wait): {'; '.join(busy)}.",
            "",
        ]
    kills = [(label, s) for label, taken in results.samples.get(KILL, {}).items() for s in taken]
    if kills:
        out += [
            "Kills (each round): requests each replica received during the run, the killed one until its kill:",
            "",
            "| client | killed | at | exit status | port answered after | requests, killed replica | others |",
            "| --- | --- | ---: | ---: | --- | ---: | --- |",
        ]
        for label, sample in kills:
            kill = sample.kill
            assert kill is not None
            others = ", ".join(f"{n} {c:,}" for n, c in sample.served.items() if n != kill.replica)
            out.append(
                f"| {label} | {kill.replica} | {kill.at_s:.2f} s | {kill.returncode} "
                f"| {'yes' if kill.answered_after else 'no'} | {sample.served[kill.replica]:,} | {others} |"
            )
    return "\n".join(out).rstrip()


def _rate(rate: float) -> str:
    return f"{rate * 100:.2f} %"


def targets(results: FailoverResults) -> str:
    """Whether the mesh meets each target, as markdown; HAProxy's figures against the same targets beside."""
    labels = [MESH] + ([HAPROXY] if HAPROXY in results.rows.get(STEADY, {}) else [])
    kill = results.rows[KILL]
    outage = results.rows[OUTAGE]
    out = ["| target | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]

    def line(name: str, cells: list[str]) -> None:
        out.append(f"| {name} | " + " | ".join(cells) + " |")

    line(
        f"success through the kill >= {SUCCESS_TARGET:.1%}",
        [f"{_rate(kill[x].success_rate)} {_verdict(kill[x].success_rate >= SUCCESS_TARGET)}" for x in labels],
    )
    line(
        f"p99 through the kill <= {P99_TARGET:g}x steady",
        [f"{kill[x].vs_steady_p99:.2f}x {_verdict(kill[x].vs_steady_p99 <= P99_TARGET)}" for x in labels],
    )
    line(
        f"upstream requests per call, total outage <= {UPSTREAM_TARGET:g}x",
        [
            f"{outage[x].upstream_per_request:.3f}x {_verdict(outage[x].upstream_per_request <= UPSTREAM_TARGET)}"
            for x in labels
        ],
    )
    if MESH_NO_BREAKER in outage:
        alone = outage[MESH_NO_BREAKER]
        bound = budget_bound(alone.offered, results.seconds)
        line(
            f"the same, breaker off (the retry budget alone) <= {UPSTREAM_TARGET:g}x",
            [
                f"{alone.upstream_per_request:.3f}x {_verdict(alone.upstream_per_request <= UPSTREAM_TARGET)} "
                f"(the budget's own bound for this run: {bound:.3f}x)"
            ]
            + [""] * (len(labels) - 1),
        )
    return "\n".join(out)


def budget_bound(offered: float, seconds: float) -> float:
    """The most upstream requests per call offered the retry budget allows in a total outage of ``seconds``
    preceded by the warm-up: 1 + (``budget_percent`` of the calls in its window, warm-up included, plus
    ``min_retries_per_second`` x ``budget_ttl`` for each window the run reaches into) / calls offered."""
    retry = mesh_settings(["http://127.0.0.1:1"]).retry
    windows = math.ceil(seconds / retry.budget_ttl)
    retries = (
        retry.budget_percent / 100 * (WARM_UP_CALLS + offered)
        + retry.min_retries_per_second * retry.budget_ttl * windows
    )
    return 1 + retries / offered


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    results = run("--quick" in args, progress=lambda line: print(line, file=sys.stderr))
    print(machine())
    print(report(results))
    print()
    print(targets(results))


if __name__ == "__main__":
    main()
