"""The ``aiohttp`` backend: aiohttp's connector and C response parser under the httpx interface.

aiohttp's failures become httpx's own exceptions, chosen as httpcore would raise them in the same
situation, because the retry layer decides from the type whether a request may have left:

==========================================  ===============================  ==========================
aiohttp                                     httpx                            request sent?
==========================================  ===============================  ==========================
``ConnectionTimeoutError``                  ``ConnectTimeout``               no
``ClientConnectorError`` (refused, DNS,     ``ConnectError``                 no
TLS handshake, certificate, proxy connect)
``ClientHttpProxyError`` (CONNECT refused)  ``ProxyError``                   no
``SocketTimeoutError``                      ``ReadTimeout``                  maybe
``ServerDisconnectedError``                 ``RemoteProtocolError``          maybe
``ClientPayloadError`` (body cut short)     ``RemoteProtocolError``          yes
``ClientResponseError`` (malformed answer)  ``RemoteProtocolError``          yes
``ClientConnectionResetError``              ``WriteError``                   maybe
other ``ClientConnectionError`` / OS errors ``ReadError``                    maybe
``InvalidURL``                              ``UnsupportedProtocol``          no
==========================================  ===============================  ==========================
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
from yarl import URL

if TYPE_CHECKING:
    from .proxy import ProxyChooser
    from .tls import ClientTLS, ExpectedIdentities

__all__ = ["AiohttpTransport", "translate_error"]

#: httpcore (h11) accepts a response head of up to 100 KiB; aiohttp's default line limit is 8 KiB.
_MAX_HEAD = 100 * 1024
#: aiohttp rounds timeouts of at least this many seconds up to a whole second; httpx does not round.
_NO_ROUNDING = 1e9
#: Origins whose proxy is remembered at most.
_MAX_REMEMBERED = 4096
#: Headers aiohttp would add on its own: the request sends exactly the headers httpx built.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


def translate_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError | None:
    """The httpx exception httpcore raises where aiohttp raised ``exc`` (None: not a transport failure)."""
    message = str(exc) or type(exc).__name__
    kind: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(exc, aiohttp.ClientHttpProxyError):
        kind = httpx.ProxyError
    elif isinstance(exc, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    elif isinstance(exc, aiohttp.ServerTimeoutError):  # SocketTimeoutError: no byte within the read timeout
        kind = httpx.ReadTimeout
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        kind, message = httpx.RemoteProtocolError, "Server disconnected without sending a response."
    elif isinstance(exc, aiohttp.ClientPayloadError):
        kind = httpx.RemoteProtocolError
    elif isinstance(exc, aiohttp.ClientConnectionResetError):
        kind = httpx.WriteError
    elif isinstance(exc, aiohttp.ClientResponseError):
        kind = httpx.RemoteProtocolError
    elif isinstance(exc, TimeoutError):  # aiohttp raises its own subclasses; a bare one is a read timeout
        kind = httpx.ReadTimeout
    elif isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        kind = httpx.UnsupportedProtocol
    elif isinstance(exc, aiohttp.ClientConnectionError | OSError):
        kind = httpx.ReadError
    elif isinstance(exc, aiohttp.ClientError):
        kind = httpx.RemoteProtocolError
    else:
        return None
    return kind(message, request=request)


class _Body(httpx.AsyncByteStream):
    """An aiohttp response body as an httpx stream; closing it gives the connection back (or closes it
    when the body was not read to the end)."""

    __slots__ = ("_request", "_response")

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (aiohttp.ClientError, OSError) as exc:
            translated = translate_error(exc, self._request)
            if translated is None:  # pragma: no cover - every ClientError and OSError translates
                raise
            raise translated from exc

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Connection layer on aiohttp: one ``ClientSession`` (made on first use, on the running loop) whose
    connector keeps a pool per origin, with no connection cap and ``limits.keepalive_expiry`` for idle
    connections. Keeps no cookies, follows no redirects, decodes no body (httpx does, on the response),
    sends the request's headers as httpx built them, and retries nothing a non-idempotent request sent.

    Per-attempt timeouts come from the request's ``timeout`` extension: ``connect`` bounds connecting and
    the TLS handshake, ``read`` each wait for data (as httpcore); there is no pool wait to bound, and
    aiohttp has no write timeout.

    With ``tls`` (mTLS), ``https`` requests connect with its current context and check the server's
    identity in the handshake; services expecting different identities get connectors of their own.

    >>> import ssl
    >>> transport = AiohttpTransport(ssl_context=ssl.create_default_context())
    >>> transport.session is None  # nothing binds to a loop before the first request
    True
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        limits: httpx.Limits | None = None,
        proxies: ProxyChooser | None = None,
        tls: ClientTLS | None = None,
    ) -> None:
        self._ssl_context = ssl_context
        self._keepalive_expiry = (limits or httpx.Limits()).keepalive_expiry
        self._proxies = proxies
        self._proxy_of: dict[tuple[str, str, int | None], str | None] = {}
        self._tls = tls
        #: The session for plain requests and for services expecting the default identities.
        self.session: aiohttp.ClientSession | None = None
        #: Sessions for services expecting other identities, one per set (their connections stay apart).
        self._partitions: dict[ExpectedIdentities, aiohttp.ClientSession] = {}
        self._closed = False

    def _open(self, expected: ExpectedIdentities | None = None) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the connection pool is closed")
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=0,
            ssl=self._ssl_context if self._tls is None else self._tls.context,
            keepalive_timeout=self._keepalive_expiry if self._keepalive_expiry is not None else 30.0,
            timeout_ceil_threshold=_NO_ROUNDING,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            auto_decompress=False,
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None, ceil_threshold=_NO_ROUNDING),
            max_line_size=_MAX_HEAD,
            max_field_size=_MAX_HEAD,
        )
        # aiohttp sends an idempotent request a second time when the connection closes before an answer;
        # retries are the retry layer's (budget, backoff, another endpoint), so each attempt is sent once.
        if hasattr(session, "_retry_connection"):
            session._retry_connection = False
        if expected is None:
            self.session = session
        else:
            self._partitions[expected] = session
        return session

    def _proxy(self, url: httpx.URL) -> str | None:
        if self._proxies is None:
            return None
        key = (url.scheme, url.host, url.port)
        try:
            return self._proxy_of[key]
        except KeyError:
            if len(self._proxy_of) >= _MAX_REMEMBERED:  # endpoints come and go: start over, never grow
                self._proxy_of.clear()
            proxy = self._proxy_of[key] = self._proxies.for_origin(*key)
            return proxy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        tls = self._tls
        proxy = self._proxy(request.url)
        if tls is not None and request.url.scheme == "https":
            return await self._handle_tls(request, tls, proxy)
        return await self._send(self.session or self._open(), request, True, proxy)

    async def _handle_tls(self, request: httpx.Request, tls: ClientTLS, proxy: str | None) -> httpx.Response:
        context, expected, token = tls.enter(request, URL(proxy).host if proxy is not None else None)
        try:
            if expected is tls.default:
                session = self.session or self._open()
            else:
                session = self._partitions.get(expected) or self._open(expected)
            return await self._send(session, request, context, proxy)
        except httpx.ConnectError as exc:
            mismatch = tls.mismatch(exc, request)
            if mismatch is None:
                raise
            raise mismatch from exc
        finally:
            tls.leave(token)

    async def _send(
        self,
        session: aiohttp.ClientSession,
        request: httpx.Request,
        ssl_option: ssl.SSLContext | bool,
        proxy: str | None,
    ) -> httpx.Response:
        timeouts = request.extensions.get("timeout") or {}
        connect = timeouts.get("connect")
        stream = request.stream
        headers = request.headers.multi_items()
        chunked: bool | None = None
        if "transfer-encoding" in request.headers:  # aiohttp frames the body itself: tell it how, not twice
            chunked = "chunked" in request.headers["transfer-encoding"].lower()
            headers = [(k, v) for k, v in headers if k != "transfer-encoding"]
        data: Any
        if isinstance(stream, httpx.ByteStream):
            try:
                data = request.content or None
            except httpx.RequestNotRead:  # a body buffered into a new stream (the retry layer does that)
                data = b"".join([chunk async for chunk in stream]) or None
        else:  # a streamed upload
            data = _chunks(stream)
        try:
            response = await session.request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=headers,
                data=data,
                chunked=chunked,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=connect,
                    sock_connect=connect,
                    sock_read=timeouts.get("read"),
                    ceil_threshold=_NO_ROUNDING,
                ),
                proxy=proxy,
                ssl=ssl_option,
                server_hostname=request.extensions.get("sni_hostname"),
            )
        except (aiohttp.ClientError, OSError) as exc:
            translated = translate_error(exc, request)
            if translated is None:  # pragma: no cover - every ClientError and OSError translates
                raise
            raise translated from exc
        version = response.version
        extensions: dict[str, Any] = {
            "http_version": b"HTTP/%d.%d" % (version.major, version.minor) if version else b"HTTP/1.1"
        }
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("ascii", "replace")
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_Body(response, request),
            extensions=extensions,
        )

    async def aclose(self) -> None:
        self._closed = True
        session, self.session = self.session, None
        partitions, self._partitions = self._partitions, {}
        for open_session in (session, *partitions.values()):
            if open_session is not None:
                await open_session.close()


async def _chunks(stream: Any) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield chunk
