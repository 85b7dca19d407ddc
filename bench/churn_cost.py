#!/usr/bin/env python3
"""What attaching costs a connection-heavy workload: tcpwatch in each attach mode, against
bcc's tcpstates and against the floor (a program on the same hook that only counts).

    .venv/bin/python bench/churn_cost.py [--seconds 20] [--slice 0.25] [--rounds 5] [--no-stats]

bench/churn.c (compiled here with gcc) opens and closes loopback connections in one thread
as fast as it can, 10 state transitions each, for a bounded time and count, in a fresh
network namespace per run.

This machine's speed drifts by 20% within seconds, so the tools that can be attached and
detached in this process are measured inside one long churn run: attached and detached every
--slice seconds, the churn reporting its progress every 20 ms. Both conditions share the
drift; the ratio is the attached rate over the detached rate. A control that toggles nothing
shows the method's own error. In process:
  - the floor: one per-CPU counter per (from, to) on inet_sock_set_state, tp_btf and classic;
  - tcpwatch's program in each attach mode, with and without TIME_WAIT timing, loaded once
    and attached/detached by its links (tp_btf) or bcc's tracepoint attachments (classic).
tcpstates-bpfcc cannot be toggled like that: it is started and stopped around runs, in pairs
of runs with and without it, the order alternating (median and quartiles over pairs). Its
loss is large enough for that coarser method.

`tcpwatch run` loads the same program as the in-process tcpwatch tp_btf; what it adds is its
own CPU, on another core. It runs (scraped every second) through one churn run and then as
long an idle time, and its CPU is measured in both, to show that it does not grow with the
connection rate. (Start/stop pairs around a daemon measure mostly this machine's drift.)
Printed: the ratio and its quartiles, the extra kernel time per transition derived from it,
the daemon's CPU, and tcpwatch's lost throughput as a fraction of tcpstates'.

Then, unless --no-stats, with kernel.bpf_stats_enabled=1, one run per tcpwatch mode: the
run count and run time of each of its programs, read from the fdinfo of its program fds, so
that every nanosecond is put on a program. bpf_stats itself adds two clock reads per run, so
those figures are for the split, not for the ratios. Needs root, gcc, bpfcc-tools, and the
set-up of `make run`.
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
sys.path.insert(0, str(ROOT))

from tcpwatch.sources import bpf, btf  # noqa: E402

TRANSITIONS_PER_CONNECTION = 10
_runs = iter(range(1 << 30))


def churn(binary, seconds):
    """Connections per second of one churn run in a fresh network namespace."""
    netns = f"tcpw-churn-{os.getpid()}-{next(_runs)}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        out = subprocess.run(["ip", "netns", "exec", netns, binary, str(seconds), "50000000"],
                             check=True, capture_output=True, text=True, timeout=seconds + 60).stdout
        return float(out.split()[2])
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


# --- tools attached in this process, toggled between runs -------------------------------------

FLOOR = r"""
BPF_PERCPU_ARRAY(pairs, u64, 256);
static __always_inline void count(u32 oldstate, u32 newstate)
{
    u32 pair = (oldstate & 15) * 16 + (newstate & 15);
    u64 *value = pairs.lookup(&pair);
    if (value)
        (*value)++;
}
#ifdef ATTACH_TP_BTF
int floor_tp_btf(u64 *ctx) { count(ctx[1], ctx[2]); return 0; }
#else
TRACEPOINT_PROBE(sock, inet_sock_set_state) { count(args->oldstate, args->newstate); return 0; }
#endif
"""


class InProcess:
    """A bcc module whose programs are attached and detached without reloading: tp_btf
    programs by their links, classic ones by bcc's tracepoint attachments."""

    def __init__(self, compiled, prog_fds, classic_functions):
        self.compiled = compiled
        self.prog_fds = prog_fds                     # tp_btf programs, loaded
        self.classic = classic_functions             # {tracepoint: function}
        self.links = []
        self.pid = None
        self.detach()

    @classmethod
    def floor(cls, mode):
        from bcc import BPF

        if mode == "tp_btf":
            compiled = BPF(text=FLOOR.encode(), cflags=["-DATTACH_TP_BTF"])
            type_id = btf.Btf.load().type_id(btf.TYPEDEF, "btf_trace_inet_sock_set_state")
            try:
                prog_fd, link = bpf.attach_tp_btf(compiled, "floor_tp_btf", type_id)
            except bpf.BpfUnavailable as exc:
                raise SystemExit(f"cannot attach the floor program as tp_btf: {exc}") from None
            os.close(link)
            return cls(compiled, [prog_fd], {})
        return cls(BPF(text=FLOOR.encode()), [], {"sock:inet_sock_set_state": "tracepoint__sock__inet_sock_set_state"})

    @classmethod
    def tcpwatch(cls, mode, time_wait):
        program = bpf.BpfProgram(attach=mode, track_time_wait=time_wait, in_process=True)
        classic = {} if mode == "tp_btf" else {
            tp.decode(): fn for tp, fn in ((tp, _classic_function(tp)) for tp in program.bpf.tracepoint_fds)}
        loaded = program.loaded
        prog_fds, loaded.prog_fds = loaded.prog_fds, []   # this object owns them now
        for link in loaded.links:
            os.close(link)
        loaded.links = []
        tool = cls(program.bpf, prog_fds, classic)
        tool.program = program
        return tool

    def attach(self):
        from bcc.libbcc import lib

        self.links = [lib.bpf_attach_kfunc(fd) for fd in self.prog_fds]
        for tp, fn in self.classic.items():
            self.compiled.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())

    def detach(self):
        for link in self.links:
            os.close(link)
        self.links = []
        for tp in self.classic:
            if tp.encode() in self.compiled.tracepoint_fds:
                self.compiled.detach_tracepoint(tp.encode())

    def close(self):
        self.detach()
        for fd in self.prog_fds:
            os.close(fd)
        program = getattr(self, "program", None)
        if program is not None:
            program.close()


