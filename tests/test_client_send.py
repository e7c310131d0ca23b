"""How MeshClient hands a request to its stack: httpx's request building, without httpx's send machinery."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from fastapi_mesh import MeshClient, MeshSettings, NoHealthyEndpoints, UpstreamUnavailable
from fastapi_mesh.services import URL_CACHE_SIZE

pytestmark = pytest.mark.anyio

SETTINGS = MeshSettings(discovery={"endpoints": {"svc": ["http://10.0.0.1:8080"]}}, retry={"max_retries": 0})


def recording(seen: list[httpx.Request], response: httpx.Response | None = None) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return response if response is not None else httpx.Response(200, json={"n": len(seen)})

    return httpx.MockTransport(handler)


async def test_a_call_carries_httpx_arguments_and_the_response_is_complete() -> None:
    """params, headers, json and per-call cookies reach the upstream; the response is read, with its
    request and elapsed time, as httpx.AsyncClient gives it."""
    seen: list[httpx.Request] = []
    async with MeshClient(SETTINGS, transport=recording(seen)) as client:
        response = await client.post(
            "svc",
            "/orders",
            params={"page": 2},
            headers={"x-tenant": "acme"},
            json={"item": 7},
            cookies={"sid": "abc"},
        )
    sent = seen[0]
    assert str(sent.url) == "http://10.0.0.1:8080/orders?page=2"
    assert sent.headers["host"] == "10.0.0.1:8080"
    assert sent.headers["x-tenant"] == "acme"
    assert sent.headers["cookie"] == "sid=abc"
    assert sent.headers["user-agent"].startswith("python-httpx/")
    assert sent.content == b'{"item":7}'
    assert response.json() == {"n": 1}
    assert response.request is sent
    assert response.is_closed and response.elapsed.total_seconds() >= 0


async def test_cookies_an_upstream_sets_are_never_sent_on_later_calls() -> None:
    """A shared client serves many callers: a Set-Cookie from one call never rides on the next one, on
    the fast path or on the path through httpx's client (``auth=``)."""
    seen: list[httpx.Request] = []
    setter = httpx.Response(200, headers={"set-cookie": "session=alice; Path=/"})
    async with MeshClient(SETTINGS, transport=recording(seen, setter)) as client:
        first = await client.get("svc", "/login")
        await client.get("svc", "/me")
        await client.get("svc", "/me", auth=("u", "p"))
        await client.get("svc", "/me", auth=("u", "p"))
        kept = len(client._rt.http.cookies.jar) if client._rt.http is not None else -1
    assert kept == 0  # nothing remembered, so nothing piles up in a long-lived client either
    assert first.cookies["session"] == "alice"  # the caller can still read what came back
    assert [r.headers.get("cookie") for r in seen] == [None, None, None, None]


async def test_auth_and_redirects_go_through_httpx_client_machinery() -> None:
    """``auth=`` and ``follow_redirects=`` keep their httpx meaning; the redirect is followed through the stack."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/old":
            return httpx.Response(307, headers={"location": "/new"})
        return httpx.Response(200, text=request.url.path)

    async with MeshClient(SETTINGS, transport=httpx.MockTransport(handler)) as client:
        unfollowed = await client.get("svc", "/old")
        followed = await client.get("svc", "/old", follow_redirects=True, auth=("ada", "pw"))
        streamed_status = None
        async with client.stream("GET", "svc", "/old", follow_redirects=True) as response:
            streamed_status = response.status_code
            body = await response.aread()
    assert unfollowed.status_code == 307
    assert (followed.status_code, followed.text) == (200, "/new")
    assert [r.url.path for r in seen] == ["/old", "/old", "/new", "/old", "/new"]
    assert seen[1].headers["authorization"] == seen[2].headers["authorization"] == "Basic YWRhOnB3"
    assert seen[2].url.host == "10.0.0.1"  # the redirect went through the balancer too
    assert (streamed_status, body) == (200, b"/new")


class Chunks(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"one,"
        yield b"two"


async def test_stream_sets_elapsed_when_closed() -> None:
    """``stream()`` gives an unread response; its elapsed time is set when the block closes it."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=Chunks()))
    async with MeshClient(SETTINGS, transport=transport) as client:
        async with client.stream("GET", "svc", "/s") as response:
            assert not response.is_closed
            with pytest.raises(RuntimeError):
                response.elapsed  # noqa: B018 - httpx's rule: only once the response is closed
            assert [chunk async for chunk in response.aiter_raw()] == [b"one,", b"two"]
        assert response.is_closed
        assert response.elapsed.total_seconds() >= 0


async def test_an_unfollowed_redirect_offers_its_next_request() -> None:
    """As with httpx, a 3xx that is not followed carries ``next_request``; other answers carry None."""
    transport = httpx.MockTransport(
        lambda request: httpx.Response(302, headers={"location": "/new"})
        if request.url.path == "/old"
        else httpx.Response(200)
    )
    async with MeshClient(SETTINGS, transport=transport) as client:
        moved = await client.get("svc", "/old")
        plain = await client.get("svc", "/new")
    assert moved.next_request is not None and moved.next_request.url.path == "/new"
    assert plain.next_request is None


