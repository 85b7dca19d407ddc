#!/usr/bin/env python3
"""The daemon's resident cost and start-up: VmRSS, RssAnon, RssFile at rest after two scrapes,
time from exec to /-/ready answering 200, and whether LLVM is mapped, with eBPF on and off.

    .venv/bin/python bench/agent_footprint.py                 # this checkout, 5 rounds
    .venv/bin/python bench/agent_footprint.py --tcpwatch /other/checkout/.venv/bin/tcpwatch

Medians of the rounds; each round starts a fresh daemon. Needs root for eBPF.
"""

import argparse
import re
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def status_kib(pid, field):
    return int(re.search(rf"^{field}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


def one_daemon(tcpwatch, ebpf, port):
    started = time.monotonic()
    proc = subprocess.Popen([tcpwatch, "run", "--log.level", "error", "--ebpf", ebpf,
                             "--web.listen-address", f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        while True:   # bounded: the daemon answers or exits within its start-up
            try:
                if urllib.request.urlopen(base + "/-/ready", timeout=5).status == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if proc.poll() is not None or time.monotonic() - started > 60:
                raise SystemExit("the daemon did not become ready")
            time.sleep(0.02)
        ready = time.monotonic() - started
        for _ in range(2):
            urllib.request.urlopen(base + "/metrics", timeout=30).read()
        time.sleep(1)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        return {"ready_s": ready, "VmRSS": status_kib(proc.pid, "VmRSS") / 1024,
                "RssAnon": status_kib(proc.pid, "RssAnon") / 1024, "RssFile": status_kib(proc.pid, "RssFile") / 1024,
                "llvm_mapped": int(bool(re.search(r"libLLVM|libclang|libbcc", maps)))}
    finally:
        proc.terminate()
        proc.wait(30)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tcpwatch", default=str(ROOT / ".venv" / "bin" / "tcpwatch"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"{args.tcpwatch}: median of {args.rounds} fresh daemons (MiB, seconds)")
    print(f"{'':10} {'VmRSS':>8} {'RssAnon':>8} {'RssFile':>8} {'ready_s':>8} {'llvm_mapped':>12}")
    for ebpf in ("on", "off"):
        rounds = [one_daemon(args.tcpwatch, ebpf, 19780 + n) for n in range(args.rounds)]
        row = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        print(f"--ebpf {ebpf:3} {row['VmRSS']:8.1f} {row['RssAnon']:8.1f} {row['RssFile']:8.1f} "
              f"{row['ready_s']:8.2f} {row['llvm_mapped']:12.0f}", flush=True)


if __name__ == "__main__":
    main()
