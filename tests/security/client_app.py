"""The app the client-side mTLS tests call, under ``fastapi-mesh serve`` or plain uvicorn (plain ASGI, so a
server starts quickly).

``/whoami`` answers the caller's SPIFFE ID (None where the server gives no TLS extension), ``/slow?seconds=``
answers after that long, ``/count`` how many requests other than ``/count`` arrived so far.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs

received = 0


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global received
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    path = scope["path"]
    if path == "/count":
        answer: dict[str, Any] = {"received": received}
    else:
        received += 1
        if path == "/slow":
            query = parse_qs(scope["query_string"].decode())
            await asyncio.sleep(float(query.get("seconds", ["0.5"])[0]))
        identity = None
        if (scope.get("extensions") or {}).get("tls"):
            from fastapi_mesh.security.identity import identity_of

            identity = identity_of(scope)
        answer = {"path": path, "method": scope["method"], "identity": identity}
    body = json.dumps(answer).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
