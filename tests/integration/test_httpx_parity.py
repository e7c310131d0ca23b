"""httpx parity where MeshClient does not go through ``httpx.AsyncClient.send``: timeouts, event hooks,
client-level headers / params / auth, auth flows and redirects. Most tests send the same call through a
plain ``httpx.AsyncClient`` and through ``MeshClient`` to the same real uvicorn replica and compare what
the replica received and what the caller got."""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from fastapi_mesh import (
    Mesh,
    MeshClient,
    MeshError,
    MeshSettings,
    UpstreamTimeout,
    UpstreamUnavailable,
    redirects,
)
from fastapi_mesh.context import InboundContext
from tests.upstreams import Fleet, Replica, settings_for, unused_port

pytestmark = pytest.mark.anyio

#: Headers that differ by design between the two clients: the mesh sends its deadline downstream.
MESH_ONLY = {"x-mesh-timeout-ms"}
DIGEST = {"realm": "mesh", "nonce": "n1", "user": "ada", "password": "pw"}


class EchoReplica(Replica):
    """A real upstream for parity tests. ``/echo`` answers with what it got; ``/redirect/<status>?to=<url>``
    redirects (``&cookie=<k=v>`` also sets a cookie); ``/loop`` redirects to itself; ``/challenge`` asks for
    HTTP digest auth and checks the answer. Every request is recorded in ``requests``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await Request(scope, receive).body()
        headers = {}
        for key, value in scope["headers"]:
            name = key.decode()
            headers[name] = f"{headers[name]}, {value.decode()}" if name in headers else value.decode()
        query = scope["query_string"].decode()
        seen = {"method": scope["method"], "path": scope["path"], "query": query, "headers": headers, "body": body}
        self.requests.append(seen)
        path = scope["path"]
        args = dict(urllib.parse.parse_qsl(query))
        extra: list[tuple[bytes, bytes]] = []
        status = 200
        if path.startswith("/redirect/"):
            status = int(path.rsplit("/", 1)[1])
            extra.append((b"location", args["to"].encode()))
            if "cookie" in args:
                extra.append((b"set-cookie", f"{args['cookie']}; Path=/".encode()))
        elif path == "/loop":
            status = 302
            extra.append((b"location", b"/loop"))
        elif path == "/challenge" and not _digest_ok(scope["method"], path, headers.get("authorization", "")):
            status = 401
            extra.append((b"www-authenticate", b'Digest realm="mesh", nonce="n1", qop="auth", algorithm=MD5'))
        data = json.dumps({**seen, "body": body.decode()}).encode()
        start = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": start})
        await send({"type": "http.response.body", "body": data})


def _digest_ok(method: str, uri: str, header: str) -> bool:
    """Whether ``header`` is a correct RFC 7616 MD5 digest answer to the challenge ``/challenge`` sends."""
    if not header.startswith("Digest "):
        return False
    fields = dict(re.findall(r'(\w+)="?([^",]*)"?', header[len("Digest ") :]))

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5(f"{DIGEST['user']}:{DIGEST['realm']}:{DIGEST['password']}")
    ha2 = md5(f"{method}:{uri}")
    expected = md5(f"{ha1}:{DIGEST['nonce']}:{fields.get('nc')}:{fields.get('cnonce')}:auth:{ha2}")
    return fields.get("username") == DIGEST["user"] and fields.get("response") == expected


async def start_echo(fleet: Fleet, count: int = 1) -> list[EchoReplica]:
    replicas = [EchoReplica(f"echo{i + 1}") for i in range(count)]
    for replica in replicas:
        await replica.start()
        fleet.replicas.append(replica)  # the fixture stops it
    return replicas


def comparable(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` minus what differs by design (the mesh's deadline header) or by chance (a digest
    answer's client nonce and hash, which the replica checks)."""
    kept = {k: v for k, v in headers.items() if k not in MESH_ONLY}
    if kept.get("authorization", "").startswith("Digest "):
        kept["authorization"] = re.sub(r'(cnonce|response)="[^"]*"', r'\1="-"', kept["authorization"])
    return kept


