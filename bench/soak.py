"""Soak: a ``MeshClient`` under bounded load at a fixed rate for minutes, against 3 uvicorn replicas on loopback
(``bench/e2e_upstream.py``), with a fault injected every ``--fault-every`` seconds.

``python -m bench.soak [--minutes M] [--rate R] [--fault-every S] [--backend B]`` (``make soak``; defaults: 10
minutes, 100 calls per second, a fault every 30 s, the default ``connection.backend``) prints a JSON summary
on stdout and exits with 1 when a bound is broken.

**Load.** Open loop: call number n is due at ``n / rate`` seconds after the start, whether or not earlier
calls have ended; at most ``MAX_OUTSTANDING`` calls are in progress, and a call due while that many are is not
made (counted as dropped). A share ``POST_SHARE`` of the calls, drawn at random (seeded, so every run draws
the same; a fixed pattern such as every third call would fall in step with round robin over 3 replicas and
send every POST to the same one), is ``POST /api/orders`` (a JSON body, no ``Idempotency-Key``: the mesh may
retry it only when it is known not to have been sent), the others ``GET /api/users``; each carries an
``x-request-id`` of its own.

**The mesh** (``soak_settings``): the development preset with a 1 s attempt timeout, a 5 s overall deadline
(``retry.max_elapsed``), a service bulkhead of 32 calls and 16 waiting, a breaker that half-opens after 2 s,
and active health checks (``GET /api/users`` every second, 0.5 s timeout); retry budget, outlier detection and
round robin as the preset has them.

**Faults.** Every replica answers after 2 ms (``delay_ms: 2``). Fault number k (k = 1, 2, ...) starts at
``k * S`` seconds, lasts ``hold = min(10 s, S / 2)`` and is then cleared; faults are injected while
``(k + 1) * S`` fits in the run, so the run ends with at least ``S - hold`` seconds without a fault. The kinds
take turns, on replica r1, r2, r3 in turn:

- ``kill``: the replica is killed (SIGKILL, connections cut) and started again on its port at the end;
- ``burst``: every replica answers 503 (the service as a whole fails: the breaker opens and half-opens);
- ``slow``: the replica's latency x10 (``factor: 10``);
- ``hang``: half its answers are held 30 s (the 1 s attempt timeout ends them on the client's side);
- ``reset``: half its answers have their body cut mid-way (the connection dropped).

The replicas run ``replica_app`` (in ``bench/soak.py``): the upstream's app, with every ``x-request-id``
echoed in the answer (so an answer given to the wrong call is seen) and every POST body received written to a
file of the replica's own (so deliveries survive a kill and can be counted across replicas and restarts).

**Bounds** (each one is a key of ``bounds`` in the summary; ``passed`` is false and the exit code 1 when any
fails):

- ``rss_flat``: this process's resident memory (``/proc/self/statm``), sampled every ``SAMPLE_EVERY``
  seconds, grows by less than 5% after warm-up. Warm-up lasts until the first round of the five faults has
  been cleared, or for the first 20% of the load if that is longer (the first 20% alone in a run too short
  for a round to leave two calm windows after it). The run splits into calm windows, the stretches without a
  fault (from the end of one fault to the start of the next, and from the end of the last one to the end of
  the load). The base is the median of the samples in the first calm window that starts after warm-up, the
  end value the median of the samples in the last calm window, and growth = (end - base) / base. Both
  windows see the same load and no fault. A run with no two calm windows after warm-up does not measure
  growth (``null``, not a failure).
- ``fds_flat``: the same for the open descriptors (``/proc/self/fd``) other than established TCP connections
  (``/proc/net/tcp``), ``other_fds`` in the summary. How many connections the pools hold follows the recent
  concurrency (a hang opens dozens, a kill closes some), so all descriptors (``fds``) and the connections
  (``connections``) are reported but not bounded; a connection the client leaks does not stay established,
  as the replicas close connections idle for 5 s (uvicorn's keep-alive timeout), so a leak is counted.
- ``fds_released``: once the client is closed, no more descriptors are open than before it was created.
- ``counters_zero``: when the load has stopped and every call has ended, the service bulkhead holds and
  queues nothing, no endpoint has a call in flight and the breaker has no half-open probe ticket out.
- ``calls_ended``: every call ends within ``DRAIN_TIMEOUT`` of the end of the load (none is stuck).
- ``no_double_post``: no ``x-request-id`` reached ``POST /api/orders`` twice (on one replica or on two, in
  one life of a replica or across a restart), and no POST answer reports a second delivery.
- ``answers_match``: every answer echoes the ``x-request-id`` of the call it was given to.
- ``no_unexpected_exception``: every call ends with a response or a ``MeshError`` (the one error tree the
  mesh raises, ``fastapi_mesh/errors.py``; no other httpx error is documented to surface); no exception
  reaches the event loop's exception handler or ``sys.unraisablehook``.
- ``faults_applied``: the run was the one planned: every fault was injected and cleared (a killed replica
  came back), and no replica exited on its own (one that did is started again after the load; the error and
  the last line of its stderr are in ``harness_errors``).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from starlette.types import Message, Receive, Scope, Send

from bench import e2e_upstream
from bench.e2e import ROOT, Replica, _fds, _has, started
from fastapi_mesh import MeshClient, MeshError, MeshSettings
from fastapi_mesh.settings import DEFAULT_CONNECTION_BACKEND

MINUTES = 10.0
RATE = 100.0
FAULT_EVERY = 30.0
MAX_HOLD = 10.0
REPLICAS = 3
MAX_OUTSTANDING = 128
POST_SHARE = 1 / 3
SEED = 0
SAMPLE_EVERY = 0.5
WARM_UP = 0.2
GROWTH_LIMIT = 0.05
DRAIN_TIMEOUT = 15.0
SETTLE_S = 0.5
EXAMPLES = 5
SERVICE = "upstream"
BASE_FAULT: dict[str, float] = {"delay_ms": 2.0}
FAULTS: dict[str, dict[str, float]] = {
    "burst": {"error_rate": 1.0},
    "slow": {"factor": 10.0},
    "hang": {"hang_rate": 0.5},
    "reset": {"reset_rate": 0.5},
}
KINDS = ("kill", "burst", "slow", "hang", "reset")
#: The header in which ``replica_app`` echoes the ``x-request-id`` of the request it answers.
ECHO = "x-soak-request-id"
#: The environment variable naming the file a replica writes the ids of the POSTs it received to.
LOG_ENV = "SOAK_DELIVERY_LOG"
#: Latency histogram bounds, in seconds (about 12 per decade from 0.5 ms to 20 s).
BOUNDS_S = tuple(0.0005 * 10 ** (i / 12) for i in range(56))

# ------------------------------------------------------------------------------------------------ replicas

_log = os.environ.get(LOG_ENV)
_log_fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if _log else None


async def replica_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``bench.e2e_upstream:app``, answering with the request's ``x-request-id`` in ``x-soak-request-id``; with
    ``SOAK_DELIVERY_LOG`` set, the id of each ``POST /api/orders`` is appended to that file once its body has
    been received in full (when the upstream counts a delivery)."""
    rid = None
    if scope["type"] == "http":
        rid = next((value for name, value in scope["headers"] if name == b"x-request-id"), None)
    if rid is None:
        await e2e_upstream.app(scope, receive, send)
        return
    echoed: bytes = rid

    async def send_echo(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (ECHO.encode(), echoed)]}
        await send(message)

    if _log_fd is None or scope["method"] != "POST" or scope["path"] != "/api/orders":
        await e2e_upstream.app(scope, receive, send_echo)
        return
    log_fd: int = _log_fd

    async def receive_logged() -> Message:
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            os.write(log_fd, echoed + b"\n")  # one write on an O_APPEND file: kept when the process is killed
        return message

    await e2e_upstream.app(scope, receive_logged, send_echo)


