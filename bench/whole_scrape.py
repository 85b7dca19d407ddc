#!/usr/bin/env python3
"""One daemon's whole scrape with K network namespaces whose eBPF counters are all live.

    .venv/bin/python bench/whole_scrape.py                 # K = 100, 1,000 sockets each
    .venv/bin/python bench/whole_scrape.py --k 50 --repeat 7
    .venv/bin/python bench/whole_scrape.py --child-ehash 0   # every namespace in the shared hash

K namespaces are made with per-namespace socket hashes (net.ipv4.tcp_child_ehash_entries,
set for the run and put back), each holding bench/mix_worker.py's realistic mix. The daemon
(`tcpwatch run`, every collector, eBPF on) starts first, then every worker makes its
TIME_WAIT sockets again, so that the program has transitions and durations in every
namespace: the exposition then holds every namespace's histograms, as on a busy node. It
measures the daemon counting with the eBPF socket iterator, then with inet_diag. It
prints each scrape's wall time, the lines of exposition and the collectors' own durations,
and, in the same run, node_exporter's tcpstat scrape of tcpwatch's host namespace as the
peer. Needs root, iproute2 (and prometheus-node-exporter for the peer line).
"""

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from netns_cost import Worker, netns_add   # bench/ is this script's first import path
from scrape_cost import wait_http

ROOT = Path(__file__).resolve().parent.parent
DURATION = re.compile(r'tcpwatch_scrape_collector_duration_seconds\{collector="(\w+)"\} (\S+)')


def scrape(url):
    started = time.perf_counter()
    body = urllib.request.urlopen(url, timeout=120).read().decode()
    return time.perf_counter() - started, body


# The whole scrape with each way of counting sockets, in the same run.
COUNTING = (("counting by eBPF iterator", []),
            ("counting by inet_diag", ["--no-collector.bpf.socket-iterator"]))


def measure(label, flags, workers, repeat, daemons):
    """Start the daemon with ``flags``, make traffic it sees in every namespace, scrape."""
    tcpwatch = subprocess.Popen([str(ROOT / ".venv" / "bin" / "tcpwatch"), "run", "--log.level", "error",
                                 "--web.listen-address", "127.0.0.1:19798", *flags], stderr=subprocess.DEVNULL)
    daemons.append(tcpwatch)
    try:
        url = "http://127.0.0.1:19798/metrics"
        wait_http(url, 120)
        for w in workers:          # traffic the program sees: every namespace's counters live
            w.refresh_time_wait()
        for w in workers:
            w.ready()
        scrape(url)                # warm-up: the namespaces are entered here
        walls = []
        print(f" {label}")
        for _ in range(repeat):
            wall, body = scrape(url)
            walls.append(wall)
            durations = {name: round(float(v), 3) for name, v in DURATION.findall(body)}
            print(f"  whole scrape {wall:.3f} s, {body.count(chr(10))} lines, collectors {durations}", flush=True)
        print(f"  median {statistics.median(walls):.3f} s (min {min(walls):.3f}, max {max(walls):.3f})")
    finally:
        tcpwatch.terminate()
        tcpwatch.wait(10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--per-netns", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child-ehash", type=int, default=1024)
    args = parser.parse_args()
    old = subprocess.run(["sysctl", "-n", "net.ipv4.tcp_child_ehash_entries"], capture_output=True,
                         text=True).stdout.strip() or "0"
    names = [f"tcpw-whole-{i}" for i in range(args.k)]
    workers, daemons = [], []
    try:
        subprocess.run(["sysctl", "-qw", f"net.ipv4.tcp_child_ehash_entries={args.child_ehash}"], check=True)
        for name in names:
            netns_add(name)
            workers.append(Worker(name, args.per_netns))
        for w in workers:
            w.ready()
        hashes = f"per-namespace hashes ({args.child_ehash} buckets)" if args.child_ehash else "the shared hash"
        print(f"tcpwatch, K={args.k} namespaces x {args.per_netns} sockets, {hashes}")
        for label, flags in COUNTING:
            measure(label, flags, workers, args.repeat, daemons)
        node = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
        if node:
            peer = subprocess.Popen([node, "--collector.disable-defaults", "--collector.tcpstat",
                                     "--web.listen-address", "127.0.0.1:19797"], stderr=subprocess.DEVNULL)
            daemons.append(peer)
            wait_http("http://127.0.0.1:19797/metrics")
            peer_wall = statistics.median(scrape("http://127.0.0.1:19797/metrics")[0] for _ in range(args.repeat))
            print(f"node_exporter tcpstat (its own namespace only): {peer_wall:.3f} s")
    finally:
        for proc in daemons:
            proc.terminate()
            proc.wait(10)
        for w in workers:
            w.stop()
        for name in names:
            subprocess.run(["ip", "netns", "del", name])
        subprocess.run(["sysctl", "-qw", f"net.ipv4.tcp_child_ehash_entries={old}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
