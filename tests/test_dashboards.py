"""The Grafana dashboards: in sync with their generator, and importable into any Grafana."""

import json
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = runpy.run_path(str(ROOT / "dashboards" / "generate.py"))
DASHBOARDS = GENERATOR["DASHBOARDS"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_committed_json_matches_the_generator(name):
    committed = (ROOT / "dashboards" / name).read_text()
    assert committed == GENERATOR["render"](DASHBOARDS[name]), \
        f"dashboards/{name} is stale: run python3 dashboards/generate.py"


def test_no_other_json_in_the_folder():
    assert {p.name for p in (ROOT / "dashboards").glob("*.json")} == set(DASHBOARDS)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_queries_use_the_variables_and_no_fixed_datasource(name):
    board = json.loads((ROOT / "dashboards" / name).read_text())
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "job", "instance", "netns"]
    text = json.dumps(board)
    assert '"uid": "${datasource}"' in text
    # The dashboard's own uid is the only fixed uid: no data source of somebody's Grafana.
    assert text.count('"uid"') == text.count('"uid": "${datasource}"') + 1
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'job=~"$job"' in target["expr"] and 'instance=~"$instance"' in target["expr"], target
            per_netns = ("tcpwatch_sockets", "tcpwatch_process_sockets", "tcpwatch_state_", "tcpwatch_listen",
                         "tcpwatch_resets", "tcpwatch_retransmits", "tcpwatch_aborts", "tcpwatch_ephemeral")
            if any(name in target["expr"] for name in per_netns):
                assert 'netns=~"$netns"' in target["expr"], target


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_are_titled_described_with_units_and_fit_the_grid(name):
    board = json.loads((ROOT / "dashboards" / name).read_text())
    cells = set()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["title"] and len(panel["description"]) > 20, panel["title"]
        if panel["type"] != "text":
            assert panel["targets"] and panel["fieldConfig"]["defaults"]["unit"], panel["title"]


def test_each_panel_kind_the_issue_asks_for_is_there():
    titles = {name: [p["title"] for p in json.loads((ROOT / "dashboards" / name).read_text())["panels"]]
              for name in DASHBOARDS}
    overview = " | ".join(titles["tcpwatch-overview.json"]).lower()
    for words in ("sockets by state", "transitions per second", "handshake time", "distribution",
                  "lifetime", "time_wait", "accept queue", "resets", "retransmits", "ebpf",
                  "collector time"):
        assert words in overview, words
    kinds = {p["type"] for p in json.loads((ROOT / "dashboards" / "tcpwatch-close-wait.json").read_text())["panels"]}
    assert {"text", "table", "timeseries", "heatmap"} <= kinds
