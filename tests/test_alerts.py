"""The alert rules and the Grafana dashboard: promtool accepts the rules and their unit tests
pass, every query names only metrics the bridge exports, and every alert has its runbook."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.telemetry.collect import gauges
from shared.telemetry.definitions import REGISTRY

ROOT = Path(__file__).parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "halaxy-bridge.json"
RUNBOOK = ROOT / "docs" / "operations.md"
ENSURE_TOOLS = ROOT / "scripts" / "ensure_tools.sh"

METRIC = re.compile(r"\bhalaxy_bridge_[a-z_]+")
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
SEVERITIES = {"page", "ticket"}
DASHBOARD_DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def exported_families() -> dict[str, str]:
    """Family name -> type of every metric `/metrics` serves: the counted ones in the shared
    registry, and the gauges the receiver reads from Redis at scrape time."""
    families = {family.name: family.type for family in REGISTRY.collect()}
    empty: dict[str, Any] = {"queues": [], "connections": []}
    families |= {family.name: family.type for family in gauges(empty, 86_400, 0.0)}
    return {name: kind for name, kind in families.items() if name.startswith("halaxy_bridge_")}


def sample_names(families: dict[str, str]) -> set[str]:
    """The names a query can use: `_total` of counters, `_bucket/_sum/_count` of histograms."""
    return {
        name + suffix
        for name, kind in families.items()
        for suffix in SAMPLE_SUFFIXES.get(kind, ("",))
    }


def unknown_metrics(expressions: Iterable[str], known: set[str]) -> set[str]:
    return {token for expr in expressions for token in METRIC.findall(expr)} - known


def rules() -> list[dict[str, Any]]:
    [group] = yaml.safe_load(RULES.read_text())["groups"]
    assert group["name"] == "halaxy-bridge"
    return list(group["rules"])


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # the panels of a collapsed row


def dashboard_exprs(board: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for panel in panels(board) for t in panel.get("targets", [])]
    return exprs + [v["definition"] for v in board["templating"]["list"] if "definition" in v]


def test_exported_metrics_are_collected_from_the_telemetry_package() -> None:
    names = sample_names(exported_families())
    # A few the rules depend on, one of each kind, so an empty collection cannot pass.
    assert {
        "halaxy_bridge_halaxy_auth_failures_total",
        "halaxy_bridge_job_duration_seconds_bucket",
        "halaxy_bridge_connection_quiet_after_seconds",
    } <= names


def test_an_unknown_metric_name_is_caught() -> None:
    known = sample_names({"halaxy_bridge_jobs": "counter", "halaxy_bridge_dead_letters": "gauge"})
    exprs = ["rate(halaxy_bridge_jobs_total[5m])", "halaxy_bridge_jobs > 0"]
    assert unknown_metrics(exprs, known) == {"halaxy_bridge_jobs"}
    assert unknown_metrics(["max(halaxy_bridge_dead_letter)"], known) == {
        "halaxy_bridge_dead_letter"
    }


def test_alerts_and_dashboard_use_only_exported_metrics() -> None:
    known = sample_names(exported_families())
    rule_tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    input_series = [s["series"] for test in rule_tests for s in test.get("input_series", [])]
    assert unknown_metrics([rule["expr"] for rule in rules()], known) == set()
    assert unknown_metrics(dashboard_exprs(dashboard()), known) == set()
    # The unit tests' series too, or they would prove rules against metrics that do not exist.
    assert unknown_metrics(input_series, known) == set()


def test_every_exported_metric_has_a_panel() -> None:
    used = {token for expr in dashboard_exprs(dashboard()) for token in METRIC.findall(expr)}
    families = exported_families()
    missing = {name for name, kind in families.items() if not used & sample_names({name: kind})}
    assert missing == set(), "add a panel to deploy/grafana/halaxy-bridge.json for these"


def github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_every_alert_is_labelled_annotated_and_has_a_runbook_section() -> None:
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in rules():
        name = rule["alert"]
        assert "for" in rule, name
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(annotations), name
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/operations.md", name
        assert anchor in anchors, f"{name}: no heading for #{anchor} in {RUNBOOK.name}"
        for label in ("connection_id", "queue", "route"):
            if f"by ({label})" in rule["expr"]:
                assert f"$labels.{label}" in annotations["description"], (name, label)


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for name in {rule["alert"] for rule in rules()}:
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name} never shown firing"
        assert any(not case["exp_alerts"] for case in mine), f"{name} never shown quiet"


def test_dashboard_panels_have_unique_ids_and_a_place_on_the_grid() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39
    every = list(panels(board))
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in every:
        grid = panel["gridPos"]
        assert min(grid["x"], grid["y"]) >= 0, panel["title"]
        assert min(grid["w"], grid["h"]) > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] != "row":
            assert panel["datasource"] == DASHBOARD_DATASOURCE, panel["title"]
            assert panel["targets"], panel["title"]


def test_dashboard_has_its_datasource_input_and_connection_variable() -> None:
    board = dashboard()
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    connection = variables["connection_id"]
    assert connection["datasource"] == DASHBOARD_DATASOURCE
    assert connection["query"]["query"] == (
        "label_values(halaxy_bridge_connection_enabled, connection_id)"
    )


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None and ENSURE_TOOLS.exists():
        subprocess.run(["sh", str(ENSURE_TOOLS)], check=False, timeout=900)
        found = shutil.which("promtool")
    if found is None:
        pytest.skip(
            "promtool is not installed (Debian/Ubuntu package `prometheus`; "
            "scripts/ensure_tools.sh installs it when run as root)"
        )
    return found


def run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_promtool_accepts_the_rules(promtool: str) -> None:
    assert "SUCCESS" in run(promtool, "check", "rules", str(RULES))


def test_promtool_unit_tests_of_the_rules_pass(promtool: str) -> None:
    assert "SUCCESS" in run(promtool, "test", "rules", str(RULE_TESTS))


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Checked as recording rules, with Grafana's variables given plausible values."""
    board = dashboard()
    records = [
        {
            "record": f"dashboard:panel_{panel['id']}_{target['refId']}",
            "expr": target["expr"]
            .replace("$__rate_interval", "5m")
            .replace("$connection_id", ".*"),
        }
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    assert f"SUCCESS: {len(records)} rules found" in run(promtool, "check", "rules", str(path))
