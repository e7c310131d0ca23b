"""The fast header setter behaves like httpx's own."""

from __future__ import annotations

import httpx
from hypothesis import given
from hypothesis import strategies as st

from fastapi_mesh._httpx_compat import set_header

names = st.sampled_from(["host", "x-mesh-timeout-ms", "accept", "x-other"])


@given(st.lists(st.tuples(names, st.text("abc", max_size=3))), names, st.text("xyz", min_size=1, max_size=3))
def test_set_header_matches_httpx_setitem(initial: list[tuple[str, str]], name: str, value: str) -> None:
    """After set_header the headers read the same as after httpx's own assignment."""
    ours, theirs = httpx.Headers(initial), httpx.Headers(initial)
    set_header(ours, name.encode(), value.encode())
    theirs[name] = value
    assert ours.get_list(name) == theirs.get_list(name) == [value]
    assert sorted(ours.multi_items()) == sorted(theirs.multi_items())


def test_request_host_is_replaced_in_place() -> None:
    """A request's automatic Host header is rewritten without moving it."""
    request = httpx.Request("GET", "http://user-service/api")
    set_header(request.headers, b"host", b"10.0.0.1:8080")
    assert request.headers.raw[0] == (b"Host", b"10.0.0.1:8080")
    assert request.headers.get_list("host") == ["10.0.0.1:8080"]
