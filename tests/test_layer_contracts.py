"""Each outbound layer reads and sets only the ``CallContext`` fields its ``reads`` and ``writes`` name."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fastapi_mesh.clock import ManualClock
from fastapi_mesh.context import EXTENSION, CallContext, InboundContext
from fastapi_mesh.discovery.base import Endpoint
from fastapi_mesh.events import EventBus
from fastapi_mesh.layers import (
    AttemptTransport,
    BalancerTransport,
    BulkheadTransport,
    CircuitBreakerTransport,
    DeadlineTransport,
    Layer,
    RetryTransport,
)
from fastapi_mesh.services import Services, ServiceState
from fastapi_mesh.settings import MeshSettings

pytestmark = pytest.mark.anyio

FIELDS = frozenset(CallContext.__slots__)
Handler = Callable[[httpx.Request], Any]


class Recording(CallContext):
    """A call context that notes which of its fields are read and which are set."""

    __slots__ = ("read", "written")

    def __getattribute__(self, name: str) -> Any:
        if name in FIELDS:
            object.__getattribute__(self, "read").add(name)
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in FIELDS:
            object.__getattribute__(self, "written").add(name)
        object.__setattr__(self, name, value)


def recording(state: ServiceState, clock: ManualClock, *, stream: bool = False, deadline: float = 5.0) -> Recording:
    ctx = Recording.__new__(Recording)
    object.__setattr__(ctx, "read", set())
    object.__setattr__(ctx, "written", set())
    CallContext.__init__(ctx, state, clock.now() + deadline, InboundContext("198.51.100.7", None, []), None, stream)
    ctx.timed = True
    ctx.read.clear()
    ctx.written.clear()
    return ctx


def service(**settings: Any) -> ServiceState:
    base: dict[str, Any] = {
        "load_balancer": {"session_affinity": True},
        "bulkhead": {"max_concurrent": 4},
        "retry": {"max_retries": 2, "jitter": "none", "initial_delay": 0.0},
    }
    services = Services(MeshSettings(**(base | settings)), random.Random(1), ManualClock(), EventBus())
    state = services.get("svc")
    services.publish("svc", [Endpoint("http://10.0.0.1:8080"), Endpoint("http://10.0.0.2:8080")])
    return state


def layers(handler: Handler, clock: ManualClock) -> list[Layer]:
    inner = httpx.MockTransport(handler)
    return [
        DeadlineTransport(inner, clock=clock),
        BulkheadTransport(inner, clock=clock),
        CircuitBreakerTransport(inner, clock=clock),
        RetryTransport(inner, clock=clock, rng=random.Random(1), events=EventBus()),
        BalancerTransport(inner, clock=clock),
        AttemptTransport(inner, clock=clock),
    ]


async def send(layer: Layer, ctx: Recording, state: ServiceState) -> None:
    request = httpx.Request("GET", state.url("/x"), extensions={EXTENSION: ctx})
    try:
        response = await layer.handle_async_request(request)
    except httpx.TransportError:
        return
    await response.aclose()


def statuses(*answers: int | Exception) -> Handler:
    """A handler giving ``answers`` in turn (an exception is raised), then 200s."""
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        answer = queue.pop(0) if queue else 200
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer, content=b"{}")

    return handler


SCENARIOS: dict[str, Callable[[], Handler]] = {
    "an answer": lambda: statuses(200),
    "a 503, retried": lambda: statuses(503, 200),
    "a transport failure, retried": lambda: statuses(httpx.ConnectError("refused"), 200),
    "every attempt failing": lambda: statuses(*[httpx.ReadError("reset")] * 3),
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_each_layer_keeps_to_its_declared_fields(scenario: str, stream: bool) -> None:
    """Through every layer, on answers, retries and failures, streamed or not: the fields each layer reads
    are among its ``reads`` or ``writes``, and those it sets among its ``writes``."""
    for index in range(6):
        clock = ManualClock()
        state = service()
        layer = layers(SCENARIOS[scenario](), clock)[index]
        ctx = recording(state, clock, stream=stream)
        await send(layer, ctx, state)
        name = type(layer).__name__
        assert ctx.read <= set(layer.reads) | set(layer.writes), name
        assert ctx.written <= set(layer.writes), name
        assert set(layer.reads) | set(layer.writes) <= FIELDS, name


async def test_a_hedge_keeps_to_the_retry_layers_fields() -> None:
    """A hedged call (the hedge made from the call's context) stays within the retry layer's fields."""
    clock = ManualClock()
    state = service(retry={"max_retries": 1, "hedge_delay": 0.005})
    first = asyncio.Event()

    async def slow_first(request: httpx.Request) -> httpx.Response:
        if not first.is_set():
            first.set()
            await asyncio.Event().wait()  # the first attempt never answers: the hedge does
        return httpx.Response(200)

    layer = RetryTransport(httpx.MockTransport(slow_first), clock=clock, rng=random.Random(1), events=EventBus())
    ctx = recording(state, clock)
    call = asyncio.create_task(send(layer, ctx, state))
    for _ in range(100):  # until the first attempt is under way
        if first.is_set():
            break
        await asyncio.sleep(0)
    clock.advance(0.005)  # the hedge delay, on the layer's clock
    await asyncio.wait_for(call, 5.0)
    assert first.is_set() and state.hedges == 1
    assert ctx.read <= set(layer.reads) | set(layer.writes)
    assert ctx.written <= set(layer.writes)
