"""Take ``docs/img/dashboard.png``: the demo (``python -m example_app``, one user-service replica flaky) under
steady traffic, its ``/mesh/dashboard`` in headless Chromium.

    python scripts/dashboard_screenshot.py [--out docs/img/dashboard.png]

Needs Debian's ``chromium``. The same machinery is tested by ``tests/observability/test_dashboard.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.observability.chromium import chromium_page  # noqa: E402
from tests.observability.demo import running_demo, traffic  # noqa: E402


async def main(out: Path) -> None:
    async with running_demo(flaky=0.3) as demo, chromium_page(width=1280, height=820) as page:
        await traffic(demo.gateway, 200)
        flowing = asyncio.create_task(traffic(demo.gateway, 100_000, concurrency=3))
        try:
            await page.goto(f"{demo.gateway}/mesh/dashboard?interval=0.5")
            await page.wait_for("Number(document.body.dataset.updates) >= 40", timeout=60)
            await page.screenshot(out)
        finally:
            flowing.cancel()
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(args.out))
