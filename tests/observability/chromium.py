"""Headless Chromium driven over the DevTools protocol (a websocket), enough to load a page, read its DOM
and take a screenshot. Every wait is bounded."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

START_TIMEOUT = 20.0
COMMAND_TIMEOUT = 10.0
#: How long a condition on the page may take: generous, as the browser, the demo and its traffic share a
#: small machine with whatever else runs (a wait ends as soon as the condition holds).
WAIT_TIMEOUT = 30.0


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    return None


class Page:
    """One browser tab."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._id = 0

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        call = self._id
        await self._socket.send_json({"id": call, "method": method, "params": params})
        async with asyncio.timeout(COMMAND_TIMEOUT):
            while True:
                message = await self._socket.receive()
                if message.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"DevTools connection ended: {message.type!r}")
                answer = json.loads(message.data)
                if answer.get("id") == call:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    result: dict[str, Any] = answer["result"]
                    return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = WAIT_TIMEOUT) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        async with asyncio.timeout(timeout):
            while True:
                value = await self.evaluate(expression)
                if value:
                    return value
                await asyncio.sleep(0.05)

    async def goto(self, url: str) -> None:
        """Load ``url`` and wait until its document has loaded."""
        await self.send("Page.navigate", url=url)
        await self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    async def screenshot(self, path: Path) -> None:
        result = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(result["data"]))


@contextlib.asynccontextmanager
async def chromium_page(width: int = 1280, height: int = 860) -> AsyncIterator[Page]:
    """A headless Chromium with one blank tab of ``width`` x ``height``; stopped at the end."""
    binary = find_chromium()
    if binary is None:
        raise RuntimeError("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:  # Chromium may still be writing
        process = await asyncio.create_subprocess_exec(
            binary,
            "--headless",
            "--no-sandbox",  # as root in a container
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            active = Path(profile) / "DevToolsActivePort"
            async with asyncio.timeout(START_TIMEOUT):
                while not active.exists() or len(active.read_text().split()) < 2:
                    if process.returncode is not None:
                        raise RuntimeError(f"chromium exited with {process.returncode}")
                    await asyncio.sleep(0.05)
            port = active.read_text().split()[0]
            async with aiohttp.ClientSession() as session:
                async with asyncio.timeout(START_TIMEOUT):
                    while True:
                        async with session.get(f"http://127.0.0.1:{port}/json/list") as answer:
                            targets = await answer.json()
                        pages = [t for t in targets if t.get("type") == "page"]
                        if pages:
                            break
                        await asyncio.sleep(0.05)
                async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                    page = Page(socket)
                    await page.send("Page.enable")
                    await page.send("Runtime.enable")
                    await page.send(
                        "Emulation.setDeviceMetricsOverride",
                        width=width,
                        height=height,
                        deviceScaleFactor=1,
                        mobile=False,
                    )
                    yield page
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), timeout=10)
                except TimeoutError:
                    process.kill()
                    await process.wait()
