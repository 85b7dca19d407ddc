"""TCP state transitions and time in state from the eBPF program in ``bpf/tcpstates.c``.

The only module that imports bcc (the distribution's python3-bpfcc). The program is compiled
at load time with settings passed as -D flags, then read at scrape time: per-CPU counters and
log2 histograms are summed here, and nothing is read per event.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
from importlib import resources

from ..model import BpfReading

log = logging.getLogger(__name__)

NSTATES = 16
SLOTS = 64
COUNTERS = ("unknown_socket", "retransmits", "resets_sent", "resets_received", "unknown_time_wait")
TRACEFS = "/sys/kernel/tracing"
TRACEPOINT = "sock/inet_sock_set_state"


class _Tuple(ctypes.Structure):
    """struct tuple of tcpstates.c."""

    _fields_ = [("family", ctypes.c_uint16), ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16),
                ("pad", ctypes.c_uint16), ("saddr", ctypes.c_uint8 * 16), ("daddr", ctypes.c_uint8 * 16)]


class TraceEvent(ctypes.Structure):
    """struct event of tcpstates.c (EMIT_EVENTS only)."""

    _fields_ = [("ts_ns", ctypes.c_uint64), ("dwell_ns", ctypes.c_uint64), ("tuple", _Tuple),
                ("oldstate", ctypes.c_uint32), ("newstate", ctypes.c_uint32)]


class BpfUnavailable(Exception):
    """The program cannot be loaded here; the message says why in one line."""


def program_text() -> str:
    return resources.files("tcpwatch.bpf").joinpath("tcpstates.c").read_text()


def kernel_symbol(name: str):
    """Address of a kernel function from /proc/kallsyms, or None when hidden (kptr_restrict)."""
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == name:
                    address = int(parts[0], 16)
                    return address or None
    except OSError:
        return None
    return None


def tuple_key(family: int, sport: int, dport: int, saddr: bytes, daddr: bytes) -> tuple:
    """The join key between the program's CLOSE_WAIT map and inet_diag's sockets."""
    return (family, sport, dport, bytes(saddr), bytes(daddr))


class BpfProgram:
    """The loaded program. ``close()`` detaches everything; call it, atexit does not run on signals."""

    def __init__(self, max_sockets: int = 65536, port_range=None, track_time_wait: bool = True,
                 emit_events: bool = False):
        check_prerequisites()
        try:
            from bcc import BPF
        except ImportError as exc:
            raise BpfUnavailable(f"bcc is not importable ({exc}); install python3-bpfcc") from None
        if not 1 <= max_sockets <= 1 << 24:
            raise BpfUnavailable(f"--collector.bpf.max-sockets {max_sockets} is outside 1..16777216")
        cflags = [f"-DMAX_SOCKETS={max_sockets}", "-Wno-macro-redefined"]
        if port_range:
            cflags += [f"-DPORT_MIN={port_range[0]}", f"-DPORT_MAX={port_range[1]}"]
        self.time_wait_tracked = False
        if track_time_wait:
            handler = kernel_symbol("tw_timer_handler")
            if handler:
                cflags += ["-DTRACK_TIME_WAIT", f"-DTW_TIMER_HANDLER={handler:#x}ULL"]
                self.time_wait_tracked = True
            else:
                log.warning("time_wait timing disabled: /proc/kallsyms hides tw_timer_handler's "
                            "address (tcpwatch needs CAP_SYSLOG to read it)")
        if emit_events:
            cflags.append("-DEMIT_EVENTS")
        devnull = os.open(os.devnull, os.O_WRONLY)
        saved = os.dup(2)
        try:
            os.dup2(devnull, 2)   # clang's and libbpf's chatter; the exception says what failed
            self.bpf = BPF(text=program_text(), cflags=cflags)
        except Exception as exc:
            raise BpfUnavailable(_why(exc)) from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
        self._tables = {name: self.bpf[name] for name in
                        ("transitions", "duration_slots", "duration_sum_ns", "counters", "close_wait_entered")}

    def read(self) -> BpfReading:
        if self.bpf is None:   # never read map fds that were closed: they may be reused
            raise BpfUnavailable("the eBPF program is detached")
        reading = BpfReading()
        transitions = _sum_per_cpu(self._tables["transitions"], NSTATES * NSTATES)
        for index, count in enumerate(transitions):
            if count:
                reading.transitions[divmod(index, NSTATES)] = count
        slots = _sum_per_cpu(self._tables["duration_slots"], NSTATES * SLOTS)
        sums = _sum_per_cpu(self._tables["duration_sum_ns"], NSTATES)
        for state in range(NSTATES):
            row = slots[state * SLOTS:(state + 1) * SLOTS]
            reading.duration_slots[state] = row
            reading.duration_sum_ns[state] = sums[state]
        reading.counters = dict(zip(COUNTERS, _sum_per_cpu(self._tables["counters"], len(COUNTERS))))
        for key, value in self._tables["close_wait_entered"].items():
            length = 4 if key.family == socket.AF_INET else 16
            reading.close_wait_entered_ns[tuple_key(
                key.family, key.sport, key.dport, bytes(key.saddr)[:length], bytes(key.daddr)[:length])] = value.value
        return reading

    def poll_events(self, callback, timeout_ms: int = 200) -> None:
        """For ``tcpwatch trace`` only: per-event output through the perf buffer."""
        if not hasattr(self, "_events_open"):
            def decode(cpu, data, size):
                callback(ctypes.cast(data, ctypes.POINTER(TraceEvent)).contents)

            self.bpf["events"].open_perf_buffer(decode)
            self._events_open = True
        self.bpf.perf_buffer_poll(timeout=timeout_ms)

    def close(self) -> None:
        bpf = getattr(self, "bpf", None)
        if bpf is not None:
            bpf.cleanup()
            self.bpf = None


def _sum_per_cpu(table, size: int) -> list:
    """Per-CPU array values summed over CPUs, in key order."""
    values = [0] * size
    for key, per_cpu in table.items():
        values[key.value] = sum(per_cpu)
    return values


def _why(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "super-user" in text or isinstance(exc, PermissionError):
        return "not allowed to load eBPF programs (needs root or CAP_BPF and CAP_PERFMON)"
    if "compile" in text.lower():
        return ("the eBPF program did not compile: kernel headers missing or unusable "
                "under /lib/modules/$(uname -r)/build (run tcpwatch doctor)")
    return f"the eBPF program could not be loaded: {text}"


CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    """The CapEff bit mask of this process."""
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing_capabilities(effective: int) -> list:
    """What loading and attaching the program lacks: CAP_BPF and CAP_PERFMON (Linux 5.8+),
    or CAP_SYS_ADMIN, which covers both."""
    if effective >> CAP_SYS_ADMIN & 1:
        return []
    return [name for bit, name in ((CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")) if not effective >> bit & 1]


def check_prerequisites() -> None:
    """Fail early, with the reason, on what bcc would report obscurely."""
    missing = missing_capabilities(effective_capabilities())
    if missing:
        raise BpfUnavailable(f"not allowed to load eBPF programs: missing {' and '.join(missing)} "
                             "(needs root, or CAP_BPF and CAP_PERFMON)")
    try:
        os.listdir(TRACEFS)
    except PermissionError:
        raise BpfUnavailable(f"cannot read tracefs on {TRACEFS} (mode 0700: needs root or "
                             "CAP_DAC_READ_SEARCH)") from None
    except OSError:
        pass
    if not os.path.exists(f"{TRACEFS}/events/{TRACEPOINT}") and not os.path.exists(
            f"/sys/kernel/debug/tracing/events/{TRACEPOINT}"):
        if not os.path.ismount(TRACEFS):
            raise BpfUnavailable(f"tracefs is not mounted on {TRACEFS} (mount -t tracefs tracefs {TRACEFS})")
        raise BpfUnavailable(f"the tracepoint {TRACEPOINT} does not exist (Linux 4.16 or later needed)")