def _classic_function(tracepoint: bytes) -> str:
    category, event = tracepoint.decode().split(":")
    return f"tracepoint__{category}__{event}"


# --- tools as processes, started and stopped around runs --------------------------------------

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
        self.proc = subprocess.Popen([tool], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if not self.proc.stdout.readline():   # its header: attached
            raise RuntimeError("it did not start: it compiles against kernel headers, which this machine may lack")
        self._drain = threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True)
        self._drain.start()

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


class AsProcess:
    """Attach = start the tool's process, detach = stop it."""

    def __init__(self, factory):
        self.factory = factory
        self.tool = None

    def attach(self):
        self.tool = self.factory()

    def detach(self):
        if self.tool:
            self.tool.close()
            self.tool = None

    def close(self):
        self.detach()


def paired(binary, seconds, pairs, tool):
    """Median and quartiles of (attached rate / unattached rate) over back-to-back pairs."""
    ratios, rates = [], []
    try:
        for i in range(pairs):
            got = {}
            for attached in ((False, True) if i % 2 == 0 else (True, False)):
                if attached:
                    tool.attach()
                got[attached] = churn(binary, seconds)
                if attached:
                    tool.detach()
            ratios.append(got[True] / got[False])
            rates.append(got[False])
    finally:
        tool.close()
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return statistics.median(ratios), q[0], q[2], statistics.median(rates)


