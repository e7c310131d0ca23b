"""A call with auth (its own ``auth=`` or the client's), redirects to follow, or event hooks: driven over
the stack as ``httpx.AsyncClient.send`` drives it, hop by hop (``MeshClient`` sends any other call straight
to the stack, ``Runtime.send``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from .context import EXTENSION, CallContext
from .options import CookieTypes
from .redirects import MAX_REDIRECTS, within

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["Hops", "send_with_client"]


async def send_with_client(
    rt: Runtime, request: httpx.Request, auth: httpx.Auth | None, follow: bool, cookies: CookieTypes, *, stream: bool
) -> httpx.Response:
    """``request`` with the client machinery ``httpx.AsyncClient.send`` has, driven here over the stack as
    httpx drives it: the auth flow outermost, the redirect loop inside it, event hooks around each request
    sent. Each request after the first (an auth step, a followed redirect) is a new hop through the stack,
    with attempts of its own; the deadline is shared.

    Redirects are followed only within the service (to its logical address or one of its endpoints), up to
    ``MAX_REDIRECTS``; a redirect anywhere else is returned unfollowed, with its ``next_request``, as the mesh
    can only send to the service's endpoints. httpx builds each redirect request (method change on 301/302/
    303, body dropped with the method, ``Authorization`` dropped for another origin, which the service's
    addresses are not to each other: within the service it is kept). A cookie jar of the call's own holds
    its ``cookies=`` and what the hops set, for the next hop of that call only (a login redirect works), and
    is gone with the call, so nothing reaches another caller's calls."""
    hops = Hops(rt, request, follow, cookies, stream)
    if auth is None:
        return await hops.send(request, [])
    flow = auth.async_auth_flow(request)
    history: list[httpx.Response] = []
    try:
        request = await flow.__anext__()
        while True:
            response = await hops.send(request, history)
            try:
                try:
                    following = await flow.asend(response)
                except StopAsyncIteration:
                    return response
                response.history = list(history)
                await response.aread()
                history.append(response)
                request = hops.next_step(following)
            except BaseException:
                await response.aclose()
                raise
    finally:
        await flow.aclose()


class Hops:
    """One call's requests through the stack: redirect hops followed, hooks run, the call's cookie jar."""

    __slots__ = ("cookies", "ctx", "extensions", "follow", "jar", "rt", "stream")

    def __init__(self, rt: Runtime, request: httpx.Request, follow: bool, cookies: CookieTypes, stream: bool) -> None:
        self.rt = rt
        self.extensions = request.extensions
        self.ctx: CallContext = request.extensions[EXTENSION]
        self.follow = follow
        self.cookies = cookies
        self.jar: httpx.Cookies | None = None  # made when a followed hop needs it (cookies to send or set)
        self.stream = stream

    def next_step(self, request: httpx.Request) -> httpx.Request:
        """A request an auth flow yields after the first: a new hop (the same request changed, usually; a new
        one gets the call's context and timeouts)."""
        if EXTENSION not in request.extensions:
            request.extensions = {**self.extensions, **request.extensions}
        self.ctx.new_hop()
        return request

    async def send(self, request: httpx.Request, history: list[httpx.Response]) -> httpx.Response:
        """As httpx's redirect loop: hooks, send, and while a redirect within the service is to be followed,
        read it and send the next request."""
        rt = self.rt
        hooks = rt.hooks
        while True:
            if hooks is not None:
                for hook in hooks[0]:
                    await hook(request)
            response = await rt.send(request, stream=self.stream)
            try:
                if hooks is not None:
                    for hook in hooks[1]:
                        await hook(response)
                if history:
                    response.history = list(history)
                following = response.next_request
                if following is None or not self.follow or not within(self.ctx.service, following.url):
                    return response
                if len(history) >= MAX_REDIRECTS:
                    raise httpx.TooManyRedirects("Exceeded maximum allowed redirects.", request=following)
                credentials = request.headers.get("authorization")
                if credentials is not None and "authorization" not in following.headers:
                    # httpx dropped it for another endpoint's address; the service is one origin
                    following.headers["authorization"] = credentials
                jar = self.jar
                if "set-cookie" in response.headers or (jar is None and self.cookies):
                    if jar is None:
                        jar = self.jar = httpx.Cookies(self.cookies)
                    jar.extract_cookies(response)
                if jar:  # an empty jar would add nothing: skip the cookie machinery
                    jar.set_cookie_header(following)
                await response.aread()  # a streamed hop: read (which closes it and frees its slots)
            except BaseException:
                await response.aclose()  # a body that failed to arrive still gives its slots back
                raise
            history = [*history, response]
            self.ctx.new_hop()
            request = following
