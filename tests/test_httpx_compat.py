"""The httpx internals the mesh relies on (``fastapi_mesh._httpx_compat``): each shortcut gives what httpx's
public API gives."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastapi_mesh._httpx_compat import with_target

ORIGINS = ["http://svc", "http://User-Service", "https://10.0.0.1:8443", "http://[::1]:8080", "http://ada:pw@host"]
#: Characters httpx treats differently by URL part: delimiters, characters it encodes, dots, percent signs,
#: control characters and non-ASCII.
CHARACTERS = st.sampled_from([*list("az09/-._~?#&=%+;:@!$'()*,[]|^`{}<>\"\\ \t\x00\x7fé☃"), "%2F", "%zz", "/..", "/."])


def parse(text: str) -> httpx.URL | Exception:
    try:
        return httpx.URL(text)
    except httpx.InvalidURL as exc:
        return exc


@settings(max_examples=600, deadline=None)
@given(origin=st.sampled_from(ORIGINS), rest=st.lists(CHARACTERS, max_size=24).map("".join))
@example(origin="http://svc", rest="api/items/42?page=2&q=a%20b#top")
@example(origin="http://svc", rest="a/../b")
@example(origin="http://svc", rest="a b?x=<y>")
def test_a_joined_target_is_the_url_httpx_parses(origin: str, rest: str) -> None:
    """Whenever ``with_target`` answers, it is exactly the URL httpx makes of the whole text (the same parsed
    reference, the same text); when httpx would encode, normalize or refuse something, it does not answer."""
    target = "/" + rest
    joined = with_target(httpx.URL(origin), origin, target)
    expected = parse(origin + target)
    if joined is None:
        return
    assert isinstance(expected, httpx.URL), f"httpx refuses {origin + target!r}: {expected}"
    assert joined._uri_reference == expected._uri_reference
    assert str(joined) == str(expected)
    assert joined == expected


@pytest.mark.parametrize(
    "target",
    ["/", "/api/items/42", "/api/items?page=2&sort=-name", "/search?q=a%20b&tags[]=x#results", "/v1.2/x:y@z"],
)
def test_the_targets_of_ordinary_calls_take_the_short_way(target: str) -> None:
    """Paths and queries as applications write them are joined without a whole parse."""
    joined = with_target(httpx.URL("http://svc"), "http://svc", target)
    assert joined is not None
    assert joined == httpx.URL("http://svc" + target)


@pytest.mark.parametrize(
    "target", ["/a b", "/a/../b", "/./a", "/é", "/a?q=<x>", "/a#`x`", "/bad\x00path", "/" + "x" * 70_000]
)
def test_what_httpx_would_change_or_refuse_is_left_to_httpx(target: str) -> None:
    """Spaces, dot segments, non-ASCII, characters a part encodes, control characters, overlong URLs: no
    short answer, so the caller's whole parse encodes or refuses them as httpx always does."""
    assert with_target(httpx.URL("http://svc"), "http://svc", target) is None
