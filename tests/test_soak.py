"""Soak: a steady 100k sockets, connection churn and a scrape every second. RSS and threads
stay flat, label sets and eBPF maps stay within their caps, every scrape succeeds.

Bounded: TCPWATCH_SOAK_SECONDS (default 120) of scraping, after about 30 s of set-up. Run
longer with e.g. TCPWATCH_SOAK_SECONDS=1800 make test ARGS="-k soak -s".
"""

import json
import os
import shutil
import statistics
import subprocess
import time

import pytest

from helpers import PYTHON, ROOT, in_netns, series, value

pytestmark = [pytest.mark.root, pytest.mark.slow]

SOAK_SECONDS = float(os.environ.get("TCPWATCH_SOAK_SECONDS", "120"))
WORKERS, PAIRS_PER_WORKER = 6, 8334            # 100,008 sockets; 16,668 fds per worker (< 20,000)
MAX_SOCKETS, MAX_SERIES, MAX_PORTS = 4096, 5, 4


def status_field(pid, name):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise KeyError(name)


def map_entries(name):
    """Entries in the eBPF map called ``name`` (bpftool), or None without bpftool."""
    if not shutil.which("bpftool"):
        return None
    maps = json.loads(subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True, text=True,
                                     check=True).stdout)
    ids = [m["id"] for m in maps if m.get("name") == name]
    if not ids:
        return None
    assert len(ids) == 1, ids
    dump = subprocess.run(["bpftool", "-j", "map", "dump", "id", str(ids[0])], capture_output=True,
                          text=True, check=True).stdout
    return len(json.loads(dump))


def test_soak_steady_100k_sockets_with_churn(netns, daemons, workloads):
    daemon = daemons("--ebpf", "on", "--collector.bpf.max-sockets", str(MAX_SOCKETS),
                     "--collector.process.max-series", str(MAX_SERIES),
                     "--collector.listen.max-ports", str(MAX_PORTS), netns=netns)
    holders = []
    try:
        for n in range(WORKERS):
            holders.append(subprocess.Popen(in_netns(netns, [PYTHON, str(ROOT / "bench" / "hold_sockets.py"),
                                                              str(PAIRS_PER_WORKER), f"127.0.0.{n + 1}"]),
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for holder in holders:
            assert holder.stdout.readline().strip() == "ready"
        churn = workloads("traffic", netns=netns, rounds=1_000_000, count=50, close=5, seconds=0,
                          comm="churner")
        pid = daemon.proc.pid
        rss, threads, took = [], [], []
        deadline = time.monotonic() + SOAK_SECONDS
        while time.monotonic() < deadline:
            started = time.monotonic()
            samples = daemon.scrape()
            took.append(time.monotonic() - started)
            for collector in ("inet_diag", "process", "ebpf"):
                assert value(samples, "tcpwatch_scrape_collector_success", collector=collector) == 1
            assert len({dict(k)["process"] for k in series(samples, "tcpwatch_process_sockets")}) <= MAX_SERIES + 1
            assert len(series(samples, "tcpwatch_listen_queue_length")) <= MAX_PORTS + 1
            rss.append(status_field(pid, "VmRSS") / 1024)
            threads.append(status_field(pid, "Threads"))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        assert churn.proc.poll() is None, "the churn ended early"
        established = value(samples, "tcpwatch_sockets", family="ipv4", state="established")
        transitions = sum(series(samples, "tcpwatch_state_transitions_total").values())
        entries = map_entries("socket_states")   # classic mode only: None in tp_btf mode
    finally:
        for holder in holders:
            holder.stdin.close()
        for holder in holders:
            holder.wait(timeout=60)

    half = len(rss) // 2
    report = (f"soak: {len(rss)} scrapes over {SOAK_SECONDS:.0f} s with {established:.0f} established sockets "
              f"and {transitions:.0f} transitions; RSS min/max {min(rss):.0f}/{max(rss):.0f} MB "
              f"(first half max {max(rss[:half]):.0f}, second half max {max(rss[half:]):.0f}); "
              f"threads min/max {min(threads)}/{max(threads)}; scrape median/max "
              f"{statistics.median(took):.2f}/{max(took):.2f} s; socket_states entries {entries} of {MAX_SOCKETS}")
    print(report)
    assert established >= 2 * WORKERS * PAIRS_PER_WORKER
    assert max(rss[half:]) - max(rss[:half]) < 16, report      # flat: no growth after the first half
    assert max(threads) - min(threads) <= 4, report              # the HTTP threads of one scrape at a time
    assert entries is None or entries <= MAX_SOCKETS, report
