"""Shared fixtures: real uvicorn upstream replicas on loopback, with a fault switch."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from tests.upstreams import Fleet

# Settings come only from what each test passes: no MESH_* variable from the environment leaks in.
for _key in [k for k in os.environ if k.upper().startswith("MESH_")]:
    del os.environ[_key]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    """Starts replicas on demand (``await fleet.start(n)``) and stops them all at the end."""
    fleet = Fleet()
    try:
        yield fleet
    finally:
        await asyncio.wait_for(fleet.stop(), timeout=10)
