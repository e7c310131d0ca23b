"""docs/resilience-patterns.md: its examples run, its settings tables match the code, its retry table is true.

A ```python block whose first line is ``# runnable`` is executed as it stands, in a fresh namespace.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from fastapi_mesh import ManualClock, MeshClient, MeshSettings, UpstreamUnavailable
from fastapi_mesh.settings import POLICY_SECTIONS

pytestmark = pytest.mark.filterwarnings("error")

DOC = Path(__file__).resolve().parent.parent / "docs" / "resilience-patterns.md"
RUNNABLE = "# runnable"
ENVIRONMENTS = ("development", "staging", "production")
DOCUMENTED_SECTIONS = ("circuit_breaker", "outlier_detection", "retry", "bulkhead")
POLICY_ARGUMENTS = ("timeout", "bulkhead", "queue", "fallback")

FENCE = re.compile(r"^(```+|~~~+)([^\n`]*)\n(.*?)^\1[ \t]*$", re.MULTILINE | re.DOTALL)
SETTING_ROW = re.compile(r"^\|\s*`(\w+)\.(\w+)`\s*\|(.*)$", re.MULTILINE)


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _runnable_blocks() -> list[tuple[int, str]]:
    text = _text()
    blocks = []
    for match in FENCE.finditer(text):
        if match.group(2).strip() == "python" and match.group(3).startswith(RUNNABLE + "\n"):
            blocks.append((text.count("\n", 0, match.start(3)) + 1, match.group(3)))
    return blocks


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def _shown(value: Any) -> str:
    """A setting's value as the tables spell it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        if value == list(range(500, 600)):
            return "500\u2013599"
        return "[" + ", ".join(str(v) for v in value) + "]"
    return repr(value)


def _section(name: str, environment: str | None) -> BaseModel:
    if environment is None:
        return POLICY_SECTIONS[name]()
    section: BaseModel = getattr(MeshSettings(environment=environment), name)
    return section


# ---------------------------------------------------------------------------------------------- examples


BLOCKS = _runnable_blocks()


def test_the_page_has_runnable_examples() -> None:
    """The page keeps runnable examples (blocks starting with '# runnable')."""
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize(("line", "source"), BLOCKS, ids=[f"line-{line}" for line, _ in BLOCKS])
def test_runnable_example_executes(line: int, source: str) -> None:
    """A '# runnable' python block executes without error or warning in a fresh namespace."""
    padded = "\n" * (line - 1) + source  # tracebacks point at the line in the Markdown file
    exec(compile(padded, str(DOC), "exec"), {"__name__": f"resilience_docs_example_{line}"})


@pytest.mark.parametrize("argument", POLICY_ARGUMENTS)
def test_each_policy_argument_has_a_worked_example(argument: str) -> None:
    """Each @mesh.policy argument has its own heading followed by a runnable example that uses it."""
    text = _text()
    heading = re.search(rf"^### {argument}\n", text, re.MULTILINE)
    assert heading is not None, f"no '### {argument}' heading"
    following = text[heading.end() :]
    block = next(m for m in FENCE.finditer(following) if m.group(2).strip() == "python")
    assert block.group(3).startswith(RUNNABLE + "\n")
    assert re.search(rf"@mesh\.policy\([^)]*\b{argument}=", block.group(3))


# ------------------------------------------------------------------------------------------------ settings


def test_settings_tables_match_the_code() -> None:
    """Every settings row shows the built-in default and the value in each environment preset."""
    rows = SETTING_ROW.findall(_text())
    assert rows
    wrong = []
    for section, field, rest in rows:
        cells = _cells(rest)
        expected = [_shown(getattr(_section(section, env), field)) for env in (None, *ENVIRONMENTS)]
        shown = [cell.strip("`") for cell in cells[:4]]
        if shown != expected:
            wrong.append(f"{section}.{field}: shows {shown}, the code has {expected}")
    assert not wrong, "\n".join(wrong)


def test_every_setting_of_the_patterns_is_documented() -> None:
    """Each field of the breaker, outlier, retry and bulkhead sections has a row in a settings table."""
    documented = {(section, field) for section, field, _ in SETTING_ROW.findall(_text())}
    missing = [
        f"{name}.{field}"
        for name in DOCUMENTED_SECTIONS
        for field in POLICY_SECTIONS[name].model_fields
        if (name, field) not in documented
    ]
    assert not missing