def received(replica: EchoReplica) -> list[dict[str, Any]]:
    """What the replica got, comparable between clients, and cleared for the next client."""
    seen = [{**r, "headers": comparable(r["headers"])} for r in replica.requests]
    replica.requests.clear()
    return seen


def outcome(response: httpx.Response) -> dict[str, Any]:
    """What a caller sees of a response, without the host part of URLs (the mesh's name the service)."""
    body = response.json() if response.content else {"headers": {}}  # a HEAD's has none
    return {
        "status": response.status_code,
        "path": response.url.path,
        "method": response.request.method,
        "history": [(r.status_code, r.url.path) for r in response.history],
        "body": {**body, "headers": comparable(body["headers"])},
    }


class Recorder:
    """Event hooks that record what they were called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | int]] = []

    async def request(self, request: httpx.Request) -> None:
        self.calls.append(("request", request.url.path, request.method))

    async def response(self, response: httpx.Response) -> None:
        self.calls.append(("response", response.url.path, response.status_code))

    def hooks(self) -> dict[str, list[Callable[[Any], Awaitable[None]]]]:
        return {"request": [self.request], "response": [self.response]}


@asynccontextmanager
async def no_async_client_send(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Inside: building or sending through an ``httpx.AsyncClient`` fails (the mesh's calls must not)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("went through httpx.AsyncClient")

    with monkeypatch.context() as patch:
        patch.setattr(httpx.AsyncClient, "send", refuse)
        patch.setattr(httpx.AsyncClient, "__init__", refuse)
        yield


# ------------------------------------------------------------------------------------------- timeouts


async def test_a_call_whose_every_attempt_timed_out_is_an_httpx_timeout(fleet: Fleet) -> None:
    """Two hanging replicas: both attempts time out, and the error is what ``except httpx.TimeoutException``
    catches, as for a plain httpx client, while staying an ``UpstreamUnavailable`` (a ``MeshError``)."""
    replicas = await fleet.start(2)
    for replica in replicas:
        replica.mode = "hang"
    settings = settings_for([r.url for r in replicas], circuit_breaker={"timeout": 0.2}, retry={"max_retries": 1})
    async with httpx.AsyncClient(timeout=0.2) as raw:
        with pytest.raises(httpx.TimeoutException):
            await raw.get(f"{replicas[0].url}/x")
    async with MeshClient(settings) as client:
        with pytest.raises(httpx.TimeoutException) as caught:
            await client.get("svc", "/x")
    error = caught.value
    assert isinstance(error, UpstreamTimeout) and isinstance(error, UpstreamUnavailable)
    assert isinstance(error, MeshError) and error.service == "svc"
    assert isinstance(error.__cause__, httpx.ReadTimeout)
    assert "ReadTimeout after 2 attempt(s)" in str(error)
    assert error.request.url.path == "/x"
    assert [r.total for r in replicas] == [2, 1]  # the raw call, then one attempt on each replica


async def test_a_post_that_timed_out_once_is_a_timeout_and_is_not_sent_again(fleet: Fleet) -> None:
    """A POST is not retried after a read timeout (it may have been processed): its one attempt timed
    out, so the call raises ``UpstreamTimeout``."""
    [replica] = await fleet.start(1)
    replica.mode = "hang"
    settings = settings_for([replica.url], circuit_breaker={"timeout": 0.2}, retry={"max_retries": 2})
    async with MeshClient(settings) as client:
        with pytest.raises(UpstreamTimeout, match="after 1 attempt"):
            await client.post("svc", "/orders", json={"n": 1})
    assert replica.received[("POST", "/orders")] == 1


async def test_attempts_failing_in_different_ways_are_not_a_timeout(fleet: Fleet) -> None:
    """One replica hangs, the other refuses connections: not every attempt timed out, so the error is a
    plain ``UpstreamUnavailable``, which ``except httpx.TimeoutException`` does not catch."""
    [hanging] = await fleet.start(1)
    hanging.mode = "hang"
    urls = [hanging.url, f"http://127.0.0.1:{unused_port()}"]
    settings = settings_for(urls, circuit_breaker={"timeout": 0.2}, retry={"max_retries": 1})
    async with MeshClient(settings) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await client.get("svc", "/x")
    assert not isinstance(caught.value, httpx.TimeoutException)
    assert hanging.total == 1  # each endpoint got one of the two attempts


async def test_connect_timeouts_on_every_attempt_give_upstream_timeout_to_the_fallback() -> None:
    """Timeouts of any kind count (here ``ConnectTimeout``); a per-call fallback gets the timeout error."""

    def time_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    settings = MeshSettings(discovery={"endpoints": {"svc": ["http://10.0.0.1:1"]}}, retry={"initial_delay": 0})
    got: list[BaseException] = []

    def fallback(exc: BaseException) -> dict[str, str]:
        got.append(exc)
        return {"from": "fallback"}

    async with MeshClient(settings, transport=httpx.MockTransport(time_out)) as client:
        answer = await client.get("svc", "/x", fallback=fallback)
        with pytest.raises(UpstreamTimeout, match="ConnectTimeout after 3 attempt"):
            await client.get("svc", "/x")
    assert answer.json() == {"from": "fallback"}
    assert len(got) == 1 and isinstance(got[0], UpstreamTimeout)


# ---------------------------------------------------------------------------------- headers, params, auth


@pytest.mark.parametrize(
    "call",
    [
        {},
        {"headers": {"X-TENANT": "beta"}, "params": {"b": "3", "c": ["4", "5"]}},
        {"path": "/echo?z=9", "params": {"a": "7"}},
        {"auth": None},
        {"auth": ("grace", "pw2"), "headers": {"accept": "application/json"}},
    ],
    ids=["defaults", "call-overrides", "url-query", "auth-none", "own-auth"],
)
async def test_client_level_headers_params_and_auth_merge_as_httpx_merges_them(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, call: dict[str, Any]
) -> None:
    """The replica receives the same request from ``MeshClient(headers=, params=, auth=)`` as from an
    ``httpx.AsyncClient`` with the same defaults, whatever the call adds or overrides."""
    [replica] = await start_echo(fleet)
    defaults: dict[str, Any] = {
        "headers": {"x-tenant": "acme", "X-Env": "test"},
        "params": {"a": "1", "b": "2"},
        "auth": ("ada", "pw"),
    }
    call = dict(call)
    path = call.pop("path", "/echo")
    async with httpx.AsyncClient(base_url=replica.url, **defaults) as raw:
        await raw.get(path, **call)
    expected = received(replica)
    async with MeshClient(settings_for([replica.url]), **defaults) as client, no_async_client_send(monkeypatch):
        await client.get("svc", path, **call)
    assert received(replica) == expected
    assert expected[0]["headers"]["x-env"] == "test"  # the comparison is not vacuous


async def test_per_call_headers_win_over_forwarded_inbound_headers_over_client_defaults() -> None:
    """Precedence: client defaults, then headers forwarded from the inbound request, then the call's."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    settings = MeshSettings(discovery={"endpoints": {"svc": ["http://10.0.0.1:1"]}})
    client = MeshClient(settings, transport=httpx.MockTransport(handler), headers={"x-request-id": "client"})
    async with client:
        inbound = InboundContext("10.1.1.1", None, [("x-request-id", "inbound")])
        view = client._bind(inbound)
        await client.get("svc", "/a")
        await view.get("svc", "/b")
        await view.get("svc", "/c", headers={"X-Request-Id": "call"})
    assert [r.headers.get_list("x-request-id") for r in seen] == [["client"], ["inbound"], ["call"]]


