"""The collector on injected sources: exposition, failure isolation, concurrent scrapes."""

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from helpers import parse_metrics, value
from tcpwatch import histograms, states
from tcpwatch.collector import CollectorOptions, TcpCollector
from tcpwatch.scan import single_namespace
from tcpwatch.model import BpfReading, CloseWaitSocket, NetnsActivity, DiagSnapshot, Endpoint, Listener
from tcpwatch.sources.processes import OwnerScan

GOLDEN = Path(__file__).parent / "golden" / "metrics.prom"
LOCAL = socket.inet_aton("127.0.0.1")


def hand_built_snapshot():
    snap = DiagSnapshot(netns_inode=4026531840)
    for family in states.FAMILIES:
        for state in states.REPORTED:
            snap.counts[(family, state)] = 0
    snap.counts.update({("ipv4", states.LISTEN): 1, ("ipv4", states.ESTABLISHED): 2,
                        ("ipv4", states.CLOSE_WAIT): 2, ("ipv6", states.TIME_WAIT): 4})
    snap.listeners = [Listener(Endpoint("ipv4", bytes(4), 8080), 1, 1, 128)]
    snap.inode_states = {1: states.LISTEN, 2: states.ESTABLISHED, 3: states.ESTABLISHED,
                         4: states.CLOSE_WAIT}
    snap.unaccepted = Counter({(Endpoint("ipv4", LOCAL, 8080), states.CLOSE_WAIT): 1})
    snap.close_wait = [CloseWaitSocket(40, 4, Endpoint("ipv4", LOCAL, 8080), LOCAL, 50000),
                       CloseWaitSocket(41, 0, Endpoint("ipv4", LOCAL, 8080), LOCAL, 50001)]
    snap.time_wait_min_remaining_ms = 45000
    snap.server_ports = Counter({(8080, states.CLOSE_WAIT): 2})
    snap.client_ports = Counter({(5432, states.ESTABLISHED): 2, (443, states.TIME_WAIT): 4})
    return snap


def hand_built_reading():
    """Four handshakes of about 0.6 ms, one failed; socket 40 entered CLOSE_WAIT at t=900 s."""
    slots = [0] * histograms.SLOTS
    slots[20 - histograms.FIRST_SLOT] = 4
    return BpfReading(
        attach_mode="tp_btf", attach_reason="btf",
        netns={4026531840: NetnsActivity(
            transitions=Counter({(states.CLOSE, states.SYN_SENT): 5, (states.SYN_SENT, states.ESTABLISHED): 4,
                                 (states.SYN_SENT, states.CLOSE): 1, (states.ESTABLISHED, states.SYN_SENT): 0}),
            duration_slots={states.SYN_SENT: slots},
            duration_sum_ns=Counter({states.SYN_SENT: 4 * 600_000}),
            counters=Counter({"retransmits": 7, "resets_sent": 1})),
            0: NetnsActivity(counters=Counter({"resets_received": 3}))},   # unknown namespace: "other"
        counters={"unknown_socket": 2, "netns_tracked": 1},
        close_wait_entered_ns={40: 900 * 10**9})


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def registry_for(dump, scan, clock=None, options=CollectorOptions(), bpf_read=None):
    registry = CollectorRegistry()
    collector = TcpCollector(options, single_namespace(dump, lambda: 28232), scan, clock or Clock(), bpf_read)
    registry.register(collector)
    return registry, collector


def owners(inodes):
    return OwnerScan(owners={1: "web", 2: "web", 4: "web", 3: "client"})


def normalised(text):
    return re.sub(r"(tcpwatch_scrape_collector_duration_seconds\{[^}]*\}) \S+", r"\1 0.0", text)


