"""/mesh/dashboard in headless Chromium against the running demo: the page loads, shows the demo's services
and their endpoints, and updates as traffic flows and a breaker opens."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from tests.observability.chromium import chromium_page, find_chromium
from tests.observability.demo import running_demo, traffic

pytestmark = pytest.mark.anyio


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture
def chromium() -> None:
    if find_chromium() is None:
        message = "chromium is installed by `make test` (Debian package chromium)"
        if _on_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


CARDS = "[...document.querySelectorAll('[data-service]')].map(c => c.dataset.service)"


def card(service: str, field: str) -> str:
    return f'document.querySelector(\'[data-service="{service}"] [data-field="{field}"]\').textContent'


async def test_dashboard_shows_the_demo_and_updates(chromium: None, tmp_path: Path) -> None:
    async with running_demo() as demo, chromium_page() as page:
        await traffic(demo.gateway, 40)
        await page.goto(f"{demo.gateway}/mesh/dashboard?interval=0.5")
        await page.wait_for("Number(document.body.dataset.updates) >= 1")
        assert await page.evaluate(CARDS) == ["order-service", "user-service"]
        rows = "[...document.querySelectorAll('[data-service=\"user-service\"] tr[data-endpoint]')]"
        assert await page.evaluate(f"{rows}.map(r => r.dataset.state)") == ["healthy"] * 3
        assert await page.evaluate(card("user-service", "breaker")) == "closed"
        assert await page.evaluate("document.getElementById('state').className") == "state"
        routes = "[...document.querySelectorAll('#routes tr[data-route]')].map(r => r.dataset.route)"
        assert "/api/users" in await page.evaluate(routes)

        # Traffic while the page polls: the request rate it shows becomes a number above 0.
        updates = await page.evaluate("Number(document.body.dataset.updates)")
        flowing = asyncio.create_task(traffic(demo.gateway, 100_000, concurrency=2))
        try:
            await page.wait_for(f"Number(document.body.dataset.updates) >= {updates + 2}")
            shown = card("user-service", "rate")
            rate = await page.wait_for(f"parseFloat({shown}) > 0 && {shown}")
        finally:
            flowing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flowing
        assert float(rate) > 0
        assert (await page.evaluate(card("user-service", "p50"))).endswith("ms")

        # An operator forces order-service's breaker open: the next poll shows it.
        demo.mesh.client.circuit_breaker("order-service").force_open()
        assert await page.wait_for(f"{card('order-service', 'breaker')} === 'forced-open' && 'seen'") == "seen"
        screenshot = tmp_path / "dashboard.png"
        await page.screenshot(screenshot)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