def sliced(binary, seconds, slice_s, tool):
    """One long churn run in one namespace while the tool is attached and detached every
    slice_s seconds: drift of the machine is shared by both conditions. Returns (ratio of the
    attached to the detached rate over the whole run, quartiles of the ratio per adjacent
    (detached, attached) pair of slices, detached rate)."""
    netns = f"tcpw-churn-{os.getpid()}-{next(_runs)}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    samples, toggles = [], []
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        proc = subprocess.Popen(["ip", "netns", "exec", netns, binary, str(seconds), "500000000", "20"],
                                stdout=subprocess.PIPE, text=True)
        reader = threading.Thread(target=lambda: samples.extend(
            (float(t), int(n)) for tag, t, n in (line.split() for line in proc.stdout) if tag == "P"))
        reader.start()
        attached = False
        end = time.monotonic() + seconds
        while time.monotonic() < end and proc.poll() is None:
            time.sleep(slice_s)
            if attached:
                tool.detach()
            else:
                tool.attach()
            attached = not attached
            toggles.append((time.monotonic(), attached))
        proc.wait(seconds + 60)
        reader.join(10)
    finally:
        tool.close()
        subprocess.run(["ip", "netns", "del", netns], check=False)
    # Each interval between two progress samples counts for the state it lies wholly in.
    totals = {True: [0, 0.0], False: [0, 0.0]}
    per_slice = []
    for (t0, n0), (t1, n1) in zip(samples, samples[1:]):
        before = [state for when, state in toggles if when <= t0]
        after = [state for when, state in toggles if when <= t1]
        if len(before) != len(after) or not before:
            continue   # straddles a toggle, or before the first one
        state, index = before[-1], len(before)
        totals[state][0] += n1 - n0
        totals[state][1] += t1 - t0
        if not per_slice or per_slice[-1][0] != index:
            per_slice.append([index, state, 0, 0.0])
        per_slice[-1][2] += n1 - n0
        per_slice[-1][3] += t1 - t0
    rate = {state: n / t for state, (n, t) in totals.items()}
    pairs = [after[2] / after[3] / (before[2] / before[3])
             for before, after in zip(per_slice, per_slice[1:]) if not before[1] and after[1]]
    q = statistics.quantiles(pairs, n=4)
    return rate[True] / rate[False], q[0], q[2], rate[False]


class NoOp:
    """The control: toggles nothing, so its ratio shows the method's own error."""

    def attach(self):
        pass

    detach = close = attach


def daemon_cpu(binary, seconds):
    """CPU of `tcpwatch run` (tp_btf, scraped every second) during a churn run and during as
    long an idle time, in CPU seconds per second, from the kernel's per-thread run time."""
    daemon = Tcpwatch("--collector.bpf.attach", "tp_btf")
    try:
        time.sleep(3)   # past start-up
        start = run_time(daemon.proc.pid)
        rate = churn(binary, seconds)
        busy = (run_time(daemon.proc.pid) - start) / seconds
        start = run_time(daemon.proc.pid)
        time.sleep(seconds)
        idle = (run_time(daemon.proc.pid) - start) / seconds
    finally:
        daemon.close()
    return busy, idle, rate