class SoakReplica(Replica):
    """A replica serving ``replica_app``, writing the POSTs it receives to ``log`` and its stderr next to it."""

    def __init__(self, name: str, log: Path) -> None:
        super().__init__(name, quiet=True)
        self.log = log
        self.stderr = log.with_suffix(".stderr")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def last_words(self) -> str:
        """The last line of the replica's stderr (uvicorn's reason when it could not start)."""
        lines = self.stderr.read_text(errors="replace").splitlines() if self.stderr.exists() else []
        return lines[-1] if lines else "(nothing on stderr)"

    def spawn(self) -> None:
        command = [sys.executable, "-m", "uvicorn", "bench.soak:replica_app", "--app-dir", str(ROOT)]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--backlog", "4096"]
        command += ["--log-level", "warning", "--no-access-log", "--lifespan", "off"]
        if _has("uvloop"):
            command += ["--loop", "uvloop"]
        if _has("httptools"):
            command += ["--http", "httptools"]
        env = {**os.environ, "BENCH_REPLICA": self.name, LOG_ENV: str(self.log)}
        with self.stderr.open("ab") as stderr:  # every cut body is logged there: not on this process's stderr
            self.process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, the connections are cut (and answers held by a hang go with it)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)

    def delivered(self) -> list[str]:
        """Every request id this replica received a POST for, in all its lives."""
        return self.log.read_text().split() if self.log.exists() else []