def test_bad_client_level_arguments_fail_at_construction() -> None:
    """As with httpx, a wrong ``auth=`` type fails when the client is made; unknown hook events too."""
    with pytest.raises(TypeError, match='Invalid "auth" argument'):
        MeshClient(auth=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown event"):
        MeshClient(event_hooks={"requests": []})


# -------------------------------------------------------------------------------- auth flows, redirects


def signed(request: httpx.Request) -> httpx.Request:
    request.headers["x-signed"] = "yes"
    return request


#: name: (method, path, a factory of the call's keyword arguments: a digest auth keeps state, so one each)
SCENARIOS: dict[str, tuple[str, str, Callable[[], dict[str, Any]]]] = {
    "302 GET": ("GET", "/redirect/302?to=/echo", dict),
    "303 POST becomes GET, body dropped": ("POST", "/redirect/303?to=/echo", lambda: {"json": {"n": 1}}),
    "301 POST becomes GET": ("POST", "/redirect/301?to=/echo", lambda: {"content": b"abc"}),
    "307 POST keeps method and body": ("POST", "/redirect/307?to=/echo", lambda: {"json": {"n": 2}}),
    "308 PUT keeps method and body": ("PUT", "/redirect/308?to=/echo", lambda: {"content": b"xyz"}),
    "303 HEAD stays HEAD": ("HEAD", "/redirect/303?to=/echo", dict),
    "Location with dot segments": ("GET", "/redirect/302?to=/x/./y/../../echo", dict),
    "Location relative to the path": ("GET", "/redirect/302?to=../echo%3Fv%3D1", dict),
    "Location with an encoded query and a fragment": ("GET", "/redirect/307?to=/echo%3Fq%3Da%2520b%23top", dict),
    "two hops, a cookie set on the first": ("GET", "/redirect/302?to=/redirect/307%3Fto%3D/echo&cookie=sid%3D1", dict),
    "basic auth on a same-origin hop": ("GET", "/redirect/302?to=/echo", lambda: {"auth": ("ada", "pw")}),
    "digest auth challenge answered": ("GET", "/challenge", lambda: {"auth": httpx.DigestAuth("ada", "pw")}),
    "digest auth over a redirect": (
        "GET",
        "/redirect/307?to=/challenge",
        lambda: {"auth": httpx.DigestAuth("ada", "pw")},
    ),
    "an auth callable": ("GET", "/echo", lambda: {"auth": signed}),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_auth_and_redirects_match_httpx_without_an_async_client(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The same call through httpx.AsyncClient and through MeshClient: the replica receives the same
    requests (methods, bodies, auth and cookie headers), the caller gets the same response and history,
    and the event hooks are called the same times with the same requests and responses. The mesh does it
    without building or sending through an ``httpx.AsyncClient``."""
    method, path, arguments = SCENARIOS[name]
    [replica] = await start_echo(fleet)
    raw_hooks, mesh_hooks = Recorder(), Recorder()
    async with httpx.AsyncClient(base_url=replica.url, event_hooks=raw_hooks.hooks()) as raw:
        raw_response = await raw.request(method, path, follow_redirects=True, **arguments())
    expected = received(replica)
    settings = settings_for([replica.url], retry={"max_retries": 0})
    async with MeshClient(settings, event_hooks=mesh_hooks.hooks()) as client, no_async_client_send(monkeypatch):
        response = await client.request(method, "svc", path, follow_redirects=True, **arguments())
    assert received(replica) == expected
    assert outcome(response) == outcome(raw_response)
    assert mesh_hooks.calls == raw_hooks.calls
    assert len(expected) >= 2 or name == "an auth callable"  # every scenario but one sends more than once


async def test_a_redirect_loop_stops_where_httpx_stops(fleet: Fleet) -> None:
    """``/loop`` redirects to itself: both clients send the same number of requests, then raise
    ``httpx.TooManyRedirects``, with every endpoint slot given back."""
    [replica] = await start_echo(fleet)
    async with httpx.AsyncClient(base_url=replica.url) as raw:
        with pytest.raises(httpx.TooManyRedirects):
            await raw.get("/loop", follow_redirects=True)
    sent_by_httpx = len(received(replica))
    settings = settings_for([replica.url], bulkhead={"max_concurrent": 1})
    async with MeshClient(settings) as client:
        with pytest.raises(httpx.TooManyRedirects):
            async with client.stream("GET", "svc", "/loop", follow_redirects=True):
                pass
        metrics = client.get_metrics()
    assert len(received(replica)) == sent_by_httpx == 1 + redirects.MAX_REDIRECTS
    assert metrics["load_balancer"]["svc"]["endpoints"][0]["in_flight"] == 0
    assert metrics["bulkheads"]["svc"]["active"] == 0


async def test_a_redirect_to_another_endpoint_of_the_service_keeps_the_credentials(fleet: Fleet) -> None:
    """Redirected from one replica's address to another's: a new origin for httpx, which would drop
    ``Authorization``; within one service the mesh keeps it (both addresses are the same service). A
    redirect out of the service is not followed, and its ``next_request`` carries no credentials."""
    first, second = await start_echo(fleet, 2)
    settings = settings_for([first.url, second.url], load_balancer={"strategy": "round-robin"})
    outside = f"http://127.0.0.1:{unused_port()}/elsewhere"
    async with MeshClient(settings, auth=("ada", "pw")) as client:
        hops = [
            await client.get("svc", f"/redirect/307?to={r.url}/echo", follow_redirects=True) for r in (first, second)
        ]
        away = await client.get("svc", f"/redirect/302?to={outside}", follow_redirects=True)
    requests = [*first.requests, *second.requests]
    assert [h.status_code for h in hops] == [200, 200]
    assert len(requests) == 5
    assert all(r["headers"]["authorization"] == "Basic YWRhOnB3" for r in requests)
    assert away.status_code == 302 and away.next_request is not None
    assert "authorization" not in away.next_request.headers


async def test_hooks_run_once_per_call_not_per_retry(fleet: Fleet) -> None:
    """A replica answering 503, then 200: the stack retries below the hooks, so the request hook runs once
    and the response hook sees only the answer the caller gets."""
    [replica] = await fleet.start(1)
    replica.mode, replica.status_code = "flap", 503
    recorder = Recorder()
    async with MeshClient(settings_for([replica.url]), event_hooks=recorder.hooks()) as client:
        response = await client.get("svc", "/x")
    assert response.status_code == 200 and replica.total == 2
    assert recorder.calls == [("request", "/x", "GET"), ("response", "/x", 200)]


async def test_a_request_hook_can_change_the_request_and_a_response_hook_can_raise(fleet: Fleet) -> None:
    """As with httpx: a request hook's change is sent; a response hook's exception ends the call, and a
    streamed response it was given is closed (its slots given back)."""
    [replica] = await fleet.start(1)
    replica.mode = "status"

    async def sign(request: httpx.Request) -> None:
        request.headers["x-signature"] = "s1"

    async def check(response: httpx.Response) -> None:
        response.raise_for_status()

    settings = settings_for([replica.url], retry={"max_retries": 0}, bulkhead={"max_concurrent": 1})
    mesh = Mesh(settings, event_hooks={"request": [sign], "response": [check]})  # Mesh passes them on
    async with mesh.client as client:
        with pytest.raises(httpx.HTTPStatusError):
            await client.get("svc", "/a")
        with pytest.raises(httpx.HTTPStatusError):
            async with client.stream("GET", "svc", "/b"):
                pass
        metrics = client.get_metrics()
    assert [h["x-signature"] for h in replica.headers] == ["s1", "s1"]
    assert metrics["bulkheads"]["svc"]["active"] == 0
    assert metrics["load_balancer"]["svc"]["endpoints"][0]["in_flight"] == 0


async def test_sync_hooks_fail_as_they_do_with_httpx_async_client() -> None:
    """httpx.AsyncClient awaits its hooks, so a plain function fails with a TypeError; the mesh the same."""
    calls: list[str] = []

    def sync_hook(request: httpx.Request) -> None:
        calls.append("called")

    transport = httpx.MockTransport(lambda request: httpx.Response(200))
    async with httpx.AsyncClient(transport=transport, event_hooks={"request": [sync_hook]}) as raw:
        with pytest.raises(TypeError):
            await raw.get("http://10.0.0.1:1/x")
    settings = MeshSettings(discovery={"endpoints": {"svc": ["http://10.0.0.1:1"]}})
    async with MeshClient(settings, transport=transport, event_hooks={"request": [sync_hook]}) as client:
        with pytest.raises(TypeError):
            await client.get("svc", "/x")
    assert calls == ["called", "called"]
