"""The connection layer: each ``connection.backend`` against real uvicorn replicas and real sockets on loopback.

Every backend must give the same responses, raise httpx's own exceptions in the same situations (the retry
layer reads "not sent" from the type), verify TLS against the mesh's CA, present the mTLS certificate, keep
no cookies, go through the egress proxy, close every connection on ``aclose()`` and leave no descriptor
behind while replicas restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import os
import socket
import ssl
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import ValidationError

from fastapi_mesh import MeshClient, MeshSettings, UpstreamUnavailable
from fastapi_mesh.connection import PerOriginTransport, ProxyChooser
from fastapi_mesh.connection.aiohttp_transport import AiohttpTransport
from fastapi_mesh.security.certs import CertificateAuthority
from fastapi_mesh.stack import build_connection_pool
from tests.upstreams import START_TIMEOUT, Fleet, Replica, settings_for, unused_port

pytestmark = pytest.mark.anyio

BACKENDS = ("httpcore", "aiohttp")
TIMEOUTS = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}


def _settings(urls: list[str], backend: str, **sections: Any) -> MeshSettings:
    return settings_for(urls, "svc", connection={"backend": backend, **sections.pop("connection", {})}, **sections)


def _pool(backend: str, **sections: Any) -> httpx.AsyncBaseTransport:
    return build_connection_pool(MeshSettings(connection={"backend": backend}, **sections))


def _request(method: str, url: str, **timeouts: float) -> httpx.Request:
    return httpx.Request(method, url, extensions={"timeout": {**TIMEOUTS, **timeouts}})


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _settle_fds(limit: int, timeout: float = 5.0) -> int:
    """The descriptor count once it is at most ``limit`` (closing sockets take a loop turn or two), or when
    ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    count = _fds()
    while count > limit and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        gc.collect()
        count = _fds()
    return count


# --------------------------------------------------------------------------------------- stand-in servers


class HeaderReplica(Replica):
    """Answers with a cookie and a repeated header, and records the ``cookie`` header of each request."""

    def __init__(self, name: str, **options: Any) -> None:
        super().__init__(name, **options)
        self.cookies: list[str | None] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = dict(scope["headers"])
        self.received[(scope["method"], scope["path"])] += 1
        self.cookies.append(headers[b"cookie"].decode() if b"cookie" in headers else None)
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        body = b'{"ok": true}'
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"set-cookie", b"session=s1; Path=/"),
                    (b"x-repeated", b"one"),
                    (b"x-repeated", b"two"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class PinnedReplica(Replica):
    """A replica that comes back on the same port after a restart."""

    async def start(self) -> None:
        config = uvicorn.Config(
            self, host="127.0.0.1", port=self.port, log_level="critical", lifespan="off", **self.server_options
        )
        self.server = server = uvicorn.Server(config)
        self.task = asyncio.create_task(server.serve())
        async with asyncio.timeout(START_TIMEOUT):
            while not server.started:
                if self.task.done():
                    self.task.result()
                await asyncio.sleep(0.005)
        self.port = server.servers[0].sockets[0].getsockname()[1]


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]], Awaitable[None]]


@asynccontextmanager
async def tcp_server(handle: Handler, **options: Any) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A raw asyncio server on loopback; yields its port and the request heads it read (``handle`` reads)."""
    heads: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await handle(reader, writer, heads)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, **options)
    try:
        yield server.sockets[0].getsockname()[1], heads
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


async def hang_up_after_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heads: list[bytes]) -> None:
    """Reads a whole request, then closes the connection without answering."""
    head = await reader.readuntil(b"\r\n\r\n")
    lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    await reader.readexactly(lengths[0] if lengths else 0)
    heads.append(head)


async def never_speak(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heads: list[bytes]) -> None:
    """Accepts the connection and says nothing (a TLS handshake never completes)."""
    await reader.read()


# ----------------------------------------------------------------------------------------------- PKI


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mesh CA (``ca.crt``) with a server certificate for 127.0.0.1 and a client certificate, and a server
    certificate from another CA: ``server/``, ``client/``, ``other-server/`` hold ``tls.crt`` and ``tls.key``."""
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create()
    ca.write(directory)
    ca.issue("server", dns_names=["127.0.0.1"]).write(directory / "server")
    ca.issue("client", dns_names=[]).write(directory / "client")
    other = CertificateAuthority.create(common_name="another CA")
    other.issue("other-server", dns_names=["127.0.0.1"]).write(directory / "other-server")
    return directory


def _mtls(pki: Path) -> dict[str, Any]:
    return {
        "enabled": True,
        "cert_path": str(pki / "client" / "tls.crt"),
        "key_path": str(pki / "client" / "tls.key"),
        "ca_path": str(pki / "ca.crt"),
    }


