#!/usr/bin/env python3
"""What namespaces coming and going cost tcpwatch: CPU per scrape, RSS, fds and eBPF slots
while 5 network namespaces a second are made and end, against the same node idle.

    .venv/bin/python bench/netns_churn_cost.py                  # 3 rounds of 20 s idle + 20 s churn
    .venv/bin/python bench/netns_churn_cost.py --rounds 5 --rate 10

One daemon (`tcpwatch run`, every collector, eBPF on) is scraped once a second. Each round
has an idle phase and a churn phase; in the churn phase a namespace is started every
1/RATE s with `unshare --net` (tests/short_netns.py: 3 loopback connections, then 1 s of
life). The daemon's CPU (utime + stime from /proc/PID/stat) is divided by the scrapes of
the phase; RSS, fds and tcpwatch_ebpf_netns_tracked are read at the phase's end. Medians
over the rounds; the last column is churn / idle. Needs root and iproute2's unshare.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from scrape_cost import wait_http   # bench/ is this script's first import path

ROOT = Path(__file__).resolve().parent.parent
SHORT_NETNS = str(ROOT / "tests" / "short_netns.py")
PORT = 22200
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS   # utime, stime


def rss_mib(pid):
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


def phase(pid, url, seconds, rate):
    """Scrape once a second for ``seconds``; with ``rate``, start that many namespaces a
    second meanwhile (each ends by itself). Bounded by ``seconds``."""
    children, scrapes, tracked = [], 0, 0
    started_cpu, end = cpu_seconds(pid), time.monotonic() + seconds
    next_scrape, next_spawn = time.monotonic(), time.monotonic()
    while time.monotonic() < end:
        now = time.monotonic()
        if rate and now >= next_spawn:
            children.append(subprocess.Popen(
                ["unshare", "--net", sys.executable, SHORT_NETNS, "--count", "3", "--port", str(PORT),
                 "--lifetime", "1.0"], stdout=subprocess.DEVNULL))
            next_spawn += 1 / rate
        if now >= next_scrape:
            body = urllib.request.urlopen(url, timeout=30).read().decode()
            tracked = float(re.search(r"^tcpwatch_ebpf_netns_tracked (\S+)", body, re.M).group(1))
            scrapes += 1
            next_scrape += 1.0
        children = [c for c in children if c.poll() is None]
        time.sleep(0.01)
    for child in children:
        child.wait(10)
    cpu = cpu_seconds(pid) - started_cpu
    return {"cpu_ms_per_scrape": 1000 * cpu / max(scrapes, 1), "rss_mib": rss_mib(pid),
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "slots": tracked}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=5, help="namespaces started per second")
    args = parser.parse_args()
    daemon = subprocess.Popen([str(ROOT / ".venv" / "bin" / "tcpwatch"), "run", "--log.level", "error",
                               "--web.listen-address", "127.0.0.1:19796"], stderr=subprocess.DEVNULL)
    try:
        url = "http://127.0.0.1:19796/metrics"
        wait_http(url, 120)
        phase(daemon.pid, url, 5, 0)   # warm-up
        rows = {"idle": [], "churn": []}
        for n in range(args.rounds):
            rows["idle"].append(phase(daemon.pid, url, args.seconds, 0))
            rows["churn"].append(phase(daemon.pid, url, args.seconds, args.rate))
            print(f"round {n + 1}: idle {rows['idle'][-1]}  churn {rows['churn'][-1]}", flush=True)
        print(f"\ntcpwatch with {args.rate:g} namespaces/s coming and going vs idle, "
              f"median of {args.rounds} rounds of {args.seconds:g} s")
        print(f"{'':20} {'idle':>10} {'churn':>10} {'churn/idle':>11}")
        for key in ("cpu_ms_per_scrape", "rss_mib", "fds", "slots"):
            idle = statistics.median(r[key] for r in rows["idle"])
            churn = statistics.median(r[key] for r in rows["churn"])
            ratio = f"{churn / idle:.2f}" if idle else "-"
            print(f"{key:20} {idle:10.2f} {churn:10.2f} {ratio:>11}")
    finally:
        daemon.terminate()
        daemon.wait(30)


if __name__ == "__main__":
    main()
