"""A real Prometheus scrapes a real tcpwatch while sockets go through handshakes, teardowns and
a CLOSE_WAIT leak; then every dashboard query and every rule is evaluated through its HTTP API.

Prometheus, tcpwatch and the workloads all run in the test's network namespace, on loopback.
"""

import json
import shutil
import tempfile

import pytest
import yaml

from helpers import ROOT, wait_for
from peers import Prometheus

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed")]

RULES = ROOT / "deploy" / "prometheus"
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
VARIABLES = {"$job": "tcpwatch", "$instance": ".+", "$netns": ".+", "$__rate_interval": "10s"}


def dashboard_queries():
    """(dashboard, panel title, expr with the variables filled in) for every target."""
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for t in panel.get("targets", []):
                expr = t["expr"]
                for name, text in VARIABLES.items():
                    expr = expr.replace(name, text)
                assert "$" not in expr, expr
                yield path.name, panel["title"], expr


def rule_expressions():
    for name in ("recording.yml", "alerts.yml"):
        for group in yaml.safe_load((RULES / name).read_text())["groups"]:
            for rule in group["rules"]:
                yield rule.get("alert") or rule["record"], rule["expr"]


@pytest.fixture
def prometheus(netns, daemons):
    daemon = daemons("--collector.process.max-series", "10", netns=netns)
    workdir = tempfile.mkdtemp(prefix="tcpwatch-prom-")
    prom = Prometheus(netns, daemon.address, workdir)
    try:
        wait_for(lambda: prom.ready() or prom.proc.poll() is not None, timeout=30, interval=0.3,
                 what="prometheus ready")
        assert prom.proc.poll() is None, prom.log.read_text()[-2000:]
        yield prom
    finally:
        prom.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_every_dashboard_query_and_rule_evaluates_on_live_data(netns, workloads, prometheus):
    workloads("leak", netns=netns, count=25, comm="leaky")
    listener = workloads("listen", netns=netns, count=8, comm="slowaccept")
    workloads("connect", netns=netns, port=listener.info["port"], count=3, comm="client")
    workloads("ports", netns=netns, count=1, comm="pooled")   # client-side CLOSE_WAIT toward an upstream
    traffic = workloads("traffic", netns=netns, rounds=40, count=10, close=2, aborts=1, seconds=0.5,
                        comm="churner")

    # Enough scrapes and rule evaluations for 10 s rate windows, while the traffic still runs.
    wait_for(lambda: prometheus.query('count_over_time(up{job="tcpwatch"}[1m]) >= 12')[0]["data"]["result"],
             timeout=60, interval=1, what="12 scrapes")
    wait_for(lambda: prometheus.query("instance:tcpwatch_handshake_failures:ratio_rate5m")[0]["data"]["result"],
             timeout=30, interval=1, what="the recording rules' first evaluation")

    panels = list(dashboard_queries())
    rules = list(rule_expressions())
    answers = prometheus.query(*[e for _, _, e in panels], *[e for _, e in rules])
    assert traffic.proc.poll() is None, "the traffic ended before the queries: widen its rounds"

    empty = []
    for (dash, title, expr), answer in zip(panels, answers):
        assert answer["status"] == "success", (dash, title, expr, answer)
        if not answer["data"]["result"]:
            empty.append((dash, title, expr))
    # Every panel has data under this workload: sockets in all the usual states, churn with
    # refused connects, a leak, a listen queue, eBPF attached.
    assert not empty, empty

    for (name, expr), answer in zip(rules, answers[len(panels):]):
        assert answer["status"] == "success", (name, expr, answer)

    # Prometheus itself evaluated every loaded rule without error.
    groups = prometheus.api(("/api/v1/rules", None))[0]["data"]["groups"]
    loaded = [rule for group in groups for rule in group["rules"]]
    assert len(loaded) == len(rules)
    assert all(rule["health"] == "ok" for rule in loaded), [r for r in loaded if r["health"] != "ok"]

    # The workload is visible in the shipped queries.
    leak = prometheus.query('tcpwatch_process_sockets{process="leaky", state="close_wait"}')[0]
    assert float(leak["data"]["result"][0]["value"][1]) == 25
    failures = prometheus.query("instance:tcpwatch_handshake_failures:rate5m")[0]
    assert float(failures["data"]["result"][0]["value"][1]) > 0