# -------------------------------------------------------------------------------------------- responses


@pytest.mark.parametrize("backend", BACKENDS)
async def test_each_backend_sends_and_answers_exactly_like_httpx(fleet: Fleet, backend: str) -> None:
    """Through the mesh, the replica receives the headers and body a plain httpx client sends, and the caller
    gets the status, repeated headers, cookie header, body, HTTP version and reason httpx gives."""
    replica = HeaderReplica("h1")
    await replica.start()
    fleet.replicas.append(replica)
    async with httpx.AsyncClient() as plain:
        expected = await plain.post(f"{replica.url}/orders?q=a%20b", json={"item": 1}, headers={"x-trace": "t"})
    async with MeshClient(_settings([replica.url], backend)) as client:
        response = await client.post("svc", "/orders?q=a%20b", json={"item": 1}, headers={"x-trace": "t"})
    sent_plain, sent_mesh = replica.headers
    sent_mesh.pop("x-mesh-timeout-ms")
    assert sent_mesh == sent_plain
    assert (response.status_code, response.json(), response.http_version, response.reason_phrase) == (
        expected.status_code,
        expected.json(),
        "HTTP/1.1",
        "Created",
    )
    assert response.headers.get_list("x-repeated") == expected.headers.get_list("x-repeated") == ["one", "two"]
    assert response.headers["set-cookie"] == expected.headers["set-cookie"]
    assert response.is_closed and response.elapsed > datetime.timedelta(0)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_cookie_an_upstream_sets_is_never_sent_on_a_later_call(fleet: Fleet, backend: str) -> None:
    """The backend keeps no cookie jar: one client calls on behalf of many callers."""
    replica = HeaderReplica("h1")
    await replica.start()
    fleet.replicas.append(replica)
    async with MeshClient(_settings([replica.url], backend)) as client:
        for _ in range(3):
            await client.get("svc", "/login")
        await client.get("svc", "/own", cookies={"mine": "1"})
    assert replica.cookies == [None, None, None, "mine=1"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_streamed_upload_and_streamed_download_go_through(fleet: Fleet, backend: str) -> None:
    """A streamed request body arrives whole; a streamed response is read chunk by chunk, and closing it
    gives the endpoint's slot back."""
    (replica,) = await fleet.start(1)

    async def upload() -> AsyncIterator[bytes]:
        for part in (b"ab", b"cd", b"ef"):
            yield part

    async with MeshClient(_settings([replica.url], backend, retry={"max_body_bytes": 0})) as client:
        response = await client.post("svc", "/upload", content=upload())
        assert response.status_code == 200
        async with client.stream("GET", "svc", "/download") as streamed:
            body = b"".join([chunk async for chunk in streamed.aiter_bytes()])
        stats = client.get_metrics()["load_balancer"]["svc"]["endpoints"][0]
    assert replica.bodies[0] == b"abcdef"
    assert b'"path": "/download"' in body
    assert stats["in_flight"] == 0


# -------------------------------------------------------------------------------------- timeouts, errors


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_silent_replica_is_a_read_timeout(fleet: Fleet, backend: str) -> None:
    """No answer within the read timeout raises httpx.ReadTimeout, after about that long."""
    (replica,) = await fleet.start(1)
    replica.mode = "hang"
    pool = _pool(backend)
    start = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await pool.handle_async_request(_request("GET", f"{replica.url}/slow", read=0.2))
    elapsed = time.monotonic() - start
    await pool.aclose()
    assert 0.15 < elapsed < 2.0


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_connect_that_gets_no_answer_is_a_connect_timeout(backend: str) -> None:
    """A listener whose accept queue is full drops the handshake: httpx.ConnectTimeout after the connect
    timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue: later handshakes get no answer
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    pool = _pool(backend)
    try:
        start = time.monotonic()
        with pytest.raises(httpx.ConnectTimeout):
            await pool.handle_async_request(_request("GET", f"http://127.0.0.1:{port}/", connect=0.2))
        assert time.monotonic() - start < 2.0
    finally:
        await pool.aclose()
        for sock in [*fillers, listener]:
            sock.close()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_tls_handshake_that_never_finishes_is_a_connect_timeout(pki: Path, backend: str) -> None:
    """The connect timeout covers the TLS handshake: a server that never answers it gives ConnectTimeout."""
    async with tcp_server(never_speak) as (port, _):
        pool = _pool(backend, mtls=_mtls(pki))
        try:
            with pytest.raises(httpx.ConnectTimeout):
                await pool.handle_async_request(_request("GET", f"https://127.0.0.1:{port}/", connect=0.2))
        finally:
            await pool.aclose()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_refused_connection_is_connect_error_and_a_post_fails_over(fleet: Fleet, backend: str) -> None:
    """A refused connection is httpx.ConnectError ("not sent"): a POST goes on to the next endpoint, and
    the one that answers receives it exactly once per call."""
    refused = f"http://127.0.0.1:{unused_port()}"
    pool = _pool(backend)
    try:
        with pytest.raises(httpx.ConnectError):
            await pool.handle_async_request(_request("POST", f"{refused}/orders"))
    finally:
        await pool.aclose()
    (good,) = await fleet.start(1)
    async with MeshClient(_settings([refused, good.url], backend, retry={"max_retries": 1})) as client:
        responses = [await client.post("svc", "/orders", json={"n": i}) for i in range(4)]
    assert [r.status_code for r in responses] == [200] * 4
    assert good.received[("POST", "/orders")] == 4


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_server_that_hangs_up_after_reading_a_post_gets_it_once(backend: str) -> None:
    """A connection closed after the request was read is RemoteProtocolError, not a connect failure: a POST
    is not sent again, while a GET is retried."""
    async with tcp_server(hang_up_after_request) as (port, heads):
        url = f"http://127.0.0.1:{port}"
        pool = _pool(backend)
        try:
            with pytest.raises(httpx.RemoteProtocolError):
                await pool.handle_async_request(_request("GET", f"{url}/direct"))
        finally:
            await pool.aclose()
        heads.clear()
        async with MeshClient(_settings([url], backend, retry={"max_retries": 2})) as client:
            with pytest.raises(UpstreamUnavailable) as info:
                await client.post("svc", "/orders", json={"n": 1})
            assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)
            assert [head.split(b" ")[0] for head in heads] == [b"POST"]
            heads.clear()
            with pytest.raises(UpstreamUnavailable):
                await client.get("svc", "/users")
    assert [head.split(b" ")[0] for head in heads] == [b"GET"] * 3


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_body_cut_short_is_remote_protocol_error(fleet: Fleet, backend: str) -> None:
    """A connection that drops mid-body fails while the attempt layer reads it, as httpx.RemoteProtocolError."""
    (replica,) = await fleet.start(1)
    replica.mode = "drop"
    async with MeshClient(_settings([replica.url], backend, retry={"max_retries": 0})) as client:
        with pytest.raises(UpstreamUnavailable) as info:
            await client.get("svc", "/users")
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_deadline_caps_the_read_timeout(fleet: Fleet, backend: str) -> None:
    """A call's deadline reaches the backend as its read timeout: a hanging replica ends the call in time."""
    (replica,) = await fleet.start(1)
    replica.mode = "hang"
    async with MeshClient(_settings([replica.url], backend)) as client:
        start = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            await client.get("svc", "/slow", deadline=0.3)
    assert time.monotonic() - start < 2.0


# --------------------------------------------------------------------------------------------------- TLS


@pytest.mark.parametrize("backend", BACKENDS)
async def test_https_with_mtls_verifies_the_server_and_presents_the_client_certificate(
    fleet: Fleet, pki: Path, backend: str
) -> None:
    """With mTLS on, the server (which requires a client certificate from the mesh CA) answers."""
    (replica,) = await fleet.start(
        1,
        ssl_certfile=str(pki / "server" / "tls.crt"),
        ssl_keyfile=str(pki / "server" / "tls.key"),
        ssl_ca_certs=str(pki / "ca.crt"),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
    )
    async with MeshClient(_settings([replica.url], backend, mtls=_mtls(pki))) as client:
        responses = [await client.get("svc", "/secure") for _ in range(3)]
    assert replica.url.startswith("https://")
    assert [r.status_code for r in responses] == [200] * 3


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_server_certificate_from_another_ca_is_refused_before_sending(
    fleet: Fleet, pki: Path, backend: str
) -> None:
    """A server whose certificate the mesh CA did not sign fails the handshake: ConnectError, nothing sent
    (so even a POST would move on)."""
    (replica,) = await fleet.start(
        1, ssl_certfile=str(pki / "other-server" / "tls.crt"), ssl_keyfile=str(pki / "other-server" / "tls.key")
    )
    pool = _pool(backend, mtls=_mtls(pki))
    try:
        with pytest.raises(httpx.ConnectError, match=r"(?i)certificate"):
            await pool.handle_async_request(_request("POST", f"{replica.url}/orders"))
    finally:
        await pool.aclose()
    assert replica.total == 0


async def test_http2_is_offered_in_the_tls_handshake_with_httpcore(pki: Path) -> None:
    """``connection.http2`` makes the httpcore backend offer h2 by ALPN; without it only HTTP/1.1 is offered."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(pki / "server" / "tls.crt", pki / "server" / "tls.key")
    server_context.set_alpn_protocols(["h2", "http/1.1"])
    chosen: list[str | None] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heads: list[bytes]) -> None:
        chosen.append(writer.get_extra_info("ssl_object").selected_alpn_protocol())

    async with tcp_server(record, ssl=server_context) as (port, _):
        for http2 in (True, False):
            settings = MeshSettings(connection={"backend": "httpcore", "http2": http2}, mtls=_mtls(pki))
            pool = build_connection_pool(settings)
            try:
                with pytest.raises(httpx.TransportError):  # the recorder hangs up after the handshake
                    await pool.handle_async_request(_request("GET", f"https://127.0.0.1:{port}/"))
            finally:
                await pool.aclose()
    assert chosen == ["h2", "http/1.1"]


# ------------------------------------------------------------------------------------------------ proxy


@pytest.mark.parametrize("backend", BACKENDS)
async def test_calls_go_through_the_configured_egress_proxy(fleet: Fleet, backend: str) -> None:
    """With ``connection.proxy`` every call is sent to the proxy, in absolute form, not to the endpoint."""
    target, proxy = await fleet.start(2)
    async with MeshClient(_settings([target.url], backend, connection={"proxy": proxy.url})) as client:
        response = await client.get("svc", "/users")
    assert response.json()["replica"] == proxy.name
    assert (target.total, proxy.total) == (0, 1)


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``*_PROXY`` variable from the environment the tests run in."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_proxy_env")
@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_environment_proxy_is_used_only_with_trust_env(
    fleet: Fleet, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY is ignored unless ``trust_env`` is on; NO_PROXY still exempts a host."""
    target, proxy = await fleet.start(2)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    for trust_env, via_proxy in ((False, 0), (True, 1)):
        settings = _settings([target.url], backend, connection={"trust_env": trust_env})
        async with MeshClient(settings) as client:
            await client.get("svc", "/users")
        assert proxy.total == via_proxy
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    async with MeshClient(_settings([target.url], backend, connection={"trust_env": True})) as client:
        await client.get("svc", "/users")
    assert (target.total, proxy.total) == (2, 1)


@pytest.mark.usefixtures("no_proxy_env")
def test_no_proxy_matches_hosts_domains_and_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    """NO_PROXY entries cover the host, its subdomains, and addresses inside a listed network."""
    monkeypatch.setenv("HTTP_PROXY", "proxy:3128")
    monkeypatch.setenv("NO_PROXY", "example.com, .internal,10.0.0.0/8,[::1]")
    assert ProxyChooser(None, trust_env=False).for_origin("http", "example.org", 80) is None
    chooser = ProxyChooser(None, trust_env=True)
    assert chooser.for_origin("http", "api.example.com", 80) is None
    assert chooser.for_origin("http", "db.internal", None) is None
    assert chooser.for_origin("http", "10.2.3.4", 8080) is None
    assert chooser.for_origin("http", "::1", 8080) is None
    assert chooser.for_origin("http", "example.org", 80) == "http://proxy:3128"
    assert chooser.for_origin("http", "11.0.0.1", 80) == "http://proxy:3128"
    assert chooser.for_origin("https", "example.org", 443) is None  # no HTTPS_PROXY, no ALL_PROXY


# --------------------------------------------------------------------------------------------- settings


def test_backend_and_options_are_validated_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """http2 with a backend that cannot do it, a proxy that is not an http(s) URL, an unknown backend: each
    fails at start-up naming the field; the backend can come from MESH_CONNECTION__BACKEND."""
    with pytest.raises(ValidationError, match=r"connection\.http2\n.*needs backend 'httpcore'"):
        MeshSettings(connection={"backend": "aiohttp", "http2": True})
    with pytest.raises(ValidationError, match=r"connection\.proxy\n.*socks5://p:1080"):
        MeshSettings(connection={"proxy": "socks5://p:1080"})
    with pytest.raises(ValidationError, match=r"connection\.proxy\n.*'http://ada:\*\*\*@p:3128/x'.*no path"):
        MeshSettings(connection={"proxy": "http://ada:secret@p:3128/x"})
    shown = MeshSettings(connection={"proxy": "http://ada:secret@p:3128"}).model_dump(mode="json")
    assert "secret" not in str(shown["connection"])
    with pytest.raises(ValidationError, match=r"connection\.backend"):
        MeshSettings(connection={"backend": "curl"})
    monkeypatch.setenv("MESH_CONNECTION__BACKEND", "httpcore")
    assert MeshSettings().connection.backend == "httpcore"
    assert isinstance(build_connection_pool(MeshSettings()), PerOriginTransport)
    monkeypatch.setenv("MESH_CONNECTION__BACKEND", "aiohttp")
    assert isinstance(build_connection_pool(MeshSettings()), AiohttpTransport)


# ------------------------------------------------------------------------------------- pools and closing


async def test_per_origin_pools_are_made_on_first_use_and_dropped_when_unused(fleet: Fleet) -> None:
    """The httpcore backend opens a pool for an origin at its first request; a sweep (at most once per
    keep-alive interval, when a new origin comes) closes the pools that saw no request since the last one."""
    a, b, c, d, e = await fleet.start(5)
    now = [0.0]
    pool = PerOriginTransport(
        ssl_context=ssl.create_default_context(),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=10, keepalive_expiry=10.0),
        clock=lambda: now[0],
    )

    async def get(replica: Replica) -> None:
        response = await pool.handle_async_request(_request("GET", f"{replica.url}/"))
        await response.aread()

    try:
        assert pool.origins() == []
        await get(a)
        assert pool.origins() == [a.url]
        await get(b)
        now[0] += 10.0  # a keep-alive interval later
        await get(c)  # first sweep: a and b had requests, both stay
        assert pool.origins() == [a.url, b.url, c.url]
        await get(a)
        now[0] += 10.0  # a keep-alive interval later
        await get(d)  # second sweep: b had none since the first, c had its first
        assert pool.origins() == [a.url, c.url, d.url]
        now[0] += 10.0  # a keep-alive interval later
        await get(e)  # third sweep: only d had a request since the second
        assert pool.origins() == [d.url, e.url]
    finally:
        await pool.aclose()
    assert pool.origins() == []


