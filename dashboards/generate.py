"""Writes the Grafana dashboards in this folder: python3 dashboards/generate.py

The JSON files are committed as they come out of here, so that they import as they are; a test
keeps them in sync. Plain dictionaries in the Grafana dashboard JSON model (schema 39, Grafana
10+) keep the generator free of dependencies. Every query goes through the `datasource`
variable and filters on the `job` and `instance` variables, so no Grafana's UIDs are baked in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL_HOST = 'job=~"$job", instance=~"$instance"'   # the selector every query carries
SEL = SEL_HOST + ', netns=~"$netns"'              # ... and on per-namespace metrics, the netns too
RATE = "$__rate_interval"

GREEN, ORANGE, RED = "green", "orange", "red"


def thresholds(*steps):
    """steps: (value, color) pairs above a green base."""
    return {"mode": "absolute",
            "steps": [{"color": GREEN, "value": None}] + [{"color": c, "value": v} for v, c in steps]}


def target(expr, legend="", ref="A", **extra):
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref, **extra}


def panel(kind, title, description, targets, unit="short", width=12, height=8, **extra):
    """A panel; `extra` may carry fieldConfig defaults (`defaults`), `options` and the rest."""
    defaults = {"unit": unit, **extra.pop("defaults", {})}
    return {"type": kind, "title": title, "description": description, "datasource": DATASOURCE,
            "targets": targets, "fieldConfig": {"defaults": defaults, "overrides": extra.pop("overrides", [])},
            "gridPos": {"w": width, "h": height}, **extra}


def timeseries(title, description, targets, unit="short", stacked=False, width=12, height=8, **extra):
    custom = {"fillOpacity": 30 if stacked else 10, "lineWidth": 1, "showPoints": "never",
              "stacking": {"mode": "normal" if stacked else "none", "group": "A"}}
    defaults = {"custom": custom, **extra.pop("defaults", {})}
    options = {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "max"]},
               "tooltip": {"mode": "multi", "sort": "desc"}}
    return panel("timeseries", title, description, targets, unit, width, height,
                 defaults=defaults, options=options, **extra)


def stat(title, description, targets, unit="short", width=6, height=4, **extra):
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "colorMode": "background", "graphMode": "area", "textMode": "auto"}
    return panel("stat", title, description, targets, unit, width, height, options=options, **extra)


def heatmap(title, description, state, width=12, height=8):
    expr = (f'sum by (le) (increase(tcpwatch_state_duration_seconds_bucket{{{SEL}, state="{state}"}}[{RATE}]))')
    options = {"calculate": False, "yAxis": {"unit": "s", "axisPlacement": "left"},
               "cellGap": 1, "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
               "tooltip": {"show": True, "yHistogram": True}, "legend": {"show": True},
               "filterValues": {"le": 1e-9}}
    return panel("heatmap", title, description,
                 [target(expr, "{{le}}", format="heatmap")], "s", width, height, options=options)


def quantiles(title, description, states, width=12, height=8):
    """p50/p90/p99 of time in each of `states`, from the histogram's buckets."""
    targets = []
    ref = iter("ABCDEFGHIJKLMNOP")
    for state in states:
        for q in ("0.5", "0.9", "0.99"):
            expr = (f"histogram_quantile({q}, sum by (le) (rate(tcpwatch_state_duration_seconds_bucket"
                    f'{{{SEL}, state="{state}"}}[{RATE}])))')
            targets.append(target(expr, f"{state} p{int(float(q) * 100)}", next(ref)))
    return timeseries(title, description, targets, "s", width=width, height=height)


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def layout(panels):
    """Place panels left to right in a 24-column grid; a row starts a new line. Numbers ids."""
    x = y = line_height = 0
    for number, p in enumerate(panels, start=1):
        p["id"] = number
        grid = p["gridPos"]
        if p["type"] == "row" or x + grid["w"] > 24:
            y, x, line_height = y + line_height, 0, 0
        grid["x"], grid["y"] = x, y
        if p["type"] == "row":
            y += grid["h"]
            continue
        x += grid["w"]
        line_height = max(line_height, grid["h"])
    return panels