def soak_settings(urls: list[str], backend: str = DEFAULT_CONNECTION_BACKEND) -> MeshSettings:
    """The mesh of the soak (see the module docstring), calling ``upstream`` at ``urls``."""
    return MeshSettings(
        service_name="soak",
        discovery={"endpoints": {SERVICE: urls}},
        connection={"backend": backend},
        circuit_breaker={"timeout": 1.0, "reset_timeout": 2.0},
        retry={"max_elapsed": 5.0},
        bulkhead={"max_concurrent": 32, "max_queue": 16},
        active_health_check={"enabled": True, "path": "/api/users", "interval": 1.0, "timeout": 0.5},
    )


# ------------------------------------------------------------------------------------------------- running


@dataclass
class Fault:
    """One injected fault; times in seconds from the start of the load."""

    kind: str
    target: str  # a replica's name, or "all"
    at_s: float
    cleared_s: float | None = None


@dataclass
class Plan:
    """What a run does: how long, how fast, how often a fault comes, over which connection backend."""

    minutes: float = MINUTES
    rate: float = RATE
    fault_every: float = FAULT_EVERY
    backend: str = DEFAULT_CONNECTION_BACKEND
    max_outstanding: int = MAX_OUTSTANDING

    @property
    def load_s(self) -> float:
        return self.minutes * 60

    @property
    def hold_s(self) -> float:
        return min(MAX_HOLD, self.fault_every / 2)

    def schedule(self) -> list[tuple[float, str, int | None]]:
        """(start, kind, index of the target replica or None for all) of every fault."""
        found: list[tuple[float, str, int | None]] = []
        k = 1
        while self.fault_every > 0 and (k + 1) * self.fault_every <= self.load_s:
            kind = KINDS[(k - 1) % len(KINDS)]
            found.append((k * self.fault_every, kind, None if kind == "burst" else (k - 1) % REPLICAS))
            k += 1
        return found


@dataclass
class Tally:
    """What the calls came to (bounded in size whatever the length of the run)."""

    offered: int = 0
    dropped: int = 0
    posts: int = 0
    acknowledged: int = 0  # POSTs answered 200
    redelivered_answers: int = 0  # POST answers saying the replica had seen the id before
    mismatched: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)  # the first error message of each kind of outcome
    unexpected: int = 0
    examples: list[str] = field(default_factory=list)
    harness: list[str] = field(default_factory=list)  # what went wrong with the replicas or the faults
    latency: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS_S) + 1))

    def surprise(self, where: str, detail: str) -> None:
        self.unexpected += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(f"{where}: {detail}")

    def broke(self, where: str, detail: str) -> None:
        if len(self.harness) < EXAMPLES:
            self.harness.append(f"{where}: {detail}")
        else:
            self.harness[-1] = f"... and more; last: {where}: {detail}"

    def timed(self, seconds: float) -> None:
        self.latency[bisect.bisect_left(BOUNDS_S, seconds)] += 1

    def percentile_ms(self, fraction: float) -> float | None:
        total = sum(self.latency)
        if not total:
            return None
        seen = 0
        for index, count in enumerate(self.latency):
            seen += count
            if seen >= fraction * total:
                return round(BOUNDS_S[min(index, len(BOUNDS_S) - 1)] * 1000, 2)
        return None  # pragma: no cover


