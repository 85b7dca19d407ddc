#!/usr/bin/env python3
"""What a scrape costs as network namespaces multiply: K namespaces of N sockets each beside
a host namespace of H sockets, every one holding a realistic state mix (bench/mix_worker.py:
ESTABLISHED 40%, TIME_WAIT 20%, CLOSE_WAIT 15%, FIN_WAIT2 15%, SYN_RECV 10%).

    .venv/bin/python bench/netns_cost.py                      # K = 10 50 100 200, N = 1000, H = 10000
    .venv/bin/python bench/netns_cost.py --ks 10 100 --repeat 3
    .venv/bin/python bench/netns_cost.py --child-ehash 1024   # each namespace its own hash

Everything runs inside a "host" namespace made for the run, and K namespaces added to it
step by step (all removed at the end). Measured in the same run, median of --repeat scrapes
after one warm-up scrape:
  tcpwatch whole    the default daemon: every namespace, owners, eBPF
  tcpwatch counts   every namespace, counts only (--no-collector.process --ebpf off)
  tcpwatch host     the host namespace only, counts only (--no-collector.netns ...)
  node_exporter     its tcpstat collector, which sees the host namespace only
  /proc/PID/net     the route without CAP_SYS_ADMIN: /proc/PID/net/tcp and tcp6 of one
                    process per namespace, read and counted per state in Python
Columns: wall time of the HTTP scrape, CPU the process spent on it, and the collector
durations tcpwatch reports (netns: discovery and names; inet_diag: the dumps; process: the
owner walk; ebpf: the maps). Needs root, iproute2, prometheus-node-exporter.

By default every namespace's sockets share the kernel's one TCP hash, and every dump walks
all of it: K namespaces cost K walks of every socket on the host. --child-ehash N sets
net.ipv4.tcp_child_ehash_entries (Linux 6.1+) before the K namespaces are made, so that each
gets its own hash of N buckets and a dump walks only its own sockets.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from scrape_cost import MIX_SYSCTLS, cpu_seconds, wait_http   # bench/ is this script's first import path

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "bench" / "mix_worker.py"
SYSCTLS = MIX_SYSCTLS
PROC_STATES = {"01": "established", "02": "syn_sent", "03": "syn_recv", "04": "fin_wait1",
               "05": "fin_wait2", "06": "time_wait", "07": "close", "08": "close_wait",
               "09": "last_ack", "0A": "listen", "0B": "closing"}


def netns_add(name):
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", *SYSCTLS], check=True)


class Worker:
    def __init__(self, netns, sockets):
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, str(WORKER), str(sockets)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ready(self):
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("a socket-holding worker failed")

    def refresh_time_wait(self):
        self.proc.stdin.write("tw\n")
        self.proc.stdin.flush()

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(30)


def scrape(url, pid, repeat):
    urllib.request.urlopen(url, timeout=60).read()    # warm-up: new namespaces are entered here
    walls, cpus, durations = [], [], {}
    for _ in range(repeat):
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        body = urllib.request.urlopen(url, timeout=60).read().decode()
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds(pid) - cpu0)
        for name, seconds in re.findall(r'_scrape_collector_duration_seconds\{collector="(\w+)"\} (\S+)', body):
            durations.setdefault(name, []).append(float(seconds))
    sockets = sum(float(v) for v in re.findall(r"^tcpwatch_sockets\{[^}]*\} (\S+)", body, re.M))
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "sockets": sockets,
            "collectors": {k: statistics.median(v) for k, v in durations.items()}}


def procfs_route(pids, repeat):
    """Counts per state of every namespace from /proc/PID/net/tcp{,6}: no setns needed."""
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        total = 0
        for pid in pids:
            counts = {}
            for name in ("tcp", "tcp6"):
                with open(f"/proc/{pid}/net/{name}") as f:
                    next(f)
                    for line in f:
                        state = PROC_STATES[line[34:36]] if line[32] == " " else PROC_STATES[line.split()[3]]
                        counts[state] = counts.get(state, 0) + 1
            total += sum(counts.values())
        walls.append(time.perf_counter() - t0)
    return {"wall": statistics.median(walls), "cpu": None, "sockets": total, "collectors": {}}


def inside(args):
    """Runs in the bench's host namespace."""
    tcpwatch = [str(ROOT / ".venv" / "bin" / "tcpwatch"), "run", "--log.level", "error",
                "--collector.netns.max-series", "1000"]
    node = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    daemons = [
        ("tcpwatch whole", tcpwatch + ["--ebpf", "on"], 19790),
        ("tcpwatch counts", tcpwatch + ["--no-collector.process", "--ebpf", "off"], 19791),
        ("tcpwatch host", tcpwatch + ["--no-collector.netns", "--no-collector.process", "--ebpf", "off"], 19792),
    ]
    if node:
        daemons.append(("node_exporter", [node, "--collector.disable-defaults", "--collector.tcpstat"], 19793))
    else:
        print("prometheus-node-exporter is not installed: no node_exporter column")
    if args.child_ehash:
        subprocess.run(["sysctl", "-qw", f"net.ipv4.tcp_child_ehash_entries={args.child_ehash}"], check=True)
        print(f"net.ipv4.tcp_child_ehash_entries={args.child_ehash}: each namespace has its own socket hash")
    host_workers = [Worker(args.host_netns, args.host_sockets)]
    for w in host_workers:
        w.ready()
    procs, workers, names = {}, [], []
    try:
        for name, argv, port in daemons:
            procs[name] = subprocess.Popen(argv + ["--web.listen-address", f"127.0.0.1:{port}"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, _argv, port in daemons:
            wait_http(f"http://127.0.0.1:{port}/metrics")
        print(f"{'K':>4} {'sockets':>8} {'tool':<16} {'wall s':>8} {'cpu s':>8} {'netns':>7} "
              f"{'diag':>7} {'process':>7} {'ebpf':>7} {'wall/ne':>8}")
        for k in args.ks:
            while len(names) < k:
                name = f"{args.host_netns}-{len(names)}"
                netns_add(name)
                names.append(name)
                workers.append(Worker(name, args.per_netns))
            for w in workers:
                if not getattr(w, "started", False):
                    w.ready()
                    w.started = True
            for w in host_workers + workers:          # TIME_WAIT lasts 60 s: make it again
                w.refresh_time_wait()
            for w in host_workers + workers:
                w.ready()
            results = {}
            for name, _argv, port in daemons:
                results[name] = scrape(f"http://127.0.0.1:{port}/metrics", procs[name].pid, args.repeat)
            results["/proc/PID/net"] = procfs_route([w.proc.pid for w in host_workers + workers], args.repeat)
            base = results.get("node_exporter")
            counted = subprocess.run(["sh", "-c", "for n in " + " ".join([args.host_netns] + names)
                                      + "; do ip netns exec $n ss -tanH; done | wc -l"],
                                     capture_output=True, text=True).stdout.strip()
            for name, r in results.items():
                c = r["collectors"]
                cpu = f"{r['cpu']:.3f}" if r["cpu"] is not None else "-"
                ratio = f"{r['wall'] / base['wall']:.2f}" if base else "-"
                print(f"{k:>4} {int(r['sockets']):>8} {name:<16} {r['wall']:>8.3f} {cpu:>8} "
                      + " ".join(f"{c[x]:>7.3f}" if x in c else f"{'-':>7}"
                                 for x in ("netns", "inet_diag", "process", "ebpf"))
                      + f" {ratio:>8}", flush=True)
            print(f"{k:>4} {counted:>8} (ss -tan in every namespace)", flush=True)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(10)
        for w in host_workers + workers:
            w.stop()
        for name in names:
            subprocess.run(["ip", "netns", "del", name])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 50, 100, 200])
    parser.add_argument("--per-netns", type=int, default=1000)
    parser.add_argument("--host-sockets", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child-ehash", type=int, default=0, metavar="N")
    parser.add_argument("--inside", metavar="HOST_NETNS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        args.host_netns = args.inside
        return inside(args)
    host = f"tcpw-nsb{os.getpid()}"
    netns_add(host)
    try:
        argv = [sys.executable, __file__, "--inside", host, "--per-netns", str(args.per_netns),
                "--host-sockets", str(args.host_sockets), "--repeat", str(args.repeat),
                "--child-ehash", str(args.child_ehash),
                "--ks", *map(str, args.ks)]
        return subprocess.run(["ip", "netns", "exec", host, *argv]).returncode
    finally:
        subprocess.run(["ip", "netns", "del", host])


if __name__ == "__main__":
    sys.exit(main())
