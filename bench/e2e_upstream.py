"""The upstream replica of the end-to-end benchmark: a Starlette app answering a small JSON body.

Run by ``bench.e2e`` and ``bench.mtls`` as ``python -m uvicorn bench.e2e_upstream:app --port N``, one process
per replica (``BENCH_REPLICA``: its name in the answers).
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

NAME = os.environ.get("BENCH_REPLICA", "replica")


async def users(request: Request) -> JSONResponse:
    return JSONResponse({"replica": NAME, "users": ["ada", "grace"]})


app = Starlette(routes=[Route("/api/users", users)])
