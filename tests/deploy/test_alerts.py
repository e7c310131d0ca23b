"""deploy/prometheus: the alerting rules load in Prometheus, fire as their unit tests say, and use only
series the mesh exports, with labels it sets."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.manifests import DEPLOY, ROOT

PROMETHEUS = DEPLOY / "prometheus"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is installed by `make test`")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=30, check=False
    )


@needs_promtool
def test_rules_load() -> None:
    result = _promtool("check", "rules", "mesh-alerts.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rules_fire_as_their_unit_tests_expect() -> None:
    """The circuit-breaker, failure-ratio and no-endpoint alerts fire (and only for the right service)."""
    result = _promtool("test", "rules", "mesh-alerts.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_use_exported_series_and_link_to_existing_runbooks() -> None:
    """Every mesh_* name in the expressions is in the metric table of docs/operations.md (which a docs test
    keeps equal to what /metrics exports), and every runbook anchor is a heading of docs/deployment.md."""
    documented = set(re.findall(r"^\| `(mesh_\w+)` \|", (ROOT / "docs" / "operations.md").read_text(), re.MULTILINE))
    headings = {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in (ROOT / "docs" / "deployment.md").read_text().splitlines()
        if line.startswith("#")
    }
    rules = [r for g in yaml.safe_load((PROMETHEUS / "mesh-alerts.yaml").read_text())["groups"] for r in g["rules"]]
    assert rules
    for rule in rules:
        used = set(re.findall(r"\bmesh_\w+", rule["expr"]))
        assert used and used <= documented, (rule["alert"], used - documented)
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/deployment.md" and anchor in headings, rule["alert"]
