"""tcpwatch's per-state counts equal ``ss -tan``'s for real sockets in a private netns."""

import json
import os

import pytest

from helpers import ss_counts, tcpwatch, wait_for

pytestmark = pytest.mark.root


def own_namespace(netns, *flags):
    """The report of ``tcpwatch snapshot --json`` for the test's namespace, found by inode."""
    inode = os.stat(f"/run/netns/{netns}").st_ino
    report = json.loads(tcpwatch(netns, "snapshot", "--json", *flags).stdout)
    return next(ns for ns in report["namespaces"] if ns["inode"] == inode)


@pytest.mark.parametrize("family", [4, 6])
def test_counts_match_ss_in_every_state(netns, workloads, family):
    k = 7
    load = workloads("states", netns=netns, family=family, count=k)
    expected = load.info["expected"]
    label = f"ipv{family}"

    def agreed():
        ours = own_namespace(netns)["sockets"][label]
        theirs = ss_counts(netns, family)
        wanted = all(ours[state] == n for state, n in expected.items())
        return (ours, theirs) if ours == theirs and wanted else None

    ours, theirs = wait_for(agreed, timeout=15, interval=0.2, what="tcpwatch == ss == expected")
    assert ours == theirs
    for state, n in expected.items():
        assert ours[state] == n, state
    other = "ipv6" if family == 4 else "ipv4"
    assert sum(own_namespace(netns)["sockets"][other].values()) == 0


def test_snapshot_table_names_close_wait_owner_and_queue(netns, workloads):
    leak = workloads("leak", netns=netns, count=3, comm="snapleak")
    out = wait_for(lambda: (lambda o: o if "snapleak" in o else None)(tcpwatch(netns, "snapshot").stdout),
                   what="owner in snapshot")
    assert "close_wait" in out
    row = [line for line in out.splitlines() if "snapleak" in line][0]
    assert row.split() == ["snapleak", "3"]
    assert str(leak.info["port"]) in out
