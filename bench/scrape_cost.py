#!/usr/bin/env python3
"""What one scrape costs at 10k, 50k and 100k sockets: tcpwatch against node_exporter's
tcpstat collector and against `ss -tan state all`, measured in the same run. "counts+ports"
adds tcpwatch_port_sockets (counting per service port inside the dump) to "counts"; "owners,
off" adds the process collector with --ebpf off (owners from the /proc walk, sockets counted
with inet_diag); "owners, diag" loads eBPF (owners from the task_file iterator) but counts with
inet_diag (--no-collector.bpf.socket-iterator); "owners, iter" counts with the eBPF socket
iterator; "defaults" is `tcpwatch run` with no flag. The "count s" column is the counting
collector's own duration (tcpwatch's inet_diag collector, node_exporter's tcpstat); "wall s"
is the whole scrape as Prometheus sees it.

    make bench                       # 10k, 50k, 100k sockets, 5 scrapes each
    .venv/bin/python bench/scrape_cost.py --sizes 100000 --repeat 7
    .venv/bin/python bench/scrape_cost.py --mix established   # the old all-ESTABLISHED load

The sockets hold a realistic state mix by default (bench/mix_worker.py: ESTABLISHED 40%,
TIME_WAIT 20%, CLOSE_WAIT 15%, FIN_WAIT2 15%, SYN_RECV 10%), whose timewait and request
sockets make inet_diag's reply chunks mix message lengths.

Everything runs in a private network namespace made for the run (and removed after), so the
counts are exactly the benchmark's sockets. For each tool it prints the median wall time of
one scrape, the CPU time the tool spent on it (from /proc/PID/stat), its peak RSS (VmHWM),
and for the two exporters the collector duration they report themselves. Ratios are against
node_exporter's tcpstat. Needs root, iproute2, prometheus-node-exporter.
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

ROOT = Path(__file__).resolve().parent.parent
# The mix's FIN_WAIT2 orphans and SYN_RECV request sockets must outlive the run.
MIX_SYSCTLS = ["net.ipv4.tcp_fin_timeout=600", "net.ipv4.tcp_synack_retries=255",
               "net.ipv4.tcp_syncookies=0", "net.ipv4.tcp_max_syn_backlog=65536"]
PAIRS_PER_WORKER = 9000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid):
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024


def wait_http(url, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return urllib.request.urlopen(url, timeout=5).read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


MIX_PER_WORKER = 18000       # mix_worker.py holds at most 0.55 N fds: under the 20,000 limit


def hold(total_sockets, mix="realistic"):
    if mix == "realistic":
        workers = []
        for w in range(0, (total_sockets + MIX_PER_WORKER - 1) // MIX_PER_WORKER):
            n = min(MIX_PER_WORKER, total_sockets - w * MIX_PER_WORKER)
            workers.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "mix_worker.py"),
                                             str(n), f"127.0.{w + 1}.1"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True))
        for proc in workers:
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("a socket-holding worker failed")
        return workers
    pairs = total_sockets // 2
    workers = []
    for w in range(0, (pairs + PAIRS_PER_WORKER - 1) // PAIRS_PER_WORKER):
        n = min(PAIRS_PER_WORKER, pairs - w * PAIRS_PER_WORKER)
        addr = f"127.0.{w + 1}.1"
        workers.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "hold_sockets.py"),
                                         str(n), addr], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True))
    for proc in workers:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("a socket-holding worker failed")
    return workers


def scrape_exporter(url, pid, repeat, duration_metric):
    walls, cpus, durations = [], [], []
    for _ in range(repeat):
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        body = urllib.request.urlopen(url, timeout=60).read().decode()
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds(pid) - cpu0)
        found = re.findall(duration_metric + r" (\S+)", body)
        durations.append(sum(float(v) for v in found))
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus),
            "rss": peak_rss_mb(pid), "collector": statistics.median(durations), "body": body}


def run_ss(repeat):
    walls, cpus, rss = [], [], 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.Popen(["ss", "-tan", "state", "all"], stdout=subprocess.DEVNULL)
        _, _, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - t0)
        cpus.append(usage.ru_utime + usage.ru_stime)
        rss = max(rss, usage.ru_maxrss / 1024)
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "rss": rss,
            "collector": None}


def start(argv, url):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(url)
    return proc


def measure(size, repeat, mix):
    tcpwatch = [str(ROOT / ".venv" / "bin" / "tcpwatch"), "run", "--log.level", "error"]
    node = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    workers = hold(size, mix)
    procs = []
    try:
        counted = int(subprocess.run(["ss", "-tanH", "state", "all"], capture_output=True,
                                     text=True).stdout.count("\n"))
        results = {}
        counting = r'tcpwatch_scrape_collector_duration_seconds\{collector="inet_diag"\}'
        for name, argv, port, metric in [
            ("tcpwatch (counts)", tcpwatch + ["--no-collector.process", "--no-collector.netns", "--no-collector.port",
                                              "--ebpf", "off"], 19787, counting),
            ("tcpwatch (counts+ports)", tcpwatch + ["--no-collector.process", "--no-collector.netns", "--ebpf", "off"],
             19789, counting),
            ("tcpwatch (owners, off)", tcpwatch + ["--no-collector.netns", "--no-collector.port", "--ebpf", "off"],
             19788, counting),
            ("tcpwatch (owners, diag)", tcpwatch + ["--no-collector.netns", "--no-collector.port", "--ebpf", "on",
                                                    "--no-collector.bpf.socket-iterator"], 19786, counting),
            ("tcpwatch (owners, iter)", tcpwatch + ["--no-collector.netns", "--no-collector.port", "--ebpf", "on"],
             19785, counting),
            ("tcpwatch (defaults)", tcpwatch, 19784, counting),
            ("node_exporter tcpstat", [node, "--collector.disable-defaults", "--collector.tcpstat"],
             19100, r'node_scrape_collector_duration_seconds\{collector="tcpstat"\}'),
        ]:
            url = f"http://127.0.0.1:{port}/metrics"
            proc = start(argv + ["--web.listen-address", f"127.0.0.1:{port}"], url)
            procs.append(proc)
            results[name] = scrape_exporter(url, proc.pid, repeat, metric)
            proc.terminate()
            proc.wait(10)
        results["ss -tan state all"] = run_ss(repeat)
        body = results["tcpwatch (counts)"]["body"]
        ours = sum(float(v) for v in re.findall(r"^tcpwatch_sockets\{[^}]*\} (\S+)", body, re.M))
        return counted, ours, results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for w in workers:
            w.stdin.close()
        for w in workers:
            w.wait(30)


def report(size, counted, ours, results):
    base = results["node_exporter tcpstat"]
    print(f"\n== {size} sockets held (ss counts {counted}, tcpwatch counts {int(ours)}) ==")
    print(f"{'tool':<24} {'wall s':>8} {'cpu s':>8} {'rss MB':>8} {'count s':>8}"
          f" {'wall/ne':>8} {'cpu/ne':>8} {'count/ne':>8}")
    for name, r in results.items():
        coll = f"{r['collector']:.3f}" if r["collector"] is not None else "-"
        ratio = (f"{r['collector'] / base['collector']:.2f}" if r["collector"] is not None
                 and base["collector"] else "-")
        print(f"{name:<24} {r['wall']:>8.3f} {r['cpu']:>8.3f} {r['rss']:>8.1f} {coll:>8}"
              f" {r['wall'] / base['wall']:>8.2f} {r['cpu'] / max(base['cpu'], 1e-9):>8.2f} {ratio:>8}")


def inside(args):
    for size in args.sizes:
        report(size, *measure(size, args.repeat, args.mix))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000, 100000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mix", choices=["realistic", "established"], default="realistic")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return inside(args)
    print(f"tcpwatch scrape cost, median of {args.repeat} scrapes; ratios against node_exporter tcpstat")
    # A fresh namespace per size: closing one size's sockets leaves TIME_WAIT behind for 60 s.
    for size in args.sizes:
        netns = f"tcpw-bench-{os.getpid()}-{size}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        try:
            subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
            subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", *MIX_SYSCTLS], check=True)
            argv = [sys.executable, __file__, "--inside", "--repeat", str(args.repeat), "--sizes", str(size),
                    "--mix", args.mix]
            if subprocess.run(["ip", "netns", "exec", netns, *argv]).returncode:
                return 1
        finally:
            subprocess.run(["ip", "netns", "del", netns])
    return 0


if __name__ == "__main__":
    sys.exit(main())
