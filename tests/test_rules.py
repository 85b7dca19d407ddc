"""Prometheus rules and their runbooks: promtool checks and unit tests, and the links between them."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
RUNBOOKS = ROOT / "docs" / "runbooks"

promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")


def alert_rules():
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def promtool_run(*args):
    result = subprocess.run(["promtool", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@promtool
def test_rules_and_example_config_pass_promtool_check():
    promtool_run("check", "rules", str(PROM / "alerts.yml"), str(PROM / "recording.yml"))
    out = promtool_run("check", "config", str(PROM / "prometheus.example.yml"))
    assert "2 rule files found" in out


@promtool
def test_alert_unit_tests_pass():
    promtool_run("test", "rules", str(PROM / "tests" / "alerts_test.yml"))


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    cases = yaml.safe_load((PROM / "tests" / "alerts_test.yml").read_text())["tests"]
    seen = {}
    for case in cases:
        for check in case["alert_rule_test"]:
            seen.setdefault(check["alertname"], set()).add(bool(check["exp_alerts"]))
    for rule in alert_rules():
        assert seen.get(rule["alert"]) == {True, False}, rule["alert"]


def test_every_alert_explains_itself_and_links_an_existing_runbook():
    index = (RUNBOOKS / "README.md").read_text()
    for rule in alert_rules():
        notes = rule["annotations"]
        assert {"summary", "description", "runbook"} <= notes.keys(), rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        page = ROOT / notes["runbook"]
        assert page.is_file(), notes["runbook"]
        assert page.read_text().startswith(f"# {rule['alert']}\n"), page
        assert page.name in index and rule["alert"] in index
        for section in ("## What it means", "## Confirm"):
            assert section in page.read_text(), (page, section)


def test_runbook_pages_are_all_linked_from_an_alert():
    linked = {Path(rule["annotations"]["runbook"]).name for rule in alert_rules()}
    pages = {p.name for p in RUNBOOKS.glob("*.md")} - {"README.md"}
    assert pages == linked


def test_rules_only_use_metrics_tcpwatch_exports():
    golden = (ROOT / "tests" / "golden" / "metrics.prom").read_text()
    exported = set(re.findall(r"^# TYPE (\w+)", golden, re.M))
    text = (PROM / "alerts.yml").read_text() + (PROM / "recording.yml").read_text()
    used = set(re.findall(r"(?<![:\w])(tcpwatch_\w+)(?![:\w])", text))  # not recorded names
    histogram_parts = {f"{name}_{suffix}" for name in exported for suffix in ("bucket", "sum", "count")}
    assert used and used <= exported | histogram_parts, used - exported