def variables():
    by_job = 'label_values(tcpwatch_build_info{job=~"$job"}, instance)'
    by_instance = f"label_values(tcpwatch_sockets{{{SEL_HOST}}}, netns)"
    return {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": "", "includeAll": False, "multi": False},
        {"name": "job", "label": "Job", "type": "query", "datasource": DATASOURCE,
         "query": {"query": "label_values(tcpwatch_build_info, job)", "refId": "job"},
         "definition": "label_values(tcpwatch_build_info, job)", "current": {}, "hide": 0,
         "refresh": 2, "sort": 1, "includeAll": False, "multi": False, "regex": ""},
        {"name": "instance", "label": "Instance", "type": "query", "datasource": DATASOURCE,
         "query": {"query": by_job, "refId": "instance"}, "definition": by_job,
         "current": {}, "hide": 0, "refresh": 2, "sort": 1, "includeAll": True, "multi": True,
         "allValue": ".+", "regex": ""},
        {"name": "netns", "label": "Network namespace", "type": "query", "datasource": DATASOURCE,
         "query": {"query": by_instance, "refId": "netns"}, "definition": by_instance,
         "current": {}, "hide": 0, "refresh": 2, "sort": 1, "includeAll": True, "multi": True,
         "allValue": ".+", "regex": ""},
    ]}


def dashboard(uid, title, description, panels):
    return {
        "uid": uid, "title": title, "description": description, "tags": ["tcpwatch", "tcp"],
        "editable": True, "graphTooltip": 1, "refresh": "30s", "schemaVersion": 39, "version": 1,
        "time": {"from": "now-6h", "to": "now"}, "timezone": "browser",
        "templating": variables(), "annotations": {"list": []},
        "links": [{"title": "tcpwatch dashboards", "type": "dashboards", "tags": ["tcpwatch"],
                   "asDropdown": True, "includeVars": True, "keepTime": True}],
        "panels": layout(panels),
    }


