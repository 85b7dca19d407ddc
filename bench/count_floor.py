#!/usr/bin/env python3
"""Where counting 100,000 sockets goes, step by step, in one process: the kernel's walk by
the eBPF socket iterator (one pass, read to its end), the decoding of its records (counts
only, with owners, with owners and ports), and an inet_diag dump of the same sockets.

    .venv/bin/python bench/count_floor.py [--sockets 100000] [--repeat 5]

The sockets hold bench/mix_worker.py's realistic mix in a network namespace made for the
run (removed after). Medians of --repeat rounds. Needs root and the set-up of `make run`.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIX_SYSCTLS = ["net.ipv4.tcp_fin_timeout=600", "net.ipv4.tcp_synack_retries=255",
               "net.ipv4.tcp_syncookies=0", "net.ipv4.tcp_max_syn_backlog=65536"]
PER_WORKER = 18000


def measure(sockets: int, repeat: int) -> None:
    from tcpwatch.model import DumpWants
    from tcpwatch.sources import bpf, ebpf_iterators, inet_diag

    program = bpf.BpfProgram(socket_iterator=True, track_time_wait=False)
    sizes = [min(PER_WORKER, sockets - start) for start in range(0, sockets, PER_WORKER)]
    workers = [subprocess.Popen([sys.executable, str(ROOT / "bench" / "mix_worker.py"), str(n), f"127.0.{i + 1}.1"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i, n in enumerate(sizes)]
    try:
        for worker in workers:
            if worker.stdout.readline().strip() != "ready":
                raise SystemExit("a socket-holding worker failed")
        times = {}
        for _ in range(repeat):
            started = time.perf_counter()
            records = ebpf_iterators.read_to_end(program.socket_iterator.open())
            times.setdefault("iterator: the kernel's walk, read to the end", []).append(time.perf_counter() - started)
            for label, wants in (("counts", DumpWants(False, False)), ("owners", DumpWants(True, False)),
                                 ("owners and ports", DumpWants(True, True))):
                started = time.perf_counter()
                ebpf_iterators.decode(records, wants)
                times.setdefault(f"iterator: decoding, {label}", []).append(time.perf_counter() - started)
            for label, wants in (("counts", DumpWants(False, False)), ("owners and ports", DumpWants(True, True))):
                started = time.perf_counter()
                inet_diag.dump(wants)
                times.setdefault(f"inet_diag: dump and decoding, {label}", []).append(time.perf_counter() - started)
        print(f"{len(records) // 88} sockets, medians of {repeat}:")
        for label, values in times.items():
            print(f"  {label:48} {statistics.median(values) * 1000:7.1f} ms")
    finally:
        for worker in workers:
            worker.stdin.close()
        for worker in workers:
            worker.wait(30)
        program.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=100000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return measure(args.sockets, args.repeat)
    netns = f"tcpw-floor-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", *MIX_SYSCTLS], check=True)
        return subprocess.run(["ip", "netns", "exec", netns, sys.executable, __file__, "--inside", "--sockets",
                               str(args.sockets), "--repeat", str(args.repeat)]).returncode
    finally:
        subprocess.run(["ip", "netns", "del", netns])


if __name__ == "__main__":
    sys.exit(main())
