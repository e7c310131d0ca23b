"""A stateful stand-in for a Consul agent and its catalog, served by uvicorn on 127.0.0.1 (no Consul server
can be installed for tests). It follows Consul's HTTP API docs for what the mesh uses:

- ``GET /v1/health/service/<name>`` with ``passing``, ``tag`` (repeatable: every tag must match), ``dc``,
  and blocking queries (``index`` + ``wait``) that really wait until the service's index passes ``index`` or
  ``wait`` (plus Consul's jitter, up to ``wait/16``) runs out; ``X-Consul-Index`` is the index of the
  service's last change in one raft-like index that grows with every write.
- ``PUT /v1/agent/service/register``, ``PUT /v1/agent/service/deregister/<id>``, ``GET /v1/agent/services``,
  ``PUT /v1/agent/check/pass|warn|fail/<check id>``.
- ACLs (``tokens=``): an unknown ``X-Consul-Token`` gets 403 ``ACL not found``; without a token (the
  anonymous token) reads are filtered to nothing (``X-Consul-Results-Filtered-By-ACLs: true``) and writes get
  403 ``Permission denied``.

Test knobs: ``fault`` (``malformed-json``, ``bad-shape``, ``no-index``, ``bogus-index``, ``zero-index``,
``ignore-index``, ``error``) for the next ``fault_times`` health answers (None: until cleared),
``answer_delay``, ``first_tag_only``, ``restore(index)`` (a snapshot restore: indexes go backwards, blocked
queries return), ``stop()``/``start()`` on the same port (stopped, it refuses connections),
``register_failures``. It records
``queries``, ``registrations`` and ``deregistrations``; ``on_deregister`` runs inside the deregister handler.

    async with ConsulStandIn() as consul:
        consul.add_service("user-service", port=8001)
        ...  # MeshSettings(discovery={"backend": "consul", "consul_url": consul.url})
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Self

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = ["ConsulStandIn", "Query", "parse_go_duration"]

START_TIMEOUT = 5.0
#: Consul caps a blocking query's wait at 10 minutes and defaults it to 5.
MAX_WAIT = 600.0
DEFAULT_WAIT = 300.0
#: The AccessorID Consul shows for the anonymous token.
ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
STATUSES = ("passing", "warning", "critical")

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """A Go duration (``"5s"``, ``"100ms"``, ``"1m30s"``) in seconds; ``ValueError`` when it is not one.

    >>> parse_go_duration("1m30s"), parse_go_duration("250ms")
    (90.0, 0.25)
    """
    if text == "0":
        return 0.0
    if not text:
        raise ValueError("empty duration")
    position, total = 0, 0.0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    return total


@dataclass
class Node:
    name: str
    address: str
    meta: dict[str, str] = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    create_index: int = 0


@dataclass
class Check:
    id: str
    name: str
    node: str
    service_id: str
    status: str = "critical"
    definition: dict[str, Any] = field(default_factory=dict)
    output: str = ""
    create_index: int = 0
    modify_index: int = 0


@dataclass
class Service:
    id: str
    name: str
    node: str
    port: int
    address: str = ""
    tags: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    create_index: int = 0
    modify_index: int = 0


@dataclass
class Query:
    """One health query as the stand-in saw it."""

    service: str
    index: int | None
    wait: str | None
    passing: bool
    tags: list[str]
    dc: str | None
    token: str | None


class _Dropped(Response):
    """Sends the head, then drops the connection: what a client sees of an agent that goes away mid-query."""

    def __init__(self) -> None:
        super().__init__(b"[]", media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        raise ConnectionAbortedError("the Consul stand-in stopped during a blocking query")


class ConsulStandIn:
    """A Consul agent (one node, ``standin``) and catalog in memory, served over HTTP on loopback.

    >>> consul = ConsulStandIn()
    >>> consul.add_service("users", port=8001) and consul.index > 0
    True
    """

    def __init__(
        self,
        *,
        datacenter: str = "dc1",
        node: str = "standin",
        node_address: str = "127.0.0.1",
        tokens: Collection[str] | None = None,
        jitter: str = "none",
        **server_options: Any,
    ) -> None:
        self.datacenter = datacenter
        self.agent_node = node
        #: Tokens with every permission; None: ACLs off.
        self.tokens = set(tokens) if tokens is not None else None
        #: Blocking-query jitter: ``none``, ``random`` (as Consul: up to wait/16) or ``max`` (always wait/16).
        self.jitter = jitter
        self.server_options = server_options
        self.index = 1
        self.nodes: dict[str, Node] = {}
        self.services: dict[str, Service] = {}
        self.checks: dict[str, Check] = {}
        #: Per service name, the index of its last change.
        self.service_index: dict[str, int] = {}
        self.queries: list[Query] = []
        self.registrations: list[dict[str, Any]] = []
        self.deregistrations: list[str] = []
        self.fault: str | None = None
        self.fault_times: int | None = None
        self.fault_status = 500
        #: Health answers wait this long first (after blocking).
        self.answer_delay = 0.0
        #: Filter by the first ``tag`` parameter only (as Consul did before it took several).
        self.first_tag_only = False
        #: Registrations answered 500 before one succeeds.
        self.register_failures = 0
        #: Awaited inside the deregister handler, before the service goes: ``on_deregister(service_id)``.
        self.on_deregister: Callable[[str], Awaitable[None]] | None = None
        self._changed = asyncio.Event()
        self._generation = 0
        self._down = True
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0
        self.add_node(node, node_address)
        self.app = Starlette(
            routes=[
                Route("/v1/health/service/{name}", self._health, methods=["GET"]),
                Route("/v1/agent/service/register", self._register, methods=["PUT"]),
                Route("/v1/agent/service/deregister/{service_id}", self._deregister, methods=["PUT"]),
                Route("/v1/agent/services", self._agent_services, methods=["GET"]),
                Route("/v1/agent/check/{action}/{check_id}", self._check_update, methods=["PUT"]),
            ]
        )

    # ------------------------------------------------------------------------------------- serving

    @property
    def url(self) -> str:
        scheme = "https" if "ssl_certfile" in self.server_options else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Serve (again, on the same port once it has one)."""
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="critical",
            lifespan="off",
            **self.server_options,
        )
        self._server = server = uvicorn.Server(config)
        self._down = False
        self._task = asyncio.create_task(server.serve())
        async with asyncio.timeout(START_TIMEOUT):
            while not server.started:
                if self._task.done():
                    self._task.result()
                    raise RuntimeError("the Consul stand-in did not start")
                await asyncio.sleep(0.005)
        self.port = server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop serving: blocked queries lose their connection, new ones are refused."""
        if self._server is None or self._task is None:
            return
        self._down = True
        self._wake()
        self._server.should_exit = True
        await self._task
        self._server = self._task = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.wait_for(self.stop(), timeout=10)

    # ------------------------------------------------------------------------------ state, from tests

    def add_node(self, name: str, address: str, meta: dict[str, str] | None = None) -> Node:
        self.index += 1
        node = self.nodes[name] = Node(name, address, dict(meta or {}), create_index=self.index)
        self._wake()
        return node

    def add_service(
        self,
        name: str,
        *,
        port: int,
        address: str = "127.0.0.1",
        service_id: str | None = None,
        tags: Iterable[str] = (),
        meta: dict[str, str] | None = None,
        weights: dict[str, int] | None = None,
        node: str | None = None,
        status: str | None = "passing",
    ) -> str:
        """Register a service instance (as the catalog would); with ``status`` it gets one check in that
        state, without only the node's ``serfHealth``. Returns its ID."""
        body: dict[str, Any] = {
            "ID": service_id or f"{name}-{port}",
            "Name": name,
            "Address": address,
            "Port": port,
            "Tags": list(tags),
            "Meta": dict(meta or {}),
        }
        if weights is not None:
            body["Weights"] = weights
        if status is not None:
            body["Check"] = {"TTL": "30s", "Status": status}
        return self._apply_registration(body, node or self.agent_node)

    def remove_service(self, service_id: str) -> None:
        service = self.services.pop(service_id)
        for check_id in [c.id for c in self.checks.values() if c.service_id == service_id]:
            del self.checks[check_id]
        self._bump(service.name)

    def set_check(self, check_id: str, status: str, output: str = "") -> None:
        """Set a check's status (``passing``, ``warning``, ``critical``); ``service:<id>`` names a service's
        first check, as Consul does."""
        if status not in STATUSES:
            raise ValueError(f"check status {status!r}")
        check = self.checks[check_id]
        if check.status == status and check.output == output:
            return
        check.status, check.output = status, output
        service = self.services.get(check.service_id)
        self._bump(service.name if service else None, check)

    def set_service_status(self, service_id: str, status: str) -> None:
        """Set every check of ``service_id``."""
        for check in [c for c in self.checks.values() if c.service_id == service_id]:
            self.set_check(check.id, status)

    def restore(self, index: int) -> None:
        """A snapshot restore to ``index``: every index goes back to at most ``index``; queries blocked now
        return at once (Consul abandons the old state store), with the lower index."""
        self.index = index
        for name, at in self.service_index.items():
            self.service_index[name] = min(at, index)
        self._generation += 1
        self._wake()

    def touch(self) -> None:
        """A write that changes nothing the health API shows (an index bump elsewhere in the raft log)."""
        self.index += 1
        self._wake()

    async def run_checks(self) -> None:
        """Run every HTTP check once, as the agent would: 2xx passing, 429 warning, anything else critical."""
        async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
            for check in list(self.checks.values()):
                url = check.definition.get("HTTP")
                if not url:
                    continue
                try:
                    response = await client.get(url)
                except httpx.HTTPError as exc:
                    self.set_check(check.id, "critical", f"Get {url}: {exc}")
                    continue
                code = response.status_code
                status = "passing" if 200 <= code < 300 else "warning" if code == 429 else "critical"
                self.set_check(check.id, status, f"HTTP GET {url}: {code}")

    # --------------------------------------------------------------------------------------- inside

    def _wake(self) -> None:
        """Every blocked query looks again (each waits on the event current when it started to wait)."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _bump(self, service_name: str | None, check: Check | None = None) -> None:
        self.index += 1
        if service_name is not None:
            self.service_index[service_name] = self.index
        if check is not None:
            check.modify_index = self.index
        self._wake()

    def _index_of(self, name: str) -> int:
        # A service nobody registered: the catalog's index (as Consul: any catalog write may concern it).
        return max(self.service_index.get(name, self.index), 1)

    def _apply_registration(self, body: dict[str, Any], node: str) -> str:
        name = body.get("Name")
        if not isinstance(name, str) or not name:
            raise ValueError("Missing service name")
        port = body.get("Port", 0)
        if not isinstance(port, int) or isinstance(port, bool):
            raise ValueError(f"Request decode failed: Port {port!r} is not a number")
        service_id = body.get("ID") or name
        self.index += 1
        previous = self.services.get(service_id)
        if previous is not None and previous.name != name:
            self.service_index[previous.name] = self.index
        service = Service(
            id=service_id,
            name=name,
            node=node,
            port=port,
            address=body.get("Address") or "",
            tags=list(body.get("Tags") or []),
            meta=dict(body.get("Meta") or {}),
            weights=dict(body.get("Weights") or {"Passing": 1, "Warning": 1}),
            create_index=previous.create_index if previous else self.index,
            modify_index=self.index,
        )
        self.services[service_id] = service
        for check_id in [c.id for c in self.checks.values() if c.service_id == service_id]:
            del self.checks[check_id]
        definitions = list(body.get("Checks") or [])
        if body.get("Check"):
            definitions.insert(0, body["Check"])
        for n, definition in enumerate(definitions, start=1):
            if "HTTP" in definition and not definition.get("Interval"):
                raise ValueError("Invalid check: HTTP checks need an Interval")
            check_id = definition.get("CheckID") or (
                f"service:{service_id}" if len(definitions) == 1 else f"service:{service_id}:{n}"
            )
            self.checks[check_id] = Check(
                id=check_id,
                name=definition.get("Name") or f"Service '{name}' check",
                node=node,
                service_id=service_id,
                status=definition.get("Status") or "critical",
                definition=dict(definition),
                create_index=self.index,
                modify_index=self.index,
            )
        self.service_index[name] = self.index
        self._wake()
        return service_id

    def _acl(self, request: Request, *, write: bool, resource: str) -> Response | None:
        """None when allowed; else Consul's 403 (``write``) or, for a read by the anonymous token, the
        sentinel ``filtered`` response."""
        if self.tokens is None:
            return None
        token = request.headers.get("x-consul-token")
        if token is None:
            if write:
                return PlainTextResponse(
                    f"Permission denied: token with AccessorID '{ANONYMOUS_ACCESSOR}' lacks permission "
                    f"'service:write' on {json.dumps(resource)}",
                    status_code=403,
                )
            return _FILTERED
        if token not in self.tokens:
            return PlainTextResponse("ACL not found", status_code=403)
        return None

    def _entry(self, service: Service) -> dict[str, Any]:
        node = self.nodes[service.node]
        checks = [c for c in self.checks.values() if c.service_id == service.id]
        serf = {
            "Node": node.name,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": "passing",
            "Notes": "",
            "Output": "Agent alive and reachable",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Type": "",
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": node.create_index,
            "ModifyIndex": node.create_index,
        }
        return {
            "Node": {
                "ID": node.id,
                "Node": node.name,
                "Address": node.address,
                "Datacenter": self.datacenter,
                "TaggedAddresses": {"lan": node.address, "wan": node.address},
                "Meta": dict(node.meta),
                "CreateIndex": node.create_index,
                "ModifyIndex": node.create_index,
            },
            "Service": {
                "ID": service.id,
                "Service": service.name,
                "Tags": list(service.tags),
                "Address": service.address,
                "Meta": dict(service.meta),
                "Port": service.port,
                "Weights": dict(service.weights),
                "EnableTagOverride": False,
                "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
                "Connect": {},
                "PeerName": "",
                "CreateIndex": service.create_index,
                "ModifyIndex": service.modify_index,
            },
            "Checks": [
                serf,
                *(
                    {
                        "Node": c.node,
                        "CheckID": c.id,
                        "Name": c.name,
                        "Status": c.status,
                        "Notes": "",
                        "Output": c.output,
                        "ServiceID": service.id,
                        "ServiceName": service.name,
                        "ServiceTags": list(service.tags),
                        "Type": "http" if "HTTP" in c.definition else "ttl",
                        "Interval": c.definition.get("Interval", ""),
                        "Timeout": c.definition.get("Timeout", ""),
                        "ExposedPort": 0,
                        "Definition": {},
                        "CreateIndex": c.create_index,
                        "ModifyIndex": c.modify_index,
                    }
                    for c in checks
                ),
            ],
        }

    # ------------------------------------------------------------------------------------- endpoints

    async def _health(self, request: Request) -> Response:
        name = request.path_params["name"]
        params = request.query_params
        denied = self._acl(request, write=False, resource=name)
        if denied is not None and denied is not _FILTERED:
            return denied
        passing = "passing" in params and params["passing"].lower() not in ("false", "0")
        tags = params.getlist("tag")
        dc = params.get("dc")
        try:
            index = int(params["index"]) if "index" in params else None
            if index is not None and index < 0:
                raise ValueError
        except ValueError:
            return PlainTextResponse("Invalid index", status_code=400)
        try:
            wait = min(parse_go_duration(params["wait"]), MAX_WAIT) if "wait" in params else DEFAULT_WAIT
        except ValueError:
            return PlainTextResponse("Invalid wait time", status_code=400)
        self.queries.append(
            Query(name, index, params.get("wait"), passing, tags, dc, request.headers.get("x-consul-token"))
        )
        if dc is not None and dc != self.datacenter:
            return PlainTextResponse("No path to datacenter", status_code=500)
        if index is not None and index > 0 and self.fault != "ignore-index":
            await self._block(name, index, wait)
        if self._down:
            return _Dropped()
        fault = self._take_fault()
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)
        at = self._index_of(name)
        headers = {"X-Consul-Index": str(at), "X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"}
        match = tags[:1] if self.first_tag_only else tags
        entries = [
            self._entry(s)
            for s in sorted(self.services.values(), key=lambda s: s.id)
            if s.name == name and all(t in s.tags for t in match)
        ]
        if passing:
            entries = [e for e in entries if all(c["Status"] == "passing" for c in e["Checks"])]
        if denied is _FILTERED:
            headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
            entries = []
        if fault == "error":
            return PlainTextResponse("rpc error making call: stand-in fault", status_code=self.fault_status)
        if fault == "malformed-json":
            return Response(b'[{"Node": {"Node": ', headers=headers, media_type="application/json")
        if fault == "bad-shape":
            return JSONResponse([{"Node": "standin", "Service": ["not", "an", "object"]}], headers=headers)
        if fault == "no-index":
            del headers["X-Consul-Index"]
        elif fault == "bogus-index":
            headers["X-Consul-Index"] = "not-a-number"
        elif fault == "zero-index":
            headers["X-Consul-Index"] = "0"
        elif fault == "ignore-index" and index:
            headers["X-Consul-Index"] = str(index)
        return JSONResponse(entries, headers=headers)

    def _take_fault(self) -> str | None:
        fault = self.fault
        if fault is None:
            return None
        if self.fault_times is not None:
            self.fault_times -= 1
            if self.fault_times <= 0:
                self.fault, self.fault_times = None, None
        return fault

    async def _block(self, name: str, index: int, wait: float) -> None:
        loop = asyncio.get_running_loop()
        extra = {"none": 0.0, "max": wait / 16, "random": random.uniform(0, wait / 16)}[self.jitter]
        deadline = loop.time() + wait + extra
        generation = self._generation
        while self._index_of(name) <= index and self._generation == generation and not self._down:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return

    async def _register(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return PlainTextResponse("Request decode failed: invalid JSON", status_code=400)
        if not isinstance(body, dict):
            return PlainTextResponse("Request decode failed: not an object", status_code=400)
        denied = self._acl(request, write=True, resource=str(body.get("Name")))
        if denied is not None:
            return denied
        self.registrations.append(body)
        if self.register_failures > 0:
            self.register_failures -= 1
            return PlainTextResponse("rpc error making call: stand-in registration fault", status_code=500)
        try:
            self._apply_registration(body, self.agent_node)
        except ValueError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        return Response(b"", status_code=200)

    async def _deregister(self, request: Request) -> Response:
        service_id = request.path_params["service_id"]
        service = self.services.get(service_id)
        denied = self._acl(request, write=True, resource=service.name if service else service_id)
        if denied is not None:
            return denied
        self.deregistrations.append(service_id)
        if self.on_deregister is not None:
            await self.on_deregister(service_id)
        if service is None or service.node != self.agent_node:
            return PlainTextResponse(f'Unknown service ID "{service_id}". Ensure that the service ID is passed, '
                                     "not the service name.", status_code=404)
        self.remove_service(service_id)
        return Response(b"", status_code=200)

    async def _agent_services(self, request: Request) -> Response:
        denied = self._acl(request, write=False, resource="")
        if denied is not None and denied is not _FILTERED:
            return denied
        visible = [] if denied is _FILTERED else [s for s in self.services.values() if s.node == self.agent_node]
        return JSONResponse(
            {
                s.id: {
                    "ID": s.id,
                    "Service": s.name,
                    "Tags": s.tags,
                    "Meta": s.meta,
                    "Port": s.port,
                    "Address": s.address,
                    "Weights": s.weights,
                    "Datacenter": self.datacenter,
                }
                for s in visible
            }
        )

    async def _check_update(self, request: Request) -> Response:
        action, check_id = request.path_params["action"], request.path_params["check_id"]
        status = {"pass": "passing", "warn": "warning", "fail": "critical"}.get(action)
        if status is None:
            return PlainTextResponse("Not found", status_code=404)
        check = self.checks.get(check_id)
        denied = self._acl(request, write=True, resource=check.service_id if check else check_id)
        if denied is not None:
            return denied
        if check is None:
            return PlainTextResponse(f'Unknown check ID "{check_id}"', status_code=404)
        self.set_check(check_id, status, request.query_params.get("note", ""))
        return Response(b"", status_code=200)


#: What ``_acl`` answers for a read by the anonymous token (the answer is filtered, not refused).
_FILTERED = Response(b"", status_code=200)