def run_time(pid):
    """Seconds on CPU of every thread of a process (schedstat: ns, unlike /proc/PID/stat's ticks)."""
    return sum(int((task / "schedstat").read_text().split()[0]) for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9


# --- per-program cost ---------------------------------------------------------------------------

def program_stats(pid):
    """{(id, name): (run_time_ns, run_cnt)} of the programs process pid holds, from the fdinfo
    of its program fds."""
    import json

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
            stats[(prog, names.get(prog, "?"))] = (int(fields["run_time_ns"]), int(fields["run_cnt"]))
    return stats


def per_program_cost(binary, seconds, tool):
    """(rate, [(program, runs per connection, ns per run, ns per connection)]) for one tool."""
    setting = Path("/proc/sys/kernel/bpf_stats_enabled")
    previous = setting.read_text().strip()
    setting.write_text("1")
    try:
        tool.attach()
        before = program_stats(os.getpid())
        rate = churn(binary, seconds)
        after = program_stats(os.getpid())
    finally:
        setting.write_text(previous)
        tool.close()
    connections = rate * seconds
    rows = []
    for key, (run_ns, runs) in sorted(after.items()):
        ns0, runs0 = before.get(key, (0, 0))
        if runs > runs0:
            rows.append((key[1], (runs - runs0) / connections, (run_ns - ns0) / (runs - runs0),
                         (run_ns - ns0) / connections))
    return rate, rows


def print_row(label, ratio, low, high, rate):
    extra = (1 / ratio - 1) / rate / TRANSITIONS_PER_CONNECTION * 1e9
    print(f"{label:40} {ratio:>6.3f}x {low:>6.3f}-{high:<6.3f} {extra:>14.0f} {rate:>18.0f}", flush=True)


def print_stats(mode, rate, rows):
    print(f"\nbpf_stats, tcpwatch {mode}, TIME_WAIT timing on ({rate:.0f} conn/s with stats on):")
    print(f"  {'program':18} {'runs/conn':>10} {'ns/run':>8} {'ns/conn':>8}")
    for name, runs, ns_per_run, ns_per_connection in rows:
        print(f"  {name[:18]:18} {runs:>10.2f} {ns_per_run:>8.0f} {ns_per_connection:>8.0f}")
    print(f"  {'total':18} {'':>10} {'':>8} {sum(r[3] for r in rows):>8.0f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="churn run per in-process tool")
    parser.add_argument("--slice", type=float, default=0.25, help="attach/detach period in that run")
    parser.add_argument("--rounds", type=int, default=5, help="runs per in-process tool")
    parser.add_argument("--process-seconds", type=float, default=2.0, help="churn run per process pair")
    parser.add_argument("--process-pairs", type=int, default=7, help="pairs for the daemon and tcpstates")
    parser.add_argument("--no-stats", action="store_true", help="skip the per-program bpf_stats pass")
    args = parser.parse_args()
    in_process = [
        ("control: nothing toggled", NoOp),
        ("floor: counter only, tp_btf", lambda: InProcess.floor("tp_btf")),
        ("floor: counter only, tracepoint", lambda: InProcess.floor("tracepoint")),
        ("tcpwatch tp_btf", lambda: InProcess.tcpwatch("tp_btf", True)),
        ("tcpwatch tp_btf, no TIME_WAIT", lambda: InProcess.tcpwatch("tp_btf", False)),
        ("tcpwatch tracepoint", lambda: InProcess.tcpwatch("tracepoint", True)),
        ("tcpwatch tracepoint, no TIME_WAIT", lambda: InProcess.tcpwatch("tracepoint", False)),
    ]
    as_process = [("tcpstates-bpfcc", lambda: AsProcess(Tcpstates))]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        binary = os.path.join(tmp, "churn")
        subprocess.run(["gcc", "-O2", "-o", binary, str(ROOT / "bench" / "churn.c")], check=True)
        runs = {label: [] for label, _ in in_process}
        for _ in range(args.rounds):   # rounds over the tools, so that slow drift spreads over all
            for label, make in in_process:
                runs[label].append(sliced(binary, args.seconds, args.slice, make()))
        for label, _ in in_process:
            ratio, low, high, rate = (statistics.median(run[i] for run in runs[label]) for i in range(4))
            results.append((label, ratio, low, high, rate))
        print(f"connection churn, one thread on loopback. In process: {args.rounds} runs of {args.seconds:g} s per "
              f"tool, attached and detached every {args.slice:g} s (medians over runs; quartiles of the ratio "
              f"per pair of slices). Processes: {args.process_pairs} pairs of {args.process_seconds:g} s runs, "
              f"started and stopped (median; quartiles over pairs).")
        print(f"{'':40} {'ratio':>7} {'quartiles':>13} {'ns/transition':>14} {'unattached conn/s':>18}")
        for row in results:
            print_row(*row)
        for label, make in as_process:
            try:
                row = (label, *paired(binary, args.process_seconds, args.process_pairs, make()))
            except RuntimeError as exc:
                print(f"{label}: not measured, {exc}", flush=True)
                continue
            results.append(row)
            print_row(*row)
        lost = {label: 1 - ratio for label, ratio, *_ in results}
        if "tcpstates-bpfcc" in lost:
            print(f"lost throughput, tcpwatch tp_btf / tcpstates-bpfcc: "
                  f"{lost['tcpwatch tp_btf'] / lost['tcpstates-bpfcc']:.3f}")
        busy, idle, busy_rate = daemon_cpu(binary, args.seconds)
        print(f"`tcpwatch run` (tp_btf, scraped 1/s) CPU: {busy * 100:.2f}% during {args.seconds:g} s of churn "
              f"({busy_rate:.0f} conn/s), {idle * 100:.2f}% during as long idle", flush=True)
        if not args.no_stats:
            for mode in ("tp_btf", "tracepoint"):
                print_stats(mode, *per_program_cost(binary, 3.0, InProcess.tcpwatch(mode, True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