def overview():
    sockets = f"tcpwatch_sockets{{{SEL}}}"
    transitions = f"tcpwatch_state_transitions_total{{{SEL}}}"
    return dashboard("tcpwatch-overview", "tcpwatch / Overview",
                     "TCP sockets per state, the state machine's traffic, handshake and lifetime "
                     "durations, TIME_WAIT, listen queues, resets, and the exporter's health.", [
        row("Sockets"),
        timeseries("Sockets by state",
                   "TCP sockets in each state right now, stacked, IPv4 and IPv6 together, from one "
                   "inet_diag dump per scrape.",
                   [target(f"sum by (state) ({sockets})", "{{state}}")], stacked=True, width=16),
        stat("CLOSE_WAIT sockets",
             "Sockets whose peer closed and whose process has not called close(). A number that "
             "only grows is a leak: see the CLOSE_WAIT leaks dashboard.",
             [target(f'sum(tcpwatch_sockets{{{SEL}, state="close_wait"}})')], width=8,
             defaults={"thresholds": thresholds((100, ORANGE), (1000, RED))}),
        row("Network namespaces"),
        timeseries("Sockets per network namespace",
                   "All TCP sockets of each network namespace: host, each pod (namespace/pod), "
                   "container or ip netns. Past --collector.netns.max-series the smallest are "
                   "summed under \"other\".",
                   [target(f"sum by (netns) ({sockets})", "{{netns}}")], width=12),
        timeseries("CLOSE_WAIT sockets per network namespace",
                   "CLOSE_WAIT sockets of each namespace: a leak in one pod shows as one rising line.",
                   [target(f'sum by (netns) (tcpwatch_sockets{{{SEL}, state="close_wait"}}) > 0', "{{netns}}")],
                   width=12),
        timeseries("Accept queue overflows per second",
                   "Connections each namespace's kernel dropped because a listener's accept queue was "
                   "full (TcpExt ListenOverflows): the application does not accept() fast enough.",
                   [target(f"sum by (netns) (rate(tcpwatch_listen_overflows_total{{{SEL}}}[{RATE}])) > 0",
                           "{{netns}}")], unit="ops"),
        timeseries("Connections aborted per second",
                   "Connections the kernel ended with a reset, by namespace and reason (TcpExt "
                   "TCPAbortOn*): close with unread data, data after close, timeout, memory, linger.",
                   [target(f"sum by (netns, reason) (rate(tcpwatch_aborts_total{{{SEL}}}[{RATE}])) > 0",
                           "{{netns}} {{reason}}")], unit="ops"),
        row("Service ports"),
        timeseries("Connections per service port",
                   "Connections to ports this host listens on (server side), by port and state; "
                   "the top --collector.port.server-max-ports ports, the rest as \"other\".",
                   [target(f'sum by (port, state) (tcpwatch_port_sockets{{{SEL}, side="server"}}) > 0',
                           "{{port}} {{state}}")], width=12),
        timeseries("Connections per upstream port",
                   "Connections this host opened, by the remote port they go to and state: which "
                   "upstream services (databases, caches, APIs) it talks to and how.",
                   [target(f'sum by (port, state) (tcpwatch_port_sockets{{{SEL}, side="client"}}) > 0',
                           "{{port}} {{state}}")], width=12),
        row("State machine"),
        timeseries("State transitions per second",
                   "Changes of state of full sockets, by (from, to), seen by the eBPF program. "
                   "close → syn_sent is a connect(), listen → syn_recv an incoming handshake, "
                   "syn_sent → close a failed connect(). Entering TIME_WAIT shows as fin_wait2 → close.",
                   [target(f"sum by (from, to) (rate({transitions}[{RATE}])) > 0", "{{from}} → {{to}}")],
                   unit="ops", width=24),
        quantiles("Handshake time",
                  "Time from connect() to the SYN-ACK (syn_sent) and from the SYN to the final "
                  "ACK (syn_recv), median, 90th and 99th percentile: about one network round trip "
                  "when healthy; steps of 1 s, 3 s mean lost SYNs.",
                  ["syn_sent", "syn_recv"]),
        heatmap("Outgoing handshake time (syn_sent) distribution",
                "How long connect() took, every attempt in the interval, by log2 bucket.", "syn_sent"),
        timeseries("Outgoing connection failures",
                   "Share of outgoing connection attempts that ended in syn_sent → close instead of "
                   "ESTABLISHED: refused, timed out or abandoned. The alert fires above 10%.",
                   [target(f"instance:tcpwatch_handshake_failures:ratio_rate5m{{{SEL}}}", "{{instance}}")],
                   unit="percentunit",
                   defaults={"min": 0, "max": 1, "thresholds": thresholds((0.1, RED)),
                             "custom": {"thresholdsStyle": {"mode": "line"}}}),
        quantiles("Connection lifetime",
                  "Time spent ESTABLISHED, observed when the connection starts to close: median, 90th "
                  "and 99th percentile.", ["established"]),
        row("Teardown and TIME_WAIT"),
        timeseries("TIME_WAIT sockets against the ephemeral port range",
                   "TIME_WAIT sockets (60 s each after an active close) and the size of "
                   "net.ipv4.ip_local_port_range. Outgoing connections to one destination fail once "
                   "its TIME_WAIT sockets use up the range.",
                   [target(f'sum by (instance) (tcpwatch_sockets{{{SEL}, state="time_wait"}})',
                           "time_wait {{instance}}"),
                    target(f"tcpwatch_ephemeral_ports{{{SEL}}}", "ephemeral ports {{instance}}", "B")]),
        timeseries("Time in teardown states",
                   "Mean time spent in each teardown state, observed on leaving it. time_wait is "
                   "about 60 s unless sockets are reused early; long close_wait means slow close().",
                   [target(f"sum by (state) (rate(tcpwatch_state_duration_seconds_sum{{{SEL}, "
                           f'state=~"fin_wait1|fin_wait2|time_wait|close_wait|last_ack|closing"}}[{RATE}]))'
                           f" / sum by (state) (rate(tcpwatch_state_duration_seconds_count{{{SEL}}}[{RATE}])) > 0",
                           "{{state}}")], unit="s"),
        row("Listen queues"),
        timeseries("Accept queue fill by port",
                   "Connections waiting for accept() as a share of the queue's limit (the listen() "
                   "backlog capped by net.core.somaxconn). At 100% the kernel drops new handshakes.",
                   [target(f"sum by (port) (tcpwatch_listen_queue_length{{{SEL}}}) / "
                           f"sum by (port) (tcpwatch_listen_queue_limit{{{SEL}}} > 0)", "port {{port}}")],
                   unit="percentunit",
                   defaults={"min": 0, "max": 1, "thresholds": thresholds((0.8, ORANGE), (1, RED)),
                             "custom": {"thresholdsStyle": {"mode": "line"}}}),
        timeseries("Accept queue length by port",
                   "Connections waiting for accept() on each listening port.",
                   [target(f"sum by (port) (tcpwatch_listen_queue_length{{{SEL}}})", "port {{port}}")]),
        row("Errors"),
        timeseries("Resets per second",
                   "TCP resets sent and received. Received resets on outgoing connections usually "
                   "mean nothing listens at the destination.",
                   [target(f"sum by (direction) (rate(tcpwatch_resets_total{{{SEL}}}[{RATE}]))", "{{direction}}")],
                   unit="ops"),
        timeseries("Retransmits per second",
                   "TCP segments retransmitted: packet loss or congestion on the path.",
                   [target(f"sum by (instance) (rate(tcpwatch_retransmits_total{{{SEL}}}[{RATE}]))", "{{instance}}")],
                   unit="ops"),
        row("Exporter health"),
        stat("eBPF",
             "1 when tcpwatch's eBPF program is attached. Without it there are no transitions, "
             "durations, resets or retransmits (tcpwatch doctor says why).",
             [target(f"min(tcpwatch_ebpf_enabled{{{SEL_HOST}}})")],
             defaults={"thresholds": {"mode": "absolute", "steps": [{"color": RED, "value": None},
                                                                    {"color": GREEN, "value": 1}]},
                       "mappings": [{"type": "value", "options": {"0": {"text": "off"}, "1": {"text": "on"}}}]}),
        stat("Collectors failing",
             "Collectors that failed during the last scrape, over the selected instances.",
             [target(f"count(tcpwatch_scrape_collector_success{{{SEL_HOST}}} == 0) or vector(0)")],
             defaults={"thresholds": thresholds((1, RED))}),
        timeseries("Collector time per scrape",
                   "Time each collector takes per scrape. A scrape of 100k sockets with owners takes "
                   "about half a second.",
                   [target(f"max by (collector) (tcpwatch_scrape_collector_duration_seconds{{{SEL_HOST}}})",
                           "{{collector}}")], unit="s"),
        timeseries("Untracked by eBPF per second",
                   "Transitions of sockets the eBPF program never saw enter their state: older than "
                   "tcpwatch, or evicted from its LRU map (raise --collector.bpf.max-sockets if steady).",
                   [target(f"sum by (reason) (rate(tcpwatch_ebpf_untracked_total{{{SEL_HOST}}}[{RATE}]))", "{{reason}}")],
                   unit="ops", width=24),
    ])


