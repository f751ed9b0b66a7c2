"""deploy/prometheus-rules.yaml with Prometheus' own tool: the rules parse, and each alert
fires on the series it is for (and only those) in promtool's unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.require import tool

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "prometheus" / "rules_test.yaml"


@pytest.fixture
def promtool() -> str:
    return tool("promtool", "prometheus")


def rules_file(tmp: Path) -> Path:
    """The PrometheusRule's spec, which is a plain rules file."""
    rule = yaml.safe_load((ROOT / "deploy" / "prometheus-rules.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    path = tmp / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


def test_the_rules_are_valid_and_each_alert_has_a_runbook(promtool: str,
                                                          tmp_path: Path) -> None:
    path = rules_file(tmp_path)
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 4 rules found" in r.stdout
    alerts = {a["alert"]: a for g in yaml.safe_load(path.read_text())["groups"]
              for a in g["rules"]}
    assert set(alerts) == {"NatlensServiceSkewed", "NatlensUndeclaredEndpoint",
                           "NatlensAgentDown", "NatlensEventsLost"}
    headings = {line.lstrip("# ").strip().lower() for line in
                (ROOT / "docs" / "alerts.md").read_text().splitlines() if line.startswith("## ")}
    for name, a in alerts.items():
        doc, _, anchor = a["annotations"]["runbook_url"].partition("#")
        assert doc == "docs/alerts.md" and anchor == name.lower() in headings


def test_each_alert_fires_on_its_series_in_promtools_unit_tests(promtool: str,
                                                               tmp_path: Path) -> None:
    rules_file(tmp_path)
    shutil.copy(FIXTURE, tmp_path / "rules_test.yaml")
    r = subprocess.run([promtool, "test", "rules", "rules_test.yaml"], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
