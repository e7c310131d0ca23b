"""Demo upstream services: ``user-service`` and ``order-service`` replicas.

Every response from a replica names the replica that produced it, in a ``replica`` field of the JSON body
and in an ``x-replica`` header, so load balancing is visible from the outside. A replica can be made
flaky: that fraction of its ``/api/...`` requests answers ``503`` instead, decided by a seeded
``random.Random`` so a run is reproducible. The probes ``/health/live`` and ``/health/ready`` are never
flaky.

Run one replica on its own::

    python -m example_app.upstream --service user-service --replica user-service-1 --port 8001 --flaky 0.3
"""

import argparse
import asyncio
import itertools
import os
import random
from collections.abc import Sequence
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Request
from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from example_app.models import ORDERS, USERS, Order, OrderIn

SERVICES = ("user-service", "order-service")
"""The services this module can play."""

REPLICA_HEADER = "x-replica"
"""The response header naming the replica that answered."""

FLAKY_ENV = "UPSTREAM_FLAKY"
"""Environment variable giving the default of ``--flaky``."""

SEED_ENV = "UPSTREAM_SEED"
"""Environment variable giving the default of ``--seed``."""

PARENT_POLL_INTERVAL = 0.5
"""Seconds between checks that the parent process is still alive (``--parent-pid``)."""


class ReplicaMiddleware:
    """Pure ASGI middleware: tags responses with the replica name and injects ``503``s when flaky."""

    def __init__(self, app: ASGIApp, *, replica: str, flaky: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= flaky <= 1.0:
            raise ValueError(f"flaky must be a fraction between 0 and 1, got {flaky}")
        self.app = app
        self.replica = replica
        self.flaky = flaky
        self.rng = random.Random(seed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer ``503`` for the chosen fraction of ``/api/`` requests, else pass through, tagged."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.flaky and scope["path"].startswith("/api/") and self.rng.random() < self.flaky:
            response = JSONResponse(
                {"detail": "injected failure", "replica": self.replica},
                status_code=503,
                headers={REPLICA_HEADER: self.replica},
            )
            await response(scope, receive, send)
            return

        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append(REPLICA_HEADER, self.replica)
            await send(message)

        await self.app(scope, receive, send_tagged)


def _health_router() -> APIRouter:
    """Kubernetes-style liveness and readiness probes."""
    router = APIRouter(prefix="/health", tags=["health"])

    @router.get("/live")
    async def live(request: Request) -> dict[str, str]:
        """The process is up."""
        return {"status": "alive", "replica": request.app.state.replica}

    @router.get("/ready")
    async def ready(request: Request) -> dict[str, str]:
        """The replica accepts traffic."""
        return {"status": "ready", "replica": request.app.state.replica}

    return router


def _user_router() -> APIRouter:
    """``user-service``: a fixed, read-only user directory."""
    router = APIRouter(prefix="/api/users", tags=["users"])

    @router.get("")
    async def list_users(request: Request) -> dict[str, Any]:
        """All users."""
        return {"users": [user.model_dump() for user in USERS], "replica": request.app.state.replica}

    @router.get("/{user_id}")
    async def get_user(user_id: int, request: Request) -> dict[str, Any]:
        """One user, or 404."""
        for user in USERS:
            if user.id == user_id:
                return {**user.model_dump(), "replica": request.app.state.replica}
        raise HTTPException(status_code=404, detail=f"user {user_id} not found")

    return router


def _order_router() -> APIRouter:
    """``order-service``: orders kept in memory, per replica (replicas do not share state)."""
    router = APIRouter(prefix="/api/orders", tags=["orders"])

    @router.get("")
    async def list_orders(request: Request) -> dict[str, Any]:
        """All orders this replica knows."""
        orders: list[Order] = request.app.state.orders
        return {"orders": [order.model_dump() for order in orders], "replica": request.app.state.replica}

    @router.post("", status_code=201)
    async def create_order(order_in: OrderIn, request: Request) -> dict[str, Any]:
        """Store a new order on this replica."""
        order = Order(id=next(request.app.state.order_ids), **order_in.model_dump())
        request.app.state.orders.append(order)
        return {**order.model_dump(), "replica": request.app.state.replica}

    return router


def create_upstream_app(service: str, replica: str, *, flaky: float = 0.0, seed: int = 0) -> FastAPI:
    """Build one replica of ``service`` named ``replica``; ``flaky`` is the fraction of 503 answers."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
    app = FastAPI(title=f"{service} ({replica})")
    app.state.service = service
    app.state.replica = replica
    app.include_router(_health_router())
    if service == "user-service":
        app.include_router(_user_router())
    else:
        app.state.orders = list(ORDERS)
        app.state.order_ids = itertools.count(len(ORDERS) + 1)
        app.include_router(_order_router())
    app.add_middleware(ReplicaMiddleware, replica=replica, flaky=flaky, seed=seed)
    return app


def _fraction(text: str) -> float:
    """argparse type: a float between 0 and 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of a single replica."""
    parser = argparse.ArgumentParser(
        prog="python -m example_app.upstream", description="Run one demo upstream replica on loopback."
    )
    parser.add_argument("--service", choices=SERVICES, required=True, help="which service to play")
    parser.add_argument("--replica", help="replica name reported in answers (default: <service>-<port>)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument(
        "--flaky",
        type=_fraction,
        default=os.environ.get(FLAKY_ENV, "0"),
        help=f"fraction of /api requests answered with 503 (default: ${FLAKY_ENV} or 0)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=os.environ.get(SEED_ENV, "0"),
        help=f"seed of the failure injection (default: ${SEED_ENV} or 0)",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default: info)")
    parser.add_argument(
        "--parent-pid", type=int, help="shut down when this process is no longer our parent (no orphans)"
    )
    return parser.parse_args(argv)


async def _watch_parent(server: uvicorn.Server, parent_pid: int) -> None:
    """Ask ``server`` to exit once this process is re-parented (its parent died)."""
    while not server.should_exit:
        if os.getppid() != parent_pid:
            server.should_exit = True
            return
        await asyncio.sleep(PARENT_POLL_INTERVAL)


async def serve(args: argparse.Namespace) -> None:
    """Serve one replica until a signal, or the death of ``--parent-pid`` if given, stops it."""
    replica = args.replica or f"{args.service}-{args.port}"
    app = create_upstream_app(args.service, replica, flaky=args.flaky, seed=args.seed)
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level=args.log_level, lifespan="on")
    server = uvicorn.Server(config)
    watcher = None if args.parent_pid is None else asyncio.create_task(_watch_parent(server, args.parent_pid))
    try:
        await server.serve()
    finally:
        if watcher is not None:
            watcher.cancel()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m example_app.upstream``."""
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
