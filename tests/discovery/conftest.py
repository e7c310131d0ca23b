"""Fixtures for the discovery tests: the real servers the backends talk to."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.discovery.dnsmasq import MISSING, Dnsmasq, find_dnsmasq

# ------------------------------------------------------------------------------------------------ dnsmasq


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture
async def dnsmasq(tmp_path: Path) -> AsyncIterator[Dnsmasq]:
    """A real dnsmasq on 127.0.0.1 (not started yet: ``await dnsmasq.start(records)``), stopped at the end.

    Without dnsmasq installed the test fails on CI (``CI=true``) and is skipped elsewhere, saying how to get it.
    """
    if find_dnsmasq() is None:
        if _on_ci():
            pytest.fail(MISSING, pytrace=False)
        pytest.skip(MISSING)
    server = Dnsmasq(tmp_path)
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(), timeout=10)