async def test_the_aiohttp_backend_binds_nothing_before_its_first_request(fleet: Fleet) -> None:
    """Its session is made on the first request, on the running loop, and gone after aclose."""
    (replica,) = await fleet.start(1)
    pool = _pool("aiohttp")
    assert isinstance(pool, AiohttpTransport) and pool.session is None
    response = await pool.handle_async_request(_request("GET", f"{replica.url}/"))
    await response.aread()
    assert pool.session is not None
    await pool.aclose()
    assert pool.session is None
    with pytest.raises(RuntimeError, match="closed"):
        await pool.handle_async_request(_request("GET", f"{replica.url}/"))


@pytest.mark.parametrize("backend", BACKENDS)
async def test_aclose_closes_every_connection_without_resource_warnings(fleet: Fleet, backend: str) -> None:
    """After calls on many connections to three replicas, aclose gives every descriptor back and leaves
    nothing for the garbage collector to warn about."""
    replicas = await fleet.start(3)
    gc.collect()
    baseline = _fds()
    async with MeshClient(_settings([r.url for r in replicas], backend)) as client:
        await asyncio.gather(*(client.get("svc", f"/{i}") for i in range(30)))
        assert _fds() > baseline + 6  # connections are open (client and server ends)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        after = await _settle_fds(baseline)
        gc.collect()
    assert after <= baseline
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_no_descriptor_leaks_across_many_calls_with_a_replica_restarting(fleet: Fleet, backend: str) -> None:
    """1,200 calls at concurrency 8 while replicas restart on their ports: every call gets an answer and the
    descriptor count ends where it began (within the pooled connections)."""
    replicas = [PinnedReplica(f"p{i}") for i in range(3)]
    for replica in replicas:
        await replica.start()
    fleet.replicas.extend(replicas)
    settings = _settings(
        [r.url for r in replicas], backend, retry={"max_retries": 3}, outlier_detection={"enabled": False}
    )
    async with MeshClient(settings) as client:
        await asyncio.gather(*(client.get("svc", "/warm") for _ in range(16)))
        before = _fds()
        statuses: list[int] = []

        async def caller(count: int) -> None:
            for _ in range(count):
                statuses.append((await client.get("svc", "/users")).status_code)

        async def restart(victim: Replica) -> None:
            await asyncio.sleep(0.05)  # in the middle of the round's calls
            await victim.stop()
            await victim.start()

        for round_ in range(4):
            await asyncio.gather(*(caller(300 // 8) for _ in range(8)), restart(replicas[round_ % 3]))
        peak = _fds()
        after = await _settle_fds(before)
    assert statuses == [200] * len(statuses) and len(statuses) == 4 * 8 * (300 // 8)
    assert peak < before + 64
    assert after <= before
