"""The app the server tests run under ``fastapi-mesh serve`` (settings from MESH_* variables)."""

import asyncio
import os

from fastapi import Depends, FastAPI, Request

from fastapi_mesh import Mesh, peer_identity, require_identity

GATEWAY = "spiffe://cluster.local/ns/default/sa/api-gateway"

mesh = Mesh()
app = FastAPI(lifespan=mesh.lifespan)
app.include_router(mesh.router)


@app.get("/whoami")
async def whoami(request: Request, caller: str | None = Depends(peer_identity)) -> dict[str, object]:
    tls = request.scope.get("extensions", {}).get("tls")
    return {"identity": caller, "tls": tls, "pid": os.getpid()}


@app.get("/orders/{order_id}")
@mesh.policy(allow=[GATEWAY])
async def order(order_id: str) -> dict[str, str]:
    return {"order": order_id}


@app.get("/ops", dependencies=[Depends(require_identity("spiffe://cluster.local/ns/ops/*"))])
async def ops() -> dict[str, str]:
    return {"ops": "ok"}


@app.get("/slow")
async def slow(seconds: float = 1.0) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}
