"""The documentation: the generated reference is current, links resolve, examples run, drawings match the code.

A ```python block in ``docs/*.md`` whose first line is ``# runnable`` is executed as it stands, in a fresh
namespace; other blocks are illustrations and are not run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import textwrap
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fastapi_mesh import Mesh, MeshSettings, errors, stack
from tests.discovery.scripted import ScriptedDiscovery

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUNNABLE = "# runnable"

FENCE = re.compile(r"^(```+|~~~+)([^\n`]*)\n(.*?)^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _markdown_files() -> list[Path]:
    files = sorted(DOCS.glob("*.md"))
    readme = ROOT / "README.md"
    return [readme, *files] if readme.exists() else files


def _without_code(text: str) -> str:
    """``text`` with fenced blocks and inline code blanked out (links inside code are not links)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return re.sub(r"`+[^`\n]*`+", "", text)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of ``path``."""
    anchors: set[str] = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def _runnable_blocks() -> list[tuple[Path, int, str]]:
    blocks = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(2).strip() == "python" and match.group(3).startswith(RUNNABLE + "\n"):
                line = text.count("\n", 0, match.start(3)) + 1
                blocks.append((path, line, match.group(3)))
    return blocks


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_docs", ROOT / "scripts" / "gen_config_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _drawing(docstring: str | None) -> str:
    """The first ``::`` block of a docstring, dedented."""
    assert docstring
    _, _, rest = docstring.partition("::\n")
    lines = []
    for line in rest.splitlines()[1:] if rest.startswith("\n") else rest.splitlines():
        if line and not line.startswith(" "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip("\n")


def _text_blocks(path: Path) -> list[str]:
    return [m.group(3).rstrip("\n") for m in FENCE.finditer(path.read_text(encoding="utf-8"))]


# -------------------------------------------------------------------------------------------------- tests


def test_configuration_reference_is_up_to_date() -> None:
    """docs/configuration.md is exactly what scripts/gen_config_docs.py generates from the code now."""
    diff = _load_generator().check()
    assert not diff, "docs/configuration.md is out of date; run: python scripts/gen_config_docs.py\n" + "\n".join(
        diff[:80]
    )


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: p.name)
def test_relative_links_point_to_existing_files(path: Path) -> None:
    """Every relative link (and its #anchor, for Markdown targets) in README.md and docs/*.md resolves."""
    text = _without_code(path.read_text(encoding="utf-8"))
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    broken = []
    for target in targets:
        if SCHEME.match(target) or target.startswith("//"):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{path.name}: broken links: {', '.join(broken)}"


def test_architecture_has_runnable_examples() -> None:
    """docs/architecture.md keeps its examples runnable (marked with a first line '# runnable')."""
    assert any(path.name == "architecture.md" for path, _, _ in _runnable_blocks())


@pytest.mark.parametrize(
    ("path", "line", "source"), _runnable_blocks(), ids=[f"{p.name}:{n}" for p, n, _ in _runnable_blocks()]
)
def test_runnable_example_executes(path: Path, line: int, source: str) -> None:
    """A '# runnable' python block of the docs executes without error in a fresh namespace."""
    padded = "\n" * (line - 1) + source  # tracebacks point at the line in the Markdown file
    exec(compile(padded, str(path), "exec"), {"__name__": f"docs_example_{path.stem}_{line}"})


def test_stack_drawing_matches_stack_module() -> None:
    """The layer drawing in docs/architecture.md is the one in fastapi_mesh/stack.py's docstring."""
    assert _drawing(stack.__doc__) in _text_blocks(DOCS / "architecture.md")


def test_error_tree_matches_errors_module() -> None:
    """The error tree in docs/architecture.md is the one drawn in fastapi_mesh/errors.py."""
    assert _drawing(errors.__doc__) in _text_blocks(DOCS / "architecture.md")


def test_metric_table_matches_exposed_metrics() -> None:
    """docs/operations.md lists exactly the mesh_* metrics /metrics exposes, with their labels."""
    mesh = Mesh(
        MeshSettings(discovery={"endpoints": {"users": ["http://10.0.0.1:8080"]}}, bulkhead={"max_concurrent": 8}),
        transport=httpx.MockTransport(lambda request: httpx.Response(200)),
    )

    async def one_call() -> None:
        app = FastAPI()

        @app.get("/api/items/{item_id}")
        @mesh.policy(bulkhead=4)  # a route bulkhead: its series, by route template
        async def item(item_id: int) -> int:
            return item_id

        async with mesh.lifespan(app):
            await mesh.client.get("users", "/")
            mesh.client.circuit_breaker("users").force_open()  # breaker transitions
            mesh.client.circuit_breaker("users").reset()

    asyncio.run(one_call())
    mesh.inbound.observe("GET", "/api/users/{user_id}", 200, 0.01)  # what MeshMiddleware records
    # A background backend adds the discovery series (static discovery has no sync to report).
    synced = Mesh(MeshSettings(), discovery=ScriptedDiscovery())

    async def one_sync() -> None:
        backend = synced.client.discovery
        assert isinstance(backend, ScriptedDiscovery)
        backend.queue("users", ["http://10.0.0.1:8080"])
        async with synced.client:
            async with asyncio.timeout(5):
                while not synced.client._rt.services.get("users").synced:
                    await asyncio.sleep(0.001)

    asyncio.run(one_sync())
    exposed: dict[str, set[str]] = {}
    text = generate_latest(mesh.registry).decode() + generate_latest(synced.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith("mesh_") or sample.name.endswith("_created"):
                continue
            if family.type == "histogram":  # documented as one row: the family, without `le`
                exposed.setdefault(family.name, set()).update(set(sample.labels) - {"le"})
            else:
                exposed.setdefault(sample.name, set()).update(sample.labels)
    documented: dict[str, set[str]] = {}
    for row in (DOCS / "operations.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`mesh_\w+`", cells[0]):
            documented[cells[0].strip("`")] = set(re.findall(r"`(\w+)`", cells[2]))
    assert documented == exposed


def test_deployment_example_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Deployment in docs/operations.md validates strictly; its MESH_* env and probe paths work with a Mesh."""
    import kubernetes_validate
    import yaml

    routes = {getattr(route, "path", None) for route in Mesh(MeshSettings()).router.routes}
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    documents = [
        doc for m in FENCE.finditer(text) if m.group(2).strip() == "yaml" for doc in yaml.safe_load_all(m.group(3))
    ]
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
        for container in document["spec"]["template"]["spec"]["containers"]:
            for variable in container.get("env", []):
                if variable["name"].startswith("MESH_"):
                    monkeypatch.setenv(variable["name"], variable["value"])
            MeshSettings()
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["httpGet"]["path"] in routes
