"""Per-call instruction counts of the overhead benchmark's variants, under valgrind's callgrind.

Wall-clock figures on a shared virtual machine move by 10-20% between runs; instruction counts do not, so
they settle what the ratios are. Each variant runs in a fresh interpreter twice, with ``LOW`` and ``HIGH``
calls after the same warm-up; the difference divided by ``HIGH - LOW`` is its cost per call, start-up and
warm-up cancelled out. Needs ``valgrind`` on the PATH (Debian package ``valgrind``); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys

import httpx

from bench.overhead import FLOOR, handler, ratio_table

LOW, HIGH = 300, 1_300
WARM_UP = 200
VARIANTS = ("raw httpx", FLOOR, "mesh, no deadline", "mesh (preset)", "mesh + deadline")


async def _drive(variant: str, calls: int) -> None:
    from bench import observability
    from fastapi_mesh import MeshClient, MeshSettings

    if variant in observability.INSTRUCTION_VARIANTS:
        await observability.drive(variant, WARM_UP + calls)
        return

    mock = httpx.MockTransport(handler)
    endpoints = {"user-service": ["http://10.0.0.1:8080"]}
    retry = {"max_elapsed": None} if variant == "mesh, no deadline" else {}
    settings = MeshSettings(service_name="bench", discovery={"endpoints": endpoints}, retry=retry)
    mesh = MeshClient(settings, transport=mock)
    raw = httpx.AsyncClient(transport=mock)
    await mesh.initialize()

    parsed = httpx.URL("http://10.0.0.1:8080/api/users")

    async def call() -> httpx.Response:
        if variant == "raw httpx":
            return await raw.get("http://10.0.0.1:8080/api/users")
        if variant == FLOOR:
            request = raw.build_request("GET", parsed)
            response = await mock.handle_async_request(request)
            response.request = request
            await response.aread()
            return response
        if variant == "mesh + deadline":
            return await mesh.get("user-service", "/api/users", deadline=5.0)
        return await mesh.get("user-service", "/api/users")

    for _ in range(WARM_UP + calls):
        await call()
    await mesh.aclose()
    await raw.aclose()


def _count(variant: str, calls: int) -> int:
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m", "bench.instructions",
         "--drive", variant, str(calls)],
        capture_output=True, text=True, check=True, timeout=900,
    )
    match = re.search(r"Collected : (\d+)", result.stderr)
    if match is None:
        raise RuntimeError(f"callgrind printed no total:\n{result.stderr[-2000:]}")
    return int(match.group(1))


def run(variants: tuple[str, ...] = VARIANTS) -> dict[str, float] | None:
    """Instructions per call for each of ``variants`` (these of ``bench.overhead``, or
    ``bench.observability.INSTRUCTION_VARIANTS``), or None without valgrind."""
    if shutil.which("valgrind") is None:
        return None
    return {v: (_count(v, HIGH) - _count(v, LOW)) / (HIGH - LOW) for v in variants}


def report(results: dict[str, float] | None) -> str:
    if results is None:
        return "(valgrind is not installed: no instruction counts)"
    return ratio_table(results, "instructions per call", ",.0f")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--drive":
        asyncio.run(_drive(sys.argv[2], int(sys.argv[3])))
    else:
        print(report(run()))
