"""The app the graceful-shutdown tests run under a real uvicorn process (settings from MESH_* variables)."""

import asyncio

from fastapi import FastAPI

from fastapi_mesh import Mesh

mesh = Mesh()
app = FastAPI(lifespan=mesh.lifespan)
app.include_router(mesh.router)


@app.get("/slow")
async def slow(seconds: float = 1.0) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}