# --------------------------------------------------------------------------------------------- retry table


def _retry_table() -> tuple[list[str], list[list[str]]]:
    """The header cells and the rows of the table under '### What is and is not retried'."""
    text = _text()
    start = text.index("### What is and is not retried")
    lines = text[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append(_cells(line))
    return table[0], table[2:]


def _column_requests(header: str) -> list[tuple[str, dict[str, str]]]:
    """The (method, headers) pairs a column of the retry table stands for."""
    if "Idempotency-Key" in header and header.startswith("any method"):
        return [("POST", {"Idempotency-Key": "k"}), ("PATCH", {"Idempotency-Key": "k"})]
    methods = re.findall(r"`([A-Z]+)`", header)
    return [(method, {}) for method in methods]


def _failures(cell: str) -> list[type[Exception] | int]:
    """The httpx exceptions and statuses a row of the retry table names in backticks."""
    found: list[type[Exception] | int] = []
    for token in re.findall(r"`([^`]+)`", cell):
        if token.isdigit():
            found.append(int(token))
        elif isinstance(getattr(httpx, token, None), type) and issubclass(getattr(httpx, token), Exception):
            found.append(getattr(httpx, token))
    return found


async def _attempts(method: str, headers: dict[str, str], failure: type[Exception] | int) -> tuple[int, str]:
    """How many attempts one call makes when every attempt fails with ``failure``, and how it ends."""
    sent = []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if isinstance(failure, int):
            return httpx.Response(failure)
        raise failure("injected", request=request)  # type: ignore[call-arg]

    settings = MeshSettings(
        discovery={"endpoints": {"svc": ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]}},
        retry={"max_retries": 1, "initial_delay": 0, "jitter": "none"},
        circuit_breaker={"enabled": False},
        outlier_detection={"enabled": False},
    )
    async with MeshClient(settings, transport=httpx.MockTransport(upstream), clock=ManualClock()) as client:
        try:
            response = await client.request(method, "svc", "/x", headers=headers, content=b"{}")
        except UpstreamUnavailable:
            return len(sent), "UpstreamUnavailable"
        return len(sent), f"status {response.status_code}"


HEADER, ROWS = _retry_table()
#: Rows that name an upstream failure to inject (the others name errors the mesh raises itself).
CHECKABLE = [(i + 1, row) for i, row in enumerate(ROWS) if _failures(row[0])]


@pytest.mark.parametrize(("number", "row"), CHECKABLE, ids=[f"row-{number}" for number, _ in CHECKABLE])
def test_retry_table_row_matches_behaviour(number: int, row: list[str]) -> None:
    """Each row of 'What is and is not retried' says, per method column, what a call really does."""
    failures = _failures(row[0])
    wrong = []
    for column, cell in enumerate(row[1:], start=1):
        retried = cell.startswith("retried")
        assert retried or cell.startswith("not retried"), cell
        for method, headers in _column_requests(HEADER[column]):
            for failure in failures:
                count, outcome = asyncio.run(_attempts(method, headers, failure))
                name = failure if isinstance(failure, int) else failure.__name__
                if count != (2 if retried else 1):
                    wrong.append(f"{method} {headers or ''} {name}: {count} attempt(s), the table says {cell!r}")
                if not retried and "UpstreamUnavailable" in cell and outcome != "UpstreamUnavailable":
                    wrong.append(f"{method} {name}: ended with {outcome}, the table says {cell!r}")
                if not retried and "response is returned" in cell and outcome != f"status {failure}":
                    wrong.append(f"{method} {name}: ended with {outcome}, the table says {cell!r}")
    assert not wrong, "\n".join(wrong)


def test_retry_table_covers_the_methods_and_most_rows() -> None:
    """The retry table's columns name every idempotent method, and most of its rows can be checked."""
    methods = {method for header in HEADER[1:] for method, _ in _column_requests(header)}
    assert {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "POST", "PATCH"} <= methods
    assert len(CHECKABLE) >= 6
