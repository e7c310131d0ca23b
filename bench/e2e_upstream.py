"""The upstream replica of the benchmarks on real sockets: a Starlette app answering a small JSON body, with
faults that a benchmark can switch on at run time.

Run by ``bench.e2e``, ``bench.mtls``, ``bench.failover`` and ``bench.soak`` as
``python -m uvicorn bench.e2e_upstream:app --port N``, one process per replica (``BENCH_REPLICA``: its name in
the answers).

Routes:

- ``GET /api/users``: ``{"replica": NAME, "users": [...]}``, after the current fault is applied;
- ``POST /api/orders``: counts each delivery of the request's ``x-request-id`` (or ``idempotency-key``) and
  answers ``{"replica": NAME, "deliveries": n}``; the current fault applies, after the count for ``error`` and
  ``reset`` (a request that reached the app was delivered, whatever the caller saw);
- ``GET /_deliveries``: ``{"requests": total, "twice": [ids delivered more than once]}`` (this replica only);
- ``GET /_served``: ``{"replica": NAME, "users": n}``, the ``GET /api/users`` requests this process has
  received, whatever it answered (counted on arrival, before the fault);
- ``GET /_check``: a proxy's health check: answers as ``/api/users`` does under the current fault, without
  being counted in ``/_served``;
- ``PUT /_fault``: sets the fault from a JSON body, answers the fault now in force; ``GET /_fault`` reads it.

A fault (every field optional; ``PUT {}`` clears it):

- ``delay_ms``: base latency added to every answer (``asyncio.sleep``);
- ``factor``: multiplies ``delay_ms`` (``"slow"``: x10 latency is ``{"delay_ms": 2, "factor": 10}``);
- ``error_rate``: share of answers that are 503 (``0.3``: flapping; ``1.0``: a 503 burst);
- ``hang_rate``: share of answers that never come (held ``HANG_S`` seconds, then 503);
- ``reset_rate``: share of answers whose body is cut mid-way (headers and part of the body sent, then the
  connection is dropped).

Draws come from one ``random.Random`` seeded by ``BENCH_SEED`` (default 0) and the replica's name, so a run
with the same faults draws the same answers.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

NAME = os.environ.get("BENCH_REPLICA", "replica")
HANG_S = 30.0
USERS = {"replica": NAME, "users": ["ada", "grace"]}


@dataclass
class Fault:
    delay_ms: float = 0.0
    factor: float = 1.0
    error_rate: float = 0.0
    hang_rate: float = 0.0
    reset_rate: float = 0.0


fault = Fault()
draw = random.Random(f"{os.environ.get('BENCH_SEED', '0')}:{NAME}")
deliveries: Counter[str] = Counter()
served = 0


class _Reset(Exception):
    """Raised inside a streamed body: uvicorn drops the connection with the body half sent."""


async def _cut_body() -> AsyncIterator[bytes]:
    yield b'{"replica": "' + NAME.encode() + b'", "users": ["ada"'
    await asyncio.sleep(0)
    raise _Reset("body cut by the fault injector")


async def _faulted(ok: Response, *, delivered: bool = False) -> Response:
    """``ok``, or what the current fault makes of it."""
    current = fault
    delay = current.delay_ms * current.factor / 1000
    if delay > 0:
        await asyncio.sleep(delay)
    if current.hang_rate and draw.random() < current.hang_rate:
        await asyncio.sleep(HANG_S)
        return JSONResponse({"replica": NAME, "error": "hung"}, status_code=503)
    if current.error_rate and draw.random() < current.error_rate:
        return JSONResponse({"replica": NAME, "error": "injected"}, status_code=503)
    if current.reset_rate and draw.random() < current.reset_rate:
        return StreamingResponse(_cut_body(), media_type="application/json", headers={"content-length": "64"})
    return ok


async def users(request: Request) -> Response:
    global served
    served += 1
    if not (fault.delay_ms or fault.error_rate or fault.hang_rate or fault.reset_rate):
        return JSONResponse(USERS)
    return await _faulted(JSONResponse(USERS))


async def orders(request: Request) -> Response:
    key = request.headers.get("x-request-id") or request.headers.get("idempotency-key") or ""
    await request.body()
    if key:
        deliveries[key] += 1
    return await _faulted(JSONResponse({"replica": NAME, "deliveries": deliveries[key] if key else 1}))


async def served_count(request: Request) -> JSONResponse:
    return JSONResponse({"replica": NAME, "users": served})


async def check(request: Request) -> Response:
    return await _faulted(JSONResponse({"replica": NAME, "status": "ok"}))


async def delivered(request: Request) -> JSONResponse:
    twice = sorted(key for key, count in deliveries.items() if count > 1)
    return JSONResponse({"replica": NAME, "requests": sum(deliveries.values()), "twice": twice})


async def set_fault(request: Request) -> JSONResponse:
    global fault
    if request.method == "PUT":
        body = await request.json()
        try:
            fault = Fault(**{key: float(value) for key, value in body.items()})
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
    return JSONResponse({"replica": NAME, **asdict(fault)})


app = Starlette(
    routes=[
        Route("/api/users", users),
        Route("/api/orders", orders, methods=["POST"]),
        Route("/_deliveries", delivered),
        Route("/_served", served_count),
        Route("/_check", check),
        Route("/_fault", set_fault, methods=["GET", "PUT"]),
    ]
)