@dataclass
class Sample:
    t_s: float
    rss: int  # bytes
    fds: int  # every open descriptor
    connections: int  # of them, TCP sockets in the ESTABLISHED state

    @property
    def other_fds(self) -> int:
        """Descriptors other than established connections (the ones a leak leaves, see the docstring)."""
        return self.fds - self.connections


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _established() -> int:
    """How many of this process's descriptors are TCP sockets in the ESTABLISHED state."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines, None)
            for line in lines:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "01":
                    inodes.add(fields[9])
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            count += target.startswith("socket:[") and target[8:-1] in inodes
    return count


def _counters(client: MeshClient) -> dict[str, Any]:
    """The counts that must be back at zero once no call is in progress, from ``client.status()``."""
    status = client.status()
    service = status["services"].get(SERVICE, {"bulkhead": None, "in_flight": 0, "endpoints": []})
    bulkhead = service["bulkhead"] or {"active": 0, "queued": 0}
    breaker = status["circuit_breakers"].get(SERVICE, {"half_open_in_flight": 0})
    return {
        "bulkhead_active": bulkhead["active"],
        "bulkhead_queued": bulkhead["queued"],
        "in_flight": service["in_flight"],
        "endpoint_in_flight": [endpoint["in_flight"] for endpoint in service["endpoints"]],
        "half_open_in_flight": breaker["half_open_in_flight"],
    }


def _exercised(client: MeshClient) -> dict[str, Any]:
    """What the mesh did during the run, from ``client.status()``: proof that the faults reached it."""
    status = client.status()
    service = status["services"][SERVICE]
    breaker = status["circuit_breakers"][SERVICE]
    return {
        "breaker_state": breaker["state"],
        "breaker_trips": breaker["trips"],
        "bulkhead_rejected": (service["bulkhead"] or {}).get("rejected", 0),
        "retries": service["retries"],
        "retry_budget_exhausted": service["retry_budget"]["exhausted"],
        "ejections": sum(endpoint["ejections"] for endpoint in service["endpoints"]),
        "requests": service["requests"],
    }


class Soak:
    """One run: the load, the fault driver and the sampler, on one event loop."""

    def __init__(self, plan: Plan, replicas: list[SoakReplica], progress: Callable[[str], None] | None) -> None:
        self.plan = plan
        self.replicas = replicas
        self.progress = progress
        self.tally = Tally()
        self.faults: list[Fault] = []
        self.samples: list[Sample] = []
        self.peaks: Counter[str] = Counter()
        self.tag = uuid.uuid4().hex[:8]
        self.draw = random.Random(SEED)
        self.control: httpx.AsyncClient
        self.t0 = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(f"[{self.now():6.1f} s] {line}")

    async def _call(self, client: MeshClient, n: int) -> None:
        tally = self.tally
        rid = f"{self.tag}-{n}"
        post = self.draw.random() < POST_SHARE
        method = "POST" if post else "GET"
        start = time.perf_counter()
        try:
            if post:
                tally.posts += 1
                response = await client.post(SERVICE, "/api/orders", json={"order": n}, headers={"x-request-id": rid})
            else:
                response = await client.get(SERVICE, "/api/users", headers={"x-request-id": rid})
        except MeshError as exc:
            key = f"{method} {type(exc).__name__}"
            tally.outcomes[key] += 1
            tally.first.setdefault(key, str(exc))
        except Exception as exc:  # what the soak looks for: anything outside the documented error tree
            tally.outcomes[f"{method} unexpected {type(exc).__name__}"] += 1
            tally.surprise(f"{method} call", "".join(traceback.format_exception_only(exc)).strip())
        else:
            tally.outcomes[f"{method} {response.status_code}"] += 1
            echo = response.headers.get(ECHO)
            if echo is not None and echo != rid:
                tally.mismatched += 1
            if post and response.status_code == 200:
                tally.acknowledged += 1
                if response.json().get("deliveries") != 1:
                    tally.redelivered_answers += 1
        finally:
            tally.timed(time.perf_counter() - start)

    async def _load(self, client: MeshClient, outstanding: set[asyncio.Task[None]]) -> None:
        plan, tally = self.plan, self.tally
        total = int(plan.load_s * plan.rate)
        while tally.offered < total:
            due = tally.offered / plan.rate
            wait = due - self.now()
            if wait > 0:
                await asyncio.sleep(wait)
            n = tally.offered
            tally.offered += 1
            if len(outstanding) >= plan.max_outstanding:
                tally.dropped += 1
                continue
            task = asyncio.ensure_future(self._call(client, n))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)

    async def _apply(self, replicas: list[SoakReplica], fault: dict[str, float]) -> None:
        """``PUT /_fault`` on each replica, from this loop: a client made per call (as ``Replica.set_fault``
        does, in a thread) would load a CA store each time, and its allocations would show in the memory
        measured here."""

        async def put(replica: SoakReplica) -> None:
            (await self.control.put(f"{replica.url}/_fault", json=fault)).raise_for_status()

        await asyncio.gather(*(put(r) for r in replicas))

    async def _inject(self, kind: str, target: int | None) -> None:
        replicas = self.replicas if target is None else [self.replicas[target]]
        if kind == "kill":
            await asyncio.to_thread(replicas[0].kill)
        else:
            await self._apply(replicas, {**BASE_FAULT, **FAULTS[kind]})

    async def _clear(self, kind: str, target: int | None) -> None:
        replicas = self.replicas if target is None else [self.replicas[target]]
        if kind == "kill":
            await asyncio.to_thread(replicas[0].start)
        await self._apply(replicas, BASE_FAULT)

    async def _faults(self) -> None:
        hold = self.plan.hold_s
        for at, kind, target in self.plan.schedule():
            await asyncio.sleep(max(0.0, at - self.now()))
            fault = Fault(kind, "all" if target is None else self.replicas[target].name, round(self.now(), 2))
            self.faults.append(fault)
            self._say(f"fault {kind} on {fault.target}")
            try:
                await self._inject(kind, target)
            except Exception as exc:  # the replica refused the fault
                self.tally.broke(f"injecting {kind} on {fault.target}", repr(exc))
            await asyncio.sleep(max(0.0, at + hold - self.now()))
            try:
                await self._clear(kind, target)
            except Exception as exc:  # the replica did not come back, or refused to clear the fault
                self.tally.broke(f"clearing {kind} on {fault.target}", self._why(exc))
            fault.cleared_s = round(self.now(), 2)
            self._say(f"cleared {kind} on {fault.target}")

    async def _restore(self) -> None:
        """Every replica up and without a fault (what the fault driver leaves, unless it was cut short)."""
        try:
            for replica in self.replicas:
                if not replica.alive:
                    replica.stop()
                    await asyncio.to_thread(replica.start)
            await self._apply(self.replicas, BASE_FAULT)
        except Exception as exc:
            self.tally.broke("restoring the replicas", self._why(exc))

    async def _sample(self, client: MeshClient) -> None:
        while True:
            for replica in self.replicas:
                if replica.process is not None and replica.process.poll() is not None:  # not one the driver killed
                    self.tally.broke(f"replica {replica.name}", self._why(None, replica))
                    replica.process = None  # started again after the load
            self.samples.append(Sample(round(self.now(), 2), _rss(), _fds(), _established()))
            counters = _counters(client)
            for name in ("bulkhead_active", "bulkhead_queued", "in_flight", "half_open_in_flight"):
                self.peaks[name] = max(self.peaks[name], counters[name])
            await asyncio.sleep(SAMPLE_EVERY)

    def _why(self, exc: BaseException | None, replica: SoakReplica | None = None) -> str:
        """``exc`` and, for a replica that has exited, its exit code and the last line of its stderr."""
        found = [repr(exc)] if exc is not None else []
        for r in [replica] if replica is not None else self.replicas:
            if r.process is not None and r.process.poll() is not None:
                found.append(f"{r.name} exited with {r.process.returncode}: {r.last_words()}")
        return "; ".join(found)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self.tally.surprise("event loop", f"{context.get('message')}: {exc!r}")

    def _unraisable(self, unraisable: Any) -> None:
        self.tally.surprise("unraisable", f"{unraisable.err_msg or ''} {unraisable.exc_value!r}".strip())

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_error)
        hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        # Fault switches over a connection of their own each time: no descriptor of this client outlives a call.
        limits = httpx.Limits(max_keepalive_connections=0)
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=5.0, limits=limits) as self.control:
                return await self._run()
        finally:
            sys.unraisablehook = hook

    async def _run(self) -> dict[str, Any]:
        fds_before = _fds()
        client = MeshClient(soak_settings([r.url for r in self.replicas], self.plan.backend))
        outstanding: set[asyncio.Task[None]] = set()
        async with client:
            self.t0 = time.monotonic()
            sampler = asyncio.ensure_future(self._sample(client))
            driver = asyncio.ensure_future(self._faults())
            try:
                await self._load(client, outstanding)
                load_end = self.now()
                self._say(f"load stopped, {len(outstanding)} call(s) in progress")
                sampler.cancel()
                done, _ = await asyncio.wait({driver}, timeout=MAX_HOLD + 15)
                if not done:  # a fault outlasted the load: cut short, then cleared below
                    driver.cancel()
                    await asyncio.gather(driver, return_exceptions=True)
                    self.tally.broke("fault driver", "still running when the load stopped")
                elif not driver.cancelled() and driver.exception() is not None:
                    self.tally.broke("fault driver", repr(driver.exception()))
                await self._restore()
                stuck = 0
                if outstanding:
                    _, pending = await asyncio.wait(set(outstanding), timeout=DRAIN_TIMEOUT)
                    stuck = len(pending)
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                drained_s = self.now() - load_end
                await asyncio.sleep(SETTLE_S)
                counters = _counters(client)
                exercised = _exercised(client)
            finally:
                for task in (sampler, driver, *outstanding):
                    task.cancel()
                await asyncio.gather(sampler, driver, *outstanding, return_exceptions=True)
        await asyncio.sleep(0.2)  # sockets closed with the client are reaped by the loop
        fds_closed = _fds()
        return {
            "load_end_s": round(load_end, 2),
            "drained_s": round(drained_s, 2),
            "stuck": stuck,
            "counters": counters,
            "peaks": dict(self.peaks),
            "exercised": exercised,
            "fds_before_client": fds_before,
            "fds_after_close": fds_closed,
        }


# ------------------------------------------------------------------------------------------------- summary


def calm_windows(faults: list[Fault], load_s: float) -> list[tuple[float, float]]:
    """The stretches of the load without a fault: before the first, between two, after the last.

    >>> calm_windows([Fault("kill", "r1", 8.0, 12.5), Fault("burst", "all", 16.0, 20.0)], 30.0)
    [(0.0, 8.0), (12.5, 16.0), (20.0, 30.0)]
    """
    windows: list[tuple[float, float]] = []
    start = 0.0
    for fault in faults:
        windows.append((start, fault.at_s))
        start = fault.cleared_s if fault.cleared_s is not None else load_s
    windows.append((start, load_s))
    return [(a, b) for a, b in windows if b > a]


def growth(samples: list[Sample], faults: list[Fault], load_s: float, what: str) -> dict[str, Any]:
    """``what`` (a field of ``Sample``) at the base and at the end, and the growth between, as the module
    docstring defines them; ``growth`` is None when the run has no two calm windows after warm-up.

    >>> samples = [Sample(t, 100 + (t > 50), 10, 2) for t in range(60)]
    >>> growth(samples, [Fault("kill", "r1", 8, 12), Fault("slow", "r2", 40, 44)], 60.0, "rss")["growth"]
    0.01
    """
    windows = calm_windows(faults, load_s)
    after = [w for w in windows if w[0] >= WARM_UP * load_s]
    round_end = faults[len(KINDS) - 1].cleared_s if len(faults) >= len(KINDS) else None
    if round_end is not None and len([w for w in after if w[0] >= round_end]) >= 2:
        after = [w for w in after if w[0] >= round_end]
    found: dict[str, Any] = {"base": None, "end": None, "growth": None, "peak": None}
    values = [getattr(s, what) for s in samples]
    if values:
        found["peak"] = max(values)
    if len(after) < 2:
        return found
    (a, b), (c, d) = after[0], after[-1]
    base = [getattr(s, what) for s in samples if a <= s.t_s < b]
    end = [getattr(s, what) for s in samples if c <= s.t_s < d]
    if not base or not end:
        return found
    found["base"], found["end"] = statistics.median(base), statistics.median(end)
    found["growth"] = round((found["end"] - found["base"]) / found["base"], 4)
    found["windows_s"] = [[a, b], [c, d]]
    return found


def judge(summary: dict[str, Any]) -> dict[str, bool]:
    """Each bound of the module docstring: whether ``summary`` keeps it.

    >>> judge({"rss": {"growth": 0.06}, "other_fds": {"growth": None}, "fds_before_client": 9, "fds_after_close": 9,
    ...        "counters": {"bulkhead_active": 0, "bulkhead_queued": 0, "in_flight": 0, "endpoint_in_flight": [0],
    ...                     "half_open_in_flight": 0}, "stuck": 0,
    ...        "posts": {"delivered_twice": 0, "redelivered_answers": 0}, "mismatched_answers": 0,
    ...        "unexpected": {"count": 0}, "harness_errors": []})["rss_flat"]
    False
    """
    counters = summary["counters"]
    rss, fds = summary["rss"]["growth"], summary["other_fds"]["growth"]
    return {
        "rss_flat": rss is None or rss < GROWTH_LIMIT,
        "fds_flat": fds is None or fds < GROWTH_LIMIT,
        "fds_released": summary["fds_after_close"] <= summary["fds_before_client"],
        "counters_zero": not any(
            [
                counters["bulkhead_active"],
                counters["bulkhead_queued"],
                counters["in_flight"],
                any(counters["endpoint_in_flight"]),
                counters["half_open_in_flight"],
            ]
        ),
        "calls_ended": summary["stuck"] == 0,
        "no_double_post": summary["posts"]["delivered_twice"] == 0 and summary["posts"]["redelivered_answers"] == 0,
        "answers_match": summary["mismatched_answers"] == 0,
        "no_unexpected_exception": summary["unexpected"]["count"] == 0,
        "faults_applied": not summary["harness_errors"],
    }


def _deliveries(replicas: list[SoakReplica], tally: Tally) -> tuple[Counter[str], list[str]]:
    """Every POST received, counted per request id over all replicas and lives; and the ids each replica alive
    says (``/_deliveries``) it received more than once in its current life."""
    counts: Counter[str] = Counter()
    for replica in replicas:
        counts.update(replica.delivered())
    twice: list[str] = []
    for replica in replicas:
        try:
            twice += replica.deliveries()["twice"]
        except httpx.HTTPError as exc:
            tally.broke(f"reading the deliveries of {replica.name}", repr(exc))
    return counts, twice


def run(
    *,
    minutes: float = MINUTES,
    rate: float = RATE,
    fault_every: float = FAULT_EVERY,
    backend: str = DEFAULT_CONNECTION_BACKEND,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One soak; the summary (``passed`` and ``bounds`` say whether it kept its bounds)."""
    plan = Plan(minutes=minutes, rate=rate, fault_every=fault_every, backend=backend)
    with tempfile.TemporaryDirectory(prefix="mesh-soak-") as directory:
        replicas = [SoakReplica(f"r{i + 1}", Path(directory) / f"r{i + 1}.log") for i in range(REPLICAS)]
        fleet: list[Replica] = list(replicas)
        with started(fleet):
            try:
                for replica in replicas:
                    replica.set_fault(**BASE_FAULT)
                soak = Soak(plan, replicas, progress)
                with asyncio.Runner() as runner:
                    ended = runner.run(soak.run())
                counts, twice = _deliveries(replicas, soak.tally)
            finally:
                for replica in replicas:  # at once: a replica holding hung answers would take 10 s to stop
                    replica.kill()
    tally = soak.tally
    doubled = sorted(rid for rid, count in counts.items() if count > 1)
    doubled += sorted(set(twice) - set(doubled))
    summary: dict[str, Any] = {
        "plan": {**asdict(plan), "hold_s": plan.hold_s, "replicas": REPLICAS, "post_share": round(POST_SHARE, 3)},
        "calls": {
            "offered": tally.offered,
            "dropped": tally.dropped,
            "completed": sum(tally.outcomes.values()),
            "p50_ms": tally.percentile_ms(0.5),
            "p99_ms": tally.percentile_ms(0.99),
            "max_ms": tally.percentile_ms(1.0),
        },
        "outcomes": dict(sorted(tally.outcomes.items())),
        "first_errors": dict(sorted(tally.first.items())),
        "posts": {
            "sent": tally.posts,
            "acknowledged": tally.acknowledged,
            "delivered": len(counts),
            "delivered_twice": len(doubled),
            "twice_examples": doubled[:EXAMPLES],
            "redelivered_answers": tally.redelivered_answers,
        },
        "mismatched_answers": tally.mismatched,
        "unexpected": {"count": tally.unexpected, "examples": tally.examples},
        "harness_errors": tally.harness,
        "faults": [asdict(fault) for fault in soak.faults],
        "rss": growth(soak.samples, soak.faults, plan.load_s, "rss"),
        "fds": growth(soak.samples, soak.faults, plan.load_s, "fds"),
        "other_fds": growth(soak.samples, soak.faults, plan.load_s, "other_fds"),
        "connections": growth(soak.samples, soak.faults, plan.load_s, "connections"),
        **ended,
    }
    bounds = judge(summary)
    summary["bounds"] = bounds
    summary["passed"] = all(bounds.values())
    return summary