def test_golden_exposition():
    clock = Clock()
    registry, _ = registry_for(lambda want, **_: hand_built_snapshot(), owners, clock,
                               bpf_read=hand_built_reading)
    generate_latest(registry)
    clock.now += 42.0
    text = normalised(generate_latest(registry).decode())
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian's prometheus) not installed")
def test_golden_exposition_passes_promtool():
    result = subprocess.run(["promtool", "check", "metrics"], input=GOLDEN.read_text(),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ebpf_entry_time_makes_close_wait_age_exact():
    clock = Clock()
    registry, _ = registry_for(lambda want, **_: hand_built_snapshot(), owners, clock,
                               bpf_read=hand_built_reading)
    samples = parse_metrics(generate_latest(registry).decode())
    # socket 40 entered CLOSE_WAIT at 900 s by the program's clock; the scrape is at 1000 s
    assert value(samples, "tcpwatch_state_oldest_age_seconds", state="close_wait", process="web") == 100.0
    assert value(samples, "tcpwatch_state_oldest_age_seconds", state="time_wait", process="[kernel]") == 15.0
    assert value(samples, "tcpwatch_ebpf_enabled") == 1
    assert value(samples, "tcpwatch_state_transitions_total", **{"from": "syn_sent", "to": "established"}) == 4
    assert value(samples, "tcpwatch_state_transitions_total", **{"from": "listen", "to": "syn_recv"}) == 0
    assert value(samples, "tcpwatch_state_duration_seconds_count", state="syn_sent") == 4
    assert value(samples, "tcpwatch_state_duration_seconds_sum", state="syn_sent") == 0.0024
    assert value(samples, "tcpwatch_state_duration_seconds_bucket", state="syn_sent", le="0.000524288") == 0
    assert value(samples, "tcpwatch_state_duration_seconds_bucket", state="syn_sent", le="0.001048576") == 4
    assert value(samples, "tcpwatch_resets_total", direction="received") == 3


def test_without_ebpf_the_gauge_says_so():
    registry, _ = registry_for(lambda want, **_: hand_built_snapshot(), owners)
    samples = parse_metrics(generate_latest(registry).decode())
    assert value(samples, "tcpwatch_ebpf_enabled") == 0
    assert not [k for k in samples if k[0] == "tcpwatch_state_transitions_total"]


def test_close_wait_age_grows_between_scrapes_and_is_owned():
    clock = Clock()
    registry, _ = registry_for(lambda want, **_: hand_built_snapshot(), owners, clock)
    parse_metrics(generate_latest(registry).decode())
    clock.now += 7.5
    samples = parse_metrics(generate_latest(registry).decode())
    assert value(samples, "tcpwatch_state_oldest_age_seconds", state="close_wait", process="web") == 7.5
    assert value(samples, "tcpwatch_process_sockets", process="web", state="close_wait") == 2
    assert value(samples, "tcpwatch_process_sockets", process="[kernel]", state="time_wait") == 4


def test_failed_dump_fails_both_collectors_but_the_scrape_answers():
    def broken(want, **_):
        raise OSError("netlink went away")

    registry, _ = registry_for(broken, owners)
    samples = parse_metrics(generate_latest(registry).decode())
    assert value(samples, "tcpwatch_scrape_collector_success", collector="inet_diag") == 0
    assert value(samples, "tcpwatch_scrape_collector_success", collector="process") == 0
    assert not [k for k in samples if k[0] == "tcpwatch_sockets"]
    assert value(samples, "tcpwatch_build_info", version=__import__("tcpwatch").__version__) == 1


def test_failed_owner_scan_leaves_socket_counts():
    def broken(inodes):
        raise PermissionError("no /proc")

    registry, _ = registry_for(lambda want, **_: hand_built_snapshot(), broken)
    samples = parse_metrics(generate_latest(registry).decode())
    assert value(samples, "tcpwatch_scrape_collector_success", collector="inet_diag") == 1
    assert value(samples, "tcpwatch_scrape_collector_success", collector="process") == 0
    assert value(samples, "tcpwatch_sockets", family="ipv4", state="established") == 2


def test_concurrent_scrapes_share_one_dump():
    dumps = []
    gate = threading.Event()

    def slow_dump(want, **_):
        dumps.append(1)
        gate.wait(5)
        return hand_built_snapshot()

    registry, _ = registry_for(slow_dump, owners, clock=time.monotonic)
    results = []
    threads = [threading.Thread(target=lambda: results.append(generate_latest(registry)))
               for _ in range(20)]
    for t in threads:
        t.start()
    time.sleep(0.2)   # let every scraper arrive while the first dump is held
    gate.set()
    for t in threads:
        t.join(10)
    assert len(results) == 20
    assert len(dumps) == 2   # the one in flight when they arrived, then one shared by all waiters
    assert all(b"tcpwatch_sockets{" in r for r in results)
