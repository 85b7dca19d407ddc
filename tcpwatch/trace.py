"""``tcpwatch trace``: TCP state changes live, for a person debugging.

The only place where events cross to user space one by one (a perf buffer); the daemon never
does this.
"""

from __future__ import annotations

import json
import signal
import socket
import time

from . import states
from .config import ConfigError
from .sources import bpf


def _address(family: int, raw) -> str:
    data = bytes(raw)
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, data[:4])
    return "[" + socket.inet_ntop(socket.AF_INET6, data[:16]) + "]"


def trace(args) -> int:
    if args.ladder and args.state:
        raise ConfigError("--state does not apply to --ladder: a ladder shows every change of a connection")
    if args.ladder and args.json:
        raise ConfigError("--json does not apply to --ladder")
    if args.relative and not args.ladder:
        raise ConfigError("--relative applies to --ladder only (--json gives the numbers as the kernel has them)")
    try:
        # Only the ladder follows timewait sockets to their end (their timers' tracepoints).
        program = bpf.BpfProgram(max_sockets=65536, port_range=(args.port, args.port) if args.port else None,
                                 track_time_wait=args.ladder, emit_events=True, attach=args.attach,
                                 in_process=True)   # its events are read through bcc
    except bpf.BpfUnavailable as exc:
        raise ConfigError(f"trace needs eBPF: {exc}") from None
    from .namespace_dumps import NamespaceDumper
    from .sources import runtime

    dumper = NamespaceDumper(runtimes=runtime.Runtimes(containerd_state=args.containerd_state))
    netns_name = _NetnsNames(dumper)
    stopping = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.append(True))
    wall_offset = time.time() - time.monotonic()
    if args.ladder:
        on_event, each_turn, at_end = _ladders(program, args, netns_name, wall_offset)
    else:
        on_event, each_turn, at_end = _lines(args, netns_name, wall_offset, program.seq_numbers), None, None
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while not stopping and (deadline is None or time.monotonic() < deadline):
            program.poll_events(on_event, timeout_ms=100)
            if each_turn:
                each_turn()
        if at_end:
            at_end()
    except BrokenPipeError:
        pass
    finally:
        program.close()
        dumper.close()
    return 0


class _NetnsNames:
    """inode -> the netns label (as in the metrics); discovery runs again, at most once a
    second, when a namespace not seen yet shows up."""

    def __init__(self, dumper):
        self._dumper = dumper
        self._names = {}
        self._refreshed = float("-inf")

    def __call__(self, inode: int) -> str:
        if not inode:
            return "unknown"
        if inode not in self._names and time.monotonic() - self._refreshed >= 1.0:
            self._refreshed = time.monotonic()
            self._names = {i: info.name for i, info in self._dumper.names().items()}
        return self._names.get(inode, f"netns-{inode}")


def _lines(args, netns_name, wall_offset, with_numbers: bool):
    """Plain ``trace``: a line (or a JSON object) per transition; the callback per event."""
    wanted = states.BY_NAME.get(args.state) if args.state else None
    if not args.json:
        print(f"{'TIME':15} {'NETNS':<20} {'LOCAL':>28} {'REMOTE':>28} {'FROM':>11}    {'TO':<11} IN FROM", flush=True)

    def show(event):
        if wanted is not None and wanted not in (event.oldstate, event.newstate):
            return
        record = _record(event, netns_name, wall_offset, with_numbers)
        if args.json:
            print(json.dumps(record), flush=True)
            return
        stamp = time.strftime("%H:%M:%S", time.localtime(record["time"])) + f".{int(record['time'] % 1 * 1e6):06d}"
        dwell = f"{record['seconds_in_from']:.6f}s" if record["seconds_in_from"] is not None else "-"
        print(f"{stamp} {record['netns_name']:<20} {record['local']:>28} {record['remote']:>28} "
              f"{record['from']:>11} -> {record['to']:<11} {dwell}", flush=True)
    return show


def _record(event, netns_name, wall_offset, with_numbers: bool) -> dict:
    """One transition as ``trace --json`` prints it."""
    t = event.tuple
    numbers = _numbers(event) if with_numbers else None
    return {
        "time": round(event.ts_ns / 1e9 + wall_offset, 6),
        "local": f"{_address(t.family, t.saddr)}:{t.sport}",
        "remote": f"{_address(t.family, t.daddr)}:{t.dport}",
        "from": states.name(event.oldstate), "to": states.name(event.newstate),
        "seconds_in_from": round(event.dwell_ns / 1e9, 6) if event.dwell_ns else None,
        # inode of the socket's network namespace (as /proc/PID/ns/net shows it); null if unknown
        "netns": t.netns or None,
        "netns_name": netns_name(t.netns),
        # the socket cookie inet_diag reports (ss -e: sk:...); null in tracepoint mode
        "cookie": event.cookie or None,
        # struct tcp_sock's sequence numbers at the change; null where they mean nothing yet
        "tcp": numbers._asdict() if numbers is not None else None,
    }


def _numbers(event):
    """The event's sequence numbers, where they mean something (ladder_numbers.py)."""
    from .ladder_numbers import Numbers, numbers_at

    return numbers_at(states.name(event.oldstate), states.name(event.newstate),
                      Numbers(event.snd_una, event.snd_nxt, event.write_seq, event.rcv_nxt))


def _ladders(program, args, netns_name, wall_offset):
    """``trace --ladder`` (see ladder.py): (per event, per poll turn, at the end) callbacks;
    each connection is drawn once it is over."""
    from . import ladder

    traced_tw = program.time_wait_tracked
    ladders = ladder.Ladders(timeout=args.ladder_timeout, time_wait_traced=traced_tw)

    def draw(conns, stopped=False):
        for conn in conns:
            print(ladder.render(conn, now=time.time(), stopped=stopped, time_wait_traced=traced_tw,
                                relative=args.relative) + "\n", flush=True)

    def take(event):
        t = event.tuple
        step = ladder.Step(
            time=event.ts_ns / 1e9 + wall_offset, netns=t.netns, netns_name=netns_name(t.netns),
            local=f"{_address(t.family, t.saddr)}:{t.sport}", remote=f"{_address(t.family, t.daddr)}:{t.dport}",
            old=states.name(event.oldstate), new=states.name(event.newstate), cookie=event.cookie,
            pid=event.pid, comm=event.comm.decode("utf-8", "replace"),
            numbers=_numbers(event) if program.seq_numbers else None)
        draw(ladders.add(step))

    print("tracing: each connection is drawn once it is over (TIME_WAIT included); "
          "Ctrl-C draws the rest", flush=True)
    if not traced_tw:
        print("(the end of TIME_WAIT cannot be traced here: ladders stop at fin_wait2 -> close)", flush=True)
    return take, lambda: draw(ladders.expire(time.time())), lambda: draw(ladders.drain(), stopped=True)
