"""tcpwatch_port_sockets equals what ``ss`` shows per port in a test namespace, both sides,
with the per-side caps and the allow-list holding."""

import subprocess
from collections import Counter

import pytest

from helpers import SS_STATES, in_netns, wait_for

pytestmark = pytest.mark.root


def ss_ports(netns):
    """{(side, port): Counter(state)} by the exporter's rule, computed from ``ss -tan``:
    a connection on a port the namespace listens on is the server side, by local port;
    any other the client side, by remote port."""
    out = subprocess.run(in_netns(netns, ["ss", "-tanH"]), check=True, capture_output=True,
                         text=True).stdout
    rows = [line.split() for line in out.splitlines()]
    listening = {int(r[3].rpartition(":")[2]) for r in rows if r[0] == "LISTEN"}
    sides = {}
    for r in rows:
        if r[0] == "LISTEN":
            continue
        local, remote = int(r[3].rpartition(":")[2]), int(r[4].rpartition(":")[2])
        key = ("server", local) if local in listening else ("client", remote)
        sides.setdefault(key, Counter())[SS_STATES[r[0]]] += 1
    return sides


def exported_ports(samples, netns):
    """{(side, port label): Counter(state)} of tcpwatch_port_sockets in ``netns``, zeros
    dropped. The daemon runs on the host, reading every namespace: its own HTTP traffic
    is not in the test's namespace."""
    found = {}
    for (name, labels), v in samples.items():
        if name == "tcpwatch_port_sockets":
            labels = dict(labels)
            if labels["netns"] != netns:
                continue
            counts = found.setdefault((labels["side"], labels["port"]), Counter())
            if v:
                counts[labels["state"]] += int(v)
    return found


def test_port_sockets_equal_ss_on_both_sides(netns, workloads, daemons):
    load = workloads("ports", netns=netns, count=2)
    ports = load.info["ports"]
    daemon = daemons("--ebpf", "off")

    def agreed():
        theirs = ss_ports(netns)
        ours = exported_ports(daemon.scrape(), netns)
        want = {(side, str(port)): counts for (side, port), counts in theirs.items()}
        return (ours, want) if ours == want else None

    ours, want = wait_for(agreed, timeout=15, interval=0.3, what="port metrics == ss")
    # What the workload built, as the exporter must show it:
    assert ours[("server", str(ports["web"]))] == {"established": 6}
    assert ours[("server", str(ports["leaky"]))] == {"close_wait": 4}
    assert ours[("client", str(ports["leaky"]))] == {"fin_wait2": 4}
    assert ours[("client", str(ports["upstream"]))] == {"close_wait": 2}   # the pooled leak
    assert ours[("server", str(ports["upstream"]))] == {"fin_wait2": 2}
    assert ours[("client", str(ports["small"]))] == {"established": 1}


def test_port_caps_and_allow_list_hold(netns, workloads, daemons):
    load = workloads("ports", netns=netns, count=2)
    ports = load.info["ports"]
    daemon = daemons("--ebpf", "off", "--collector.port.server-max-ports", "1",
                     "--collector.port.client-max-ports", "2",
                     "--collector.port.include", f"{ports['small']},65000")

    def settled():
        ours = exported_ports(daemon.scrape(), netns)
        return ours if ("server", str(ports["web"])) in ours and ours.get(
            ("server", "other"), Counter())["fin_wait2"] == 2 else None

    ours = wait_for(settled, timeout=15, interval=0.3, what="capped port metrics")
    server = {port for side, port in ours if side == "server"}
    client = {port for side, port in ours if side == "client"}
    # server: web (6) is the top one; small and 65000 allow-listed; leaky + upstream in other
    assert server == {str(ports["web"]), str(ports["small"]), "65000", "other"}
    assert ours[("server", "other")] == {"close_wait": 4, "fin_wait2": 2}
    assert ours[("server", "65000")] == Counter()          # allow-listed, nothing on it: zeros
    # client: web (6) and leaky (4) are the top two; small allow-listed; upstream in other
    assert client == {str(ports["web"]), str(ports["leaky"]), str(ports["small"]), "65000", "other"}
    assert ours[("client", "other")] == {"close_wait": 2}
    # nothing lost: each side's series sum to what ss shows on that side
    theirs = ss_ports(netns)
    for side in ("server", "client"):
        assert (sum((c for (s, _p), c in ours.items() if s == side), Counter())
                == sum((c for (s, _p), c in theirs.items() if s == side), Counter())), side