CLOSE_WAIT_TEXT = """\
**CLOSE_WAIT** means the other side closed the connection and the kernel is waiting for *this*
process to call `close()`. The kernel never times it out. A few short-lived ones are normal;
a count that only grows, with an oldest age that grows with the clock, is a **leak**: the
process will run out of file descriptors.

**What to do**
1. Find the process and its peers: `tcpwatch snapshot`, then `ss -tanp state close-wait`.
2. Now: restart the process (a rolling restart). Every socket it holds closes.
3. For good: the remote port of the leaked sockets names the dependency. Fix the code path that
   does not close the connection (a missing `finally`/`with`/`defer`, a pool that never evicts
   connections the server closed, response bodies not closed).

Runbook: `docs/runbooks/close-wait-leak.md` in the tcpwatch repository.
"""


def close_wait():
    count = f'tcpwatch_process_sockets{{{SEL}, state="close_wait"}}'
    age = f'tcpwatch_state_oldest_age_seconds{{{SEL}, state="close_wait"}}'
    owner = "instance, netns, process, container, pod_namespace, pod"
    table_targets = [target(f"sum by ({owner}) ({count}) > 0", "", "A", format="table", instant=True),
                     target(f"max by ({owner}) ({age})", "", "B", format="table", instant=True)]
    table = panel("table", "Processes holding CLOSE_WAIT sockets",
                  "Per process, with its network namespace, container and pod: CLOSE_WAIT sockets "
                  "now and how long the oldest has waited. Exact when "
                  "eBPF saw it enter the state, otherwise a lower bound. The leak alert fires at 20 "
                  "sockets older than 10 minutes.",
                  table_targets, width=14, height=10,
                  transformations=[{"id": "merge", "options": {}},
                                   {"id": "organize", "options": {
                                       "excludeByName": {"Time": True},
                                       "renameByName": {"instance": "Instance", "process": "Process",
                                                        "netns": "Network namespace", "container": "Container",
                                                        "pod_namespace": "Namespace", "pod": "Pod",
                                                        "Value #A": "CLOSE_WAIT sockets",
                                                        "Value #B": "Oldest age"}}}],
                  options={"showHeader": True, "sortBy": [{"displayName": "CLOSE_WAIT sockets", "desc": True}]},
                  overrides=[{"matcher": {"id": "byName", "options": "Oldest age"},
                              "properties": [{"id": "unit", "value": "s"},
                                             {"id": "thresholds", "value": thresholds((600, RED))},
                                             {"id": "custom.cellOptions", "value": {"type": "color-text"}}]},
                             {"matcher": {"id": "byName", "options": "CLOSE_WAIT sockets"},
                              "properties": [{"id": "thresholds", "value": thresholds((20, ORANGE), (100, RED))},
                                             {"id": "custom.cellOptions", "value": {"type": "color-text"}}]}])
    return dashboard("tcpwatch-close-wait", "tcpwatch / CLOSE_WAIT leaks",
                     "Which processes hold sockets their peers closed, for how long, and whether it grows.", [
        panel("text", "What CLOSE_WAIT means, and what to do", "How to read this dashboard.", [],
              width=10, height=10, options={"mode": "markdown", "content": CLOSE_WAIT_TEXT}),
        table,
        timeseries("CLOSE_WAIT sockets per process",
                   "The trend per process. A line that only rises is a leak; a busy server's line "
                   "goes up and down.",
                   [target(f"{count} > 0", "{{process}} {{netns}} {{instance}}")],
                   defaults={"thresholds": thresholds((20, ORANGE)),
                             "custom": {"thresholdsStyle": {"mode": "line"}}}),
        timeseries("Oldest CLOSE_WAIT age per process",
                   "How long the oldest CLOSE_WAIT socket of each process has waited. A leak grows "
                   "with the clock. The alert threshold is 10 minutes.",
                   [target(age, "{{process}} {{netns}} {{instance}}")], unit="s",
                   defaults={"thresholds": thresholds((600, RED)),
                             "custom": {"thresholdsStyle": {"mode": "line"}}}),
        timeseries("CLOSE_WAIT toward each upstream port (client side)",
                   "CLOSE_WAIT sockets of connections this host opened, by the remote port they go "
                   "to (5432 PostgreSQL, 6379 Redis, 443 HTTPS, ...): a pile toward one port is a "
                   "connection pool that keeps connections the upstream closed.",
                   [target(f'sum by (instance, netns, port) (tcpwatch_port_sockets{{{SEL}, side="client", '
                           f'state="close_wait"}}) > 0', "{{port}} {{netns}} {{instance}}")],
                   width=12),
        timeseries("CLOSE_WAIT on each service port (server side)",
                   "CLOSE_WAIT sockets of connections clients made to a port this host listens on: "
                   "the service on that port does not close connections its clients closed.",
                   [target(f'sum by (instance, netns, port) (tcpwatch_port_sockets{{{SEL}, side="server", '
                           f'state="close_wait"}}) > 0', "{{port}} {{netns}} {{instance}}")],
                   width=12),
        heatmap("Time in CLOSE_WAIT of closed sockets",
                "How long sockets that did leave CLOSE_WAIT stayed in it. Leaked sockets never "
                "leave, so they are not here: they are in the age panel.", "close_wait"),
        quantiles("Time in CLOSE_WAIT, percentiles",
                  "Median, 90th and 99th percentile of time in CLOSE_WAIT, observed when the "
                  "application finally called close().", ["close_wait"]),
        stat("CLOSE_WAIT sockets on the selected hosts",
             "All processes together.", [target(f'sum(tcpwatch_sockets{{{SEL}, state="close_wait"}})')],
             width=24, defaults={"thresholds": thresholds((100, ORANGE), (1000, RED))}),
    ])


DASHBOARDS = {"tcpwatch-overview.json": overview, "tcpwatch-close-wait.json": close_wait}


def render(build) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    for name, build in DASHBOARDS.items():
        (HERE / name).write_text(render(build))
        print(f"wrote dashboards/{name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