async def test_cookies_set_during_a_followed_redirect_chain_are_kept_for_that_chain() -> None:
    """A login-style redirect works: a cookie set by a hop is sent on the next hop of the same call (with
    the call's own cookies), and on no later call."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/login":
            return httpx.Response(302, headers={"location": "/home", "set-cookie": "sid=1; Path=/"})
        return httpx.Response(200)

    async with MeshClient(SETTINGS, transport=httpx.MockTransport(handler)) as client:
        await client.get("svc", "/login", follow_redirects=True, cookies={"lang": "en"})
        await client.get("svc", "/home", follow_redirects=True)
    assert [(r.url.path, r.headers.get("cookie")) for r in seen] == [
        ("/login", "lang=en"),
        ("/home", "lang=en; sid=1"),
        ("/home", None),
    ]


async def test_a_sync_body_is_refused_as_httpx_refuses_it() -> None:
    """An iterator body on an async client gives httpx's RuntimeError, before anything is sent."""
    seen: list[httpx.Request] = []
    async with MeshClient(SETTINGS, transport=recording(seen)) as client:
        with pytest.raises(RuntimeError, match="sync request with an AsyncClient"):
            await client.post("svc", "/x", content=iter([b"a"]))
    assert seen == []


async def test_an_error_raised_inside_the_stack_names_the_callers_request() -> None:
    """``NoHealthyEndpoints`` rises in the balancer; the caller still finds its own request on it."""
    async with MeshClient(SETTINGS, transport=recording([])) as client:
        with pytest.raises(NoHealthyEndpoints) as caught:
            await client.get("unknown-service", "/x")
    assert caught.value.request.url == httpx.URL("http://unknown-service/x")


async def test_a_transport_error_names_its_request() -> None:
    """A failure without a response still carries the request, as httpx's own errors do."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    async with MeshClient(SETTINGS, transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await client.get("svc", "/x")
    assert caught.value.request.url.path == "/x"
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_requests_are_logged_like_httpx_when_info_is_on(caplog: pytest.LogCaptureFixture) -> None:
    """With INFO on for the ``httpx`` logger, each call logs one line there in httpx's own format, on the
    fast path and through httpx's client alike."""
    async with MeshClient(SETTINGS, transport=recording([])) as client:
        await client.get("svc", "/quiet")
        with caplog.at_level(logging.INFO, logger="httpx"):
            await client.get("svc", "/loud")
            await client.get("svc", "/auth", auth=("u", "p"))
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert lines == [
        'HTTP Request: GET http://10.0.0.1:8080/loud "HTTP/1.1 200 OK"',
        'HTTP Request: GET http://10.0.0.1:8080/auth "HTTP/1.1 200 OK"',
    ]


async def test_parsed_urls_are_reused_per_path_and_bounded() -> None:
    """A path is parsed once; with more distinct paths than the cache holds, it starts over."""
    seen: list[httpx.Request] = []
    async with MeshClient(SETTINGS, transport=recording(seen)) as client:
        for path in ("/a?x=1", "/a?x=2", "/a", "/a?x=1"):
            await client.get("svc", path)
        assert [str(r.url) for r in seen] == [f"http://10.0.0.1:8080{p}" for p in ("/a?x=1", "/a?x=2", "/a", "/a?x=1")]
        state = client._rt.services.get("svc")
        assert state.url("/a") is state.url("/a")
        assert state.url("b?x=1") == httpx.URL("http://svc/b?x=1")
        for i in range(URL_CACHE_SIZE + 10):
            state.url(f"/item/{i}")
        assert len(state._urls) <= URL_CACHE_SIZE
        with pytest.raises(httpx.InvalidURL):
            state.url("/bad\x00path")


async def test_stream_counts_and_announces_its_outcome() -> None:
    """``stream()`` emits request-success / request-failure and counts the outcome, like ``request()``."""
    statuses = iter([200, 503])
    transport = httpx.MockTransport(lambda request: httpx.Response(next(statuses), stream=Chunks()))
    seen: list[tuple[str, int | None]] = []
    async with MeshClient(SETTINGS, transport=transport) as client:
        client.on("request-success", lambda e: seen.append(("success", e.status_code)))
        client.on("request-failure", lambda e: seen.append(("failure", e.status_code)))
        for _ in range(2):
            async with client.stream("GET", "svc", "/s"):
                pass
        counts = client.get_metrics()["requests"]["svc"]
    assert seen == [("success", 200), ("failure", 503)]
    assert counts == {"total": 2, "successes": 1, "failures": 1}


async def test_a_call_reaching_a_client_closed_meanwhile_is_refused() -> None:
    """A request that reaches the send step after ``aclose()`` gets a RuntimeError, not a half-closed stack."""
    client = MeshClient(SETTINGS, transport=recording([]))
    await client.initialize()
    assert client._rt.http is not None
    request = client._rt.http.build_request("GET", "http://svc/x")
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client._rt.send(request)
    with pytest.raises(RuntimeError, match="closed"):
        await client.get("svc", "/x")
