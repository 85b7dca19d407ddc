#!/usr/bin/env python3
"""What attaching costs a connection-heavy workload: tcpwatch in each attach mode against
bcc's tcpstates and against the floor (a program that only counts).

    .venv/bin/python bench/churn_cost.py [--seconds 5] [--repeat 5] [--no-stats]

bench/churn.c (compiled here with gcc) opens and closes loopback connections in one thread
as fast as it can, 10 state transitions each, for a bounded time and count, in a fresh
network namespace per run. Variants, measured in the same run, in rounds whose order rotates
(so that drift of the machine spreads over all of them):
  - nothing attached;
  - `tcpwatch run` with --collector.bpf.attach tp_btf and tracepoint, each with and without
    TIME_WAIT timing, scraped every second;
  - the distribution's tcpstates-bpfcc;
  - bench/floor.py: one per-CPU counter on the same hook, in each attach mode.
Printed per variant: connections/s (median), the ratio to the unattached median, the CPU
the tool's process used, and the extra kernel time per transition in the churning thread,
derived from the rate difference.

Then, unless --no-stats, one more run per tcpwatch mode with kernel.bpf_stats_enabled=1:
run time and run count of each of tcpwatch's programs (bpftool prog show), so that every
nanosecond is put on a program. (bpf_stats itself costs two clock reads per run, so those
rates are not used for the ratios.) Needs root, gcc, bpftool, bpfcc-tools, `make run` set-up.
"""

import argparse
import json
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
PYTHON = str(ROOT / ".venv" / "bin" / "python")
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


class Held:
    """A tool that prints one line once attached and runs until stopped."""

    def __init__(self, argv, stdin=False):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, text=True)
        if not self.proc.stdout.readline():
            raise SystemExit(f"{argv[0]} did not start")
        self._drain = threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True)
        self._drain.start()

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


def tcpstates():
    return Held([shutil.which("tcpstates-bpfcc") or "/usr/sbin/tcpstates-bpfcc"])   # its header: attached


def floor(mode):
    return lambda: Held([PYTHON, str(ROOT / "bench" / "floor.py"), mode], stdin=True)


def variants():
    def tcpwatch(mode, time_wait):
        return lambda: Tcpwatch("--collector.bpf.attach", mode,
                                *([] if time_wait else ["--no-collector.bpf.time-wait"]))

    return [
        ("nothing attached", None),
        ("floor: counter only, tp_btf", floor("tp_btf")),
        ("floor: counter only, tracepoint", floor("tracepoint")),
        ("tcpwatch tp_btf", tcpwatch("tp_btf", True)),
        ("tcpwatch tp_btf, no TIME_WAIT", tcpwatch("tp_btf", False)),
        ("tcpwatch tracepoint", tcpwatch("tracepoint", True)),
        ("tcpwatch tracepoint, no TIME_WAIT", tcpwatch("tracepoint", False)),
        ("tcpstates-bpfcc", tcpstates),
    ]


def run_once(binary, seconds, factory, netns):
    tool = factory() if factory else None
    pid = tool.proc.pid if tool else None
    try:
        cpu0 = cpu_seconds(pid) if pid else 0.0
        rate = churn(binary, seconds, netns)
        cpu = (cpu_seconds(pid) - cpu0) / seconds if pid else 0.0
    finally:
        if tool:
            tool.close()
    return rate, cpu


def program_stats(pid):
    """{(id, name): (run_time_ns, run_cnt)} of the programs process pid holds, from the
    fdinfo of its program fds (bpftool here cannot tell which process holds a program)."""
    names = {p["id"]: p.get("name", "?") for p in json.loads(
        subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout)}
    stats = {}
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            fields = dict(line.split(":\t", 1) for line in info.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if "run_cnt" in fields:   # a program fd (a link fd names its program too, without stats)
            prog = int(fields["prog_id"])
            stats[(prog, names.get(prog, "?"))] = (int(fields.get("run_time_ns", 0)), int(fields.get("run_cnt", 0)))
    return stats


def per_program_cost(binary, seconds, mode):
    """Where each nanosecond goes in one tcpwatch mode, with kernel.bpf_stats_enabled=1."""
    tool = Tcpwatch("--collector.bpf.attach", mode)
    try:
        before = program_stats(tool.proc.pid)
        rate = churn(binary, seconds, f"tcpw-stats-{os.getpid()}")
        after = program_stats(tool.proc.pid)
    finally:
        tool.close()
    rows = []
    for key, (run_ns, runs) in sorted(after.items()):
        ns0, runs0 = before.get(key, (0, 0))
        rows.append((key[1], runs - runs0, (run_ns - ns0) / max(1, runs - runs0), run_ns - ns0))
    return rate, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-stats", action="store_true", help="skip the per-program bpf_stats pass")
    args = parser.parse_args()
    chosen = variants()
    rates = {label: [] for label, _ in chosen}
    cpus = {label: [] for label, _ in chosen}
    with tempfile.TemporaryDirectory() as tmp:
        binary = os.path.join(tmp, "churn")
        subprocess.run(["gcc", "-O2", "-o", binary, str(ROOT / "bench" / "churn.c")], check=True)
        for round_ in range(args.repeat):
            order = chosen[round_ % len(chosen):] + chosen[:round_ % len(chosen)]
            for i, (label, factory) in enumerate(order):
                rate, cpu = run_once(binary, args.seconds, factory, f"tcpw-churn-{os.getpid()}-{round_}-{i}")
                rates[label].append(rate)
                cpus[label].append(cpu)
        stats = {}
        if not args.no_stats:
            setting = Path("/proc/sys/kernel/bpf_stats_enabled")
            previous = setting.read_text().strip()
            setting.write_text("1")
            try:
                for mode in ("tp_btf", "tracepoint"):
                    stats[mode] = per_program_cost(binary, args.seconds, mode)
            finally:
                setting.write_text(previous)

    base = statistics.median(rates["nothing attached"])
    print(f"connection churn, one thread on loopback, median of {args.repeat} rounds x {args.seconds:g} s, "
          f"order rotated per round")
    print(f"{'':36} {'conn/s':>10} {'ratio':>7} {'tool CPU':>9} {'ns/transition':>14}")
    for label, _ in chosen:
        rate = statistics.median(rates[label])
        extra = (1 / rate - 1 / base) / TRANSITIONS_PER_CONNECTION * 1e9 if rate != base else 0.0
        print(f"{label:36} {rate:>10.0f} {rate / base:>6.3f}x {statistics.median(cpus[label]) * 100:>8.1f}% "
              f"{extra:>14.0f}")
    lost = {label: 1 - statistics.median(rates[label]) / base for label, _ in chosen}
    print(f"lost throughput, tcpwatch tp_btf / tcpstates-bpfcc: "
          f"{lost['tcpwatch tp_btf'] / lost['tcpstates-bpfcc']:.3f}")
    for mode, (rate, rows) in stats.items():
        connections = rate * args.seconds
        print(f"\nbpf_stats, tcpwatch {mode} ({rate:.0f} conn/s with stats on): ns per run, per connection")
        for name, runs, ns_per_run, total_ns in rows:
            print(f"  {name:18} {runs:>10} runs {ns_per_run:>8.0f} ns/run {total_ns / connections:>8.0f} ns/conn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