def report(summary: dict[str, Any]) -> str:
    """The summary as markdown: the run, the calls' outcomes, and each bound with what was measured for it."""
    plan, calls, posts = summary["plan"], summary["calls"], summary["posts"]
    rss, other, fds = summary["rss"], summary["other_fds"], summary["fds"]
    counters = summary["counters"]
    kinds = Counter(fault["kind"] for fault in summary["faults"])
    out = [
        f"{plan['minutes']:g} minutes at {plan['rate']:g} calls/s ({plan['post_share']:.0%} POSTs), "
        f"{plan['replicas']} replicas, `connection.backend: {plan['backend']}`, a fault every "
        f"{plan['fault_every']:g} s held {plan['hold_s']:g} s: "
        + ", ".join(f"{kind} x{kinds[kind]}" for kind in KINDS if kinds[kind])
        + ".",
        "",
        f"Calls: {calls['offered']:,} offered, {calls['dropped']:,} dropped, {calls['completed']:,} ended; "
        f"p50 {calls['p50_ms']} ms, p99 {calls['p99_ms']} ms (histogram buckets).",
        "",
        "| outcome | GET | POST |",
        "| --- | ---: | ---: |",
    ]
    outcomes: dict[str, dict[str, int]] = {}
    for key, n in summary["outcomes"].items():
        method, outcome = key.split(" ", 1)
        outcomes.setdefault(outcome, {})[method] = n
    for outcome, row in sorted(outcomes.items(), key=lambda item: -sum(item[1].values())):
        out.append(f"| {outcome} | {row.get('GET', 0):,} | {row.get('POST', 0):,} |")

    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value / 2**20:.1f} MiB"

    def pct(value: float | None) -> str:
        return "not measured" if value is None else f"{value * 100:+.1f}%"

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    exercised = summary["exercised"]
    measured = {
        "rss_flat": f"{mib(rss['base'])} -> {mib(rss['end'])} ({pct(rss['growth'])}), peak {mib(rss['peak'])}",
        "fds_flat": f"{number(other['base'])} -> {number(other['end'])} ({pct(other['growth'])}); all descriptors "
        f"{number(fds['base'])} -> {number(fds['end'])}, peak {number(fds['peak'])}",
        "fds_released": f"{summary['fds_before_client']} before the client, {summary['fds_after_close']} after close",
        "counters_zero": f"bulkhead {counters['bulkhead_active']} active / {counters['bulkhead_queued']} queued, "
        f"{counters['in_flight']} in flight, {counters['half_open_in_flight']} probe tickets "
        f"(peaks {summary['peaks'].get('bulkhead_active', 0)} / {summary['peaks'].get('in_flight', 0)} / "
        f"{summary['peaks'].get('half_open_in_flight', 0)})",
        "calls_ended": f"{summary['stuck']} stuck; drained {summary['drained_s']} s after the load",
        "no_double_post": f"{posts['sent']:,} sent, {posts['acknowledged']:,} answered 200, {posts['delivered']:,} "
        f"delivered, {posts['delivered_twice']} twice",
        "answers_match": f"{summary['mismatched_answers']} answers to another call",
        "no_unexpected_exception": f"{summary['unexpected']['count']}",
        "faults_applied": f"{len(summary['faults'])} faults, {len(summary['harness_errors'])} harness errors",
    }
    out += [
        "",
        f"The mesh: breaker tripped {exercised['breaker_trips']} times, {exercised['ejections']} ejections, "
        f"{exercised['retries']:,} retries, {exercised['bulkhead_rejected']} calls refused by the bulkhead.",
        "",
        "| bound | measured | kept |",
        "| --- | --- | --- |",
    ]
    for name, kept in summary["bounds"].items():
        out.append(f"| `{name}` | {measured.get(name, '')} | {'yes' if kept else '**no**'} |")
    return "\n".join(out)


