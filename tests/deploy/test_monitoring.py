"""deploy/monitoring: the alerting rules load in Prometheus, fire as their unit tests say, use only series
the mesh exports and link to runbooks that exist; the Grafana dashboard queries only exported series."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import DEPLOY, ROOT

MONITORING = DEPLOY / "monitoring"
OPERATIONS = ROOT / "docs" / "operations.md"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is installed by `make test`")

#: PromQL words that are not metric names (functions are recognised by the parenthesis after them).
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}


def _promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False)


def exported_series() -> set[str]:
    """The sample names /metrics has, from the metric table of docs/operations.md (which a docs test keeps
    equal to what /metrics exposes): a histogram row stands for its ``_bucket``, ``_count`` and ``_sum``."""
    names = set()
    for row in OPERATIONS.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`mesh_\w+`", cells[0]):
            name = cells[0].strip("`")
            if cells[1] == "histogram":
                names |= {name + "_bucket", name + "_count", name + "_sum"}
            else:
                names.add(name)
    assert len(names) > 20
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers left once strings, label matchers,
    ranges, grouping clauses, function names and keywords are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text):
        if match.group(1) not in _KEYWORDS:
            names.add(match.group(1))
    return names


def test_metric_names_are_found_in_expressions() -> None:
    expr = 'sum by (service) (rate(mesh_a_total{x="up"}[5m])) / on (service) mesh_b and time() - mesh_c > 3'
    assert metric_names(expr) == {"mesh_a_total", "mesh_b", "mesh_c"}


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((MONITORING / "mesh-alerts.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@needs_promtool
def test_rules_load() -> None:
    result = _promtool("check", "rules", "mesh-alerts.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rules_fire_as_their_unit_tests_expect() -> None:
    """Each alert fires when its unit test says (and only for the right service or route)."""
    result = _promtool("test", "rules", "mesh-alerts.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_that_expects_it_to_fire() -> None:
    tests = yaml.safe_load((MONITORING / "mesh-alerts.test.yaml").read_text())["tests"]
    firing = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    alerts = {rule["alert"] for rule in _rules()}
    assert alerts - {"MeshDiscoveryStale", "MeshBulkheadRejecting"} <= firing, alerts - firing


def test_rules_use_exported_series_and_link_to_existing_runbooks() -> None:
    """Every metric an expression selects is one /metrics exports, and every runbook anchor is a heading of
    docs/operations.md."""
    exported = exported_series()
    headings = {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }
    rules = _rules()
    assert len(rules) >= 10
    for rule in rules:
        used = metric_names(rule["expr"])
        assert used and used <= exported, (rule["alert"], used - exported)
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/operations.md" and anchor in headings, rule["alert"]


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return dashboard


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(where, PromQL)`` of every panel target and every query variable."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query) or re.fullmatch(r"label_values\((.*)\)", query)
            assert inner, query
            found.append((f"${variable['name']}", inner.group(1)))
    return found


def _grafana_free(expr: str) -> str:
    """``expr`` with Grafana's variables replaced by what they stand for, as Prometheus would get it."""
    return expr.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$service", ".*")


def test_grafana_dashboard_queries_only_exported_series() -> None:
    """Every panel query and variable of deploy/monitoring/grafana-dashboard.json selects metrics that
    /metrics exports (and at least one), so no panel stays empty because of a misspelt or renamed series."""
    exported = exported_series()
    queries = _queries(_dashboard())
    assert len(queries) >= 25
    for where, expr in queries:
        used = metric_names(_grafana_free(expr))
        assert used and used <= exported, (where, used - exported)
    every = set().union(*(metric_names(_grafana_free(e)) for _, e in queries))
    assert {"mesh_upstream_request_duration_seconds_bucket", "mesh_circuit_breaker_transitions_total"} <= every


@needs_promtool
def test_grafana_queries_are_valid_promql(tmp_path: Path) -> None:
    """Prometheus parses every dashboard query (promtool checks them as recording rules)."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": _grafana_free(expr)}
        for i, (_, expr) in enumerate(_queries(_dashboard()))
    ]
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_dashboard_is_importable() -> None:
    """Panels have distinct ids and the data source variable; targets distinct refIds; the grid does not
    overlap."""
    dashboard = _dashboard()
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        mine = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, panel["title"]
        cells |= mine
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(set(refs)) == len(refs)
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
