#!/usr/bin/env python3
"""What attaching costs a connection-heavy workload: tcpwatch against bcc's tcpstates.

    .venv/bin/python bench/churn_cost.py [--seconds 5] [--repeat 3]

bench/churn.c (compiled here with gcc) opens and closes loopback connections in one thread
as fast as it can, 10 state transitions each, for a bounded time and count. It runs with
nothing attached, with `tcpwatch run` (scraped every second, with and without TIME_WAIT
timing), and with the distribution's tcpstates-bpfcc, each in a fresh network namespace.
Printed: connections/s (median), the ratio to the unattached rate, the CPU the tool used
during the run, and the extra kernel time per transition in the traced thread, derived from
the rate difference. Needs root, gcc, bpfcc-tools, and the set-up of `make run`.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
TRANSITIONS_PER_CONNECTION = 10


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def churn(binary, seconds, netns):
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        out = subprocess.run(["ip", "netns", "exec", netns, binary, str(seconds), "50000000"],
                             check=True, capture_output=True, text=True, timeout=seconds + 60).stdout
        return float(out.split()[2])
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


class Tcpwatch:
    def __init__(self, *flags):
        self.url = "http://127.0.0.1:19791/metrics"
        self.proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "tcpwatch"), "run", "--ebpf", "on",
                                      "--web.listen-address", "127.0.0.1:19791", "--log.level", "error",
                                      *flags])
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("tcpwatch did not start")
                time.sleep(0.2)
        self._stop = threading.Event()
        self._scraper = threading.Thread(target=self._scrape_every_second, daemon=True)
        self._scraper.start()

    def _scrape_every_second(self):
        while not self._stop.wait(1.0):
            try:
                urllib.request.urlopen(self.url, timeout=10).read()
            except OSError:
                pass

    def close(self):
        self._stop.set()
        self._scraper.join(5)
        self.proc.terminate()
        self.proc.wait(10)


class Tcpstates:
    def __init__(self):
        tool = shutil.which("tcpstates-bpfcc") or "/usr/sbin/tcpstates-bpfcc"
        self.proc = subprocess.Popen([tool], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.proc.stdout.readline()   # its header: attached
        self._drain = threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True)
        self._drain.start()

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


def measure(binary, seconds, repeat, tool_factory, label):
    rates, cpus = [], []
    for i in range(repeat):
        tool = tool_factory() if tool_factory else None
        pid = tool.proc.pid if tool else None
        cpu0 = cpu_seconds(pid) if pid else 0.0
        try:
            rates.append(churn(binary, seconds, f"tcpw-churn-{os.getpid()}-{i}"))
            cpus.append((cpu_seconds(pid) - cpu0) / seconds if pid else 0.0)
        finally:
            if tool:
                tool.close()
    return label, statistics.median(rates), statistics.median(cpus)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        binary = os.path.join(tmp, "churn")
        subprocess.run(["gcc", "-O2", "-o", binary, str(ROOT / "bench" / "churn.c")], check=True)
        results = [
            measure(binary, args.seconds, args.repeat, None, "nothing attached"),
            measure(binary, args.seconds, args.repeat, Tcpwatch, "tcpwatch run"),
            measure(binary, args.seconds, args.repeat, lambda: Tcpwatch("--no-collector.bpf.time-wait"),
                    "tcpwatch, no TIME_WAIT timing"),
            measure(binary, args.seconds, args.repeat, Tcpstates, "tcpstates-bpfcc"),
        ]
    base = results[0][1]
    print(f"connection churn, one thread on loopback, median of {args.repeat} x {args.seconds:g} s")
    print(f"{'':32} {'conn/s':>10} {'ratio':>7} {'tool CPU':>9} {'ns/transition':>14}")
    for label, rate, cpu in results:
        extra = (1 / rate - 1 / base) / TRANSITIONS_PER_CONNECTION * 1e9 if rate != base else 0.0
        print(f"{label:32} {rate:>10.0f} {rate / base:>6.2f}x {cpu * 100:>8.1f}% {extra:>14.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
