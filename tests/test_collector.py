"""The collector on injected sources: exposition, failure isolation, concurrent scrapes."""

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from fixtures import Clock, exporter_for, hand_built_reading, hand_built_snapshot, owners
from helpers import parse_metrics, value

GOLDEN = Path(__file__).parent / "golden" / "metrics.prom"


def normalised(text):
    return re.sub(r"(tcpwatch_scrape_collector_duration_seconds\{[^}]*\}) \S+", r"\1 0.0", text)


def test_golden_exposition():
    clock = Clock()
    registry, _ = exporter_for(hand_built_snapshot, owners, clock, bpf_read=hand_built_reading)
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
    registry, _ = exporter_for(hand_built_snapshot, owners, clock, bpf_read=hand_built_reading)
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
    registry, _ = exporter_for(hand_built_snapshot, owners)
    samples = parse_metrics(generate_latest(registry).decode())
    assert value(samples, "tcpwatch_ebpf_enabled") == 0
    assert not [k for k in samples if k[0] == "tcpwatch_state_transitions_total"]


def test_close_wait_age_grows_between_scrapes_and_is_owned():
    clock = Clock()
    registry, _ = exporter_for(hand_built_snapshot, owners, clock)
    parse_metrics(generate_latest(registry).decode())
    clock.now += 7.5
    samples = parse_metrics(generate_latest(registry).decode())
    assert value(samples, "tcpwatch_state_oldest_age_seconds", state="close_wait", process="web") == 7.5
    assert value(samples, "tcpwatch_process_sockets", process="web", state="close_wait") == 2
    assert value(samples, "tcpwatch_process_sockets", process="[kernel]", state="time_wait") == 4


def test_failed_dump_fails_both_collectors_but_the_scrape_answers():
    def broken():
        raise OSError("netlink went away")

    registry, _ = exporter_for(broken, owners)
    samples = parse_metrics(generate_latest(registry).decode())
    assert value(samples, "tcpwatch_scrape_collector_success", collector="inet_diag") == 0
    assert value(samples, "tcpwatch_scrape_collector_success", collector="process") == 0
    assert not [k for k in samples if k[0] == "tcpwatch_sockets"]
    assert value(samples, "tcpwatch_build_info", version=__import__("tcpwatch").__version__) == 1


def test_failed_owner_scan_leaves_socket_counts():
    def broken(inodes):
        raise PermissionError("no /proc")

    registry, _ = exporter_for(hand_built_snapshot, broken)
    samples = parse_metrics(generate_latest(registry).decode())
    assert value(samples, "tcpwatch_scrape_collector_success", collector="inet_diag") == 1
    assert value(samples, "tcpwatch_scrape_collector_success", collector="process") == 0
    assert value(samples, "tcpwatch_sockets", family="ipv4", state="established") == 2


def test_concurrent_scrapes_share_one_dump():
    dumps = []
    gate = threading.Event()

    def slow_dump():
        dumps.append(1)
        gate.wait(5)
        return hand_built_snapshot()

    registry, _ = exporter_for(slow_dump, owners, clock=time.monotonic)
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
