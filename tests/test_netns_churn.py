"""Pods come and go: tcpwatch reads every namespace while 50 short-lived ones (0.1 to 1.5 s
each, made with unshare) make a known number of connections. Nothing is lost, no counter
goes down, and nothing of the gone namespaces is left behind."""

import json
import os
import random
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest

from helpers import PYTHON, parse_metrics, value, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

SHORT_NETNS = str(Path(__file__).parent / "short_netns.py")
PORT = 22100            # only this port is timed: other activity on the host does not count
NAMESPACES = 50
CONNECTIONS = 6         # per namespace; 10 state changes each, plus the listener's 2
COUNTERS = ("_total", "_bucket", "_count", "_sum")


def counter_series(samples):
    return {key: v for key, v in samples.items() if key[0].startswith("tcpwatch_") and key[0].endswith(COUNTERS)}


def total(samples, name, **labels):
    return value(samples, name, **labels) or 0


def test_pods_coming_and_going_lose_no_count(daemons):
    daemon = daemons("--ebpf", "on", "--collector.bpf.ports", f"{PORT}-{PORT}", "--no-collector.port")
    pid = daemon.proc.pid

    def scrape():
        return parse_metrics(urllib.request.urlopen(daemon.url(), timeout=20).read().decode())

    before = scrape()
    fds_before = len(os.listdir(f"/proc/{pid}/fd"))
    tracked_before = value(before, "tcpwatch_ebpf_netns_tracked")
    scrapes, stop = [before], threading.Event()

    def scraper():
        while not stop.wait(0.5):
            scrapes.append(scrape())

    thread = threading.Thread(target=scraper)
    thread.start()
    rng, inodes = random.Random(17), []
    try:
        for _ in range(NAMESPACES):   # bounded: one namespace at a time, each ends by itself
            out = subprocess.run(
                ["unshare", "--net", PYTHON, SHORT_NETNS, "--count", str(CONNECTIONS), "--port", str(PORT),
                 "--lifetime", f"{rng.uniform(0.1, 1.5):.2f}"], capture_output=True, text=True, check=True, timeout=30)
            inodes.append(json.loads(out.stdout)["inode"])
    finally:
        stop.set()
        thread.join(30)
    # Two scrapes that miss a namespace with no new events give its slot back.
    after = wait_for(lambda: (lambda s: s if value(s, "tcpwatch_ebpf_netns_tracked") <= tracked_before else None)(
        scrape()), timeout=20, what="the gone namespaces' slots released")
    scrapes.append(after)

    for earlier, later in zip(scrapes, scrapes[1:]):
        old, new = counter_series(earlier), counter_series(later)
        lowered = {key: (old[key], v) for key, v in new.items() if key in old and v < old[key]}
        assert not lowered, lowered
        assert sum(new.values()) >= sum(old.values())

    connections = NAMESPACES * CONNECTIONS
    grown = (total(after, "tcpwatch_state_transitions_total") - total(before, "tcpwatch_state_transitions_total"))
    assert grown == 10 * connections + 2 * NAMESPACES
    for state, per_connection in (("syn_sent", 1), ("established", 2), ("fin_wait1", 1), ("close_wait", 1),
                                  ("last_ack", 1)):
        count = "tcpwatch_state_duration_seconds_count"
        assert total(after, count, state=state) - total(before, count, state=state) == per_connection * connections, state
    assert total(after, "tcpwatch_state_transitions_total", netns="gone") > 0

    ours = {f"netns-{inode}" for inode in inodes}
    labels = {dict(key[1]).get("netns") for key in after}
    assert not {label for label in labels if label and label.split("~")[0] in ours}
    assert value(after, "tcpwatch_ebpf_untracked_total", reason="netns_full") == 0
    assert len(os.listdir(f"/proc/{pid}/fd")) <= fds_before + 1
    assert len(set(inodes)) < len(inodes), "the kernel reused no namespace inode this time"