#: The section of docs/benchmarks.md that ``--publish`` writes and ``python -m bench`` keeps as it is.
HEADING = "## Soak"
PAGE = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def published(page: Path = PAGE) -> str | None:
    """The soak section of ``page`` as last published (heading included, up to the next section), or None."""
    if not page.exists():
        return None
    text = page.read_text()
    start = text.find(f"\n{HEADING}\n")
    if start < 0:
        return None
    end = text.find("\n## ", start + 1)
    return text[start + 1 : end if end >= 0 else len(text)].rstrip() + "\n"


def _at_commit() -> str:
    """`` at commit <short hash>`` of the code measured, when it is a git checkout; else nothing."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return f" at commit {found.stdout.strip()}" if found.returncode == 0 and found.stdout.strip() else ""


def publish(summary: dict[str, Any], command: str, page: Path = PAGE) -> None:
    """Write ``summary`` as the soak section of ``page`` (``command``: what produced it), replacing the one
    there (appended if there is none)."""
    doc = __doc__ or ""
    method = doc[doc.index("**Load.**") : doc.index("**Bounds**")].strip()
    section = "\n".join(
        [
            HEADING,
            "",
            f"Produced by `{command}` on {date.today().isoformat()}{_at_commit()}; not part of `make bench`. A 60 s"
            " soak with the same bounds and a fault every 6 s runs in `make test` (`tests/integration/test_soak.py`).",
            "",
            method,
            "",
            "The bounds are defined in `bench/soak.py` (growth: the median of the first calm window after warm-up"
            " against the median of the last one).",
            "",
            report(summary),
            "",
        ]
    )
    old = published(page)
    text = page.read_text() if page.exists() else "# Benchmarks\n"
    text = text.replace(old, section) if old is not None else text.rstrip() + "\n\n" + section
    page.write_text(text)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=MINUTES, help="length of the load (default %(default)s)")
    parser.add_argument("--rate", type=float, default=RATE, help="calls per second (default %(default)s)")
    parser.add_argument(
        "--fault-every", type=float, default=FAULT_EVERY, help="seconds between faults (default %(default)s)"
    )
    parser.add_argument(
        "--backend", choices=("aiohttp", "httpcore"), default=DEFAULT_CONNECTION_BACKEND, help="connection.backend"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--markdown", action="store_true", help="the summary as markdown too, on stderr")
    parser.add_argument(
        "--publish", action="store_true", help=f"write the summary as the {HEADING!r} section of docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    summary = run(
        minutes=args.minutes,
        rate=args.rate,
        fault_every=args.fault_every,
        backend=args.backend,
        progress=None if args.quiet else _progress,
    )
    print(json.dumps(summary, indent=2))
    if args.markdown:
        print(report(summary), file=sys.stderr)
    if args.publish:
        given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--publish"]
        publish(summary, " ".join(["python -m bench.soak", *given]))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
