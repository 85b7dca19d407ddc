"""TCP state transitions and time in state from the eBPF program in ``bpf/tcpstates.c``.

The only module that imports bcc (the distribution's python3-bpfcc). bcc compiles the
program and owns its maps. Settings and every kernel struct offset (from the running
kernel's BTF, never from the installed headers) are passed as -D flags.

Two attach modes:
  tp_btf      BTF-typed raw tracepoints. bcc 0.26 cannot load these itself: it derives a
              tracing program's attach type from its name prefix, and has none for tp_btf.
              So bcc compiles them, and this module loads the instructions it compiled with
              one bpf(BPF_PROG_LOAD) call (BPF_PROG_TYPE_TRACING, BPF_TRACE_RAW_TP, the BTF id
              of the btf_trace_<tracepoint> typedef), then attaches them with libbcc's
              bpf_attach_kfunc (a raw_tracepoint_open on the program).
  tracepoint  the classic tracepoints, which bcc loads and attaches itself; the fallback.

The maps are read at scrape time: per-CPU values are summed here, nothing is read per event.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass
from importlib import resources

from .. import histograms
from ..model import BpfReading, NetnsActivity, OwnerScan
from . import btf

log = logging.getLogger(__name__)

NSTATES = 16
HIST_SLOTS = histograms.SLOTS
COUNTERS = ("unknown_socket", "netns_full", "slot_taken")
TCP_CLOSE_WAIT = 8
# struct entered of tcpstates.c in tp_btf mode: cookie, state, namespace slot, entry ns.
SOCKET_ROW = struct.Struct("<QIIQ")
NETNS_COUNTERS = ("retransmits", "resets_sent", "resets_received")
TRACEFS = "/sys/kernel/tracing"
TRACEPOINT = "sock/inet_sock_set_state"
ATTACH_MODES = ("auto", "tp_btf", "tracepoint")
DEFAULT_MAX_NETNS = 128
TCP_TIMEWAIT_LEN_NS = 60 * 10**9   # include/net/tcp.h: TCP_TIMEWAIT_LEN, the timewait timer's span
CLOCK_MONOTONIC_COARSE = 6         # its resolution is the kernel's tick: 1/HZ

# Each tp_btf function of tcpstates.c and its tracepoint; the timer hooks only with TIME_WAIT timing.
TP_BTF_HOOKS = (("tp_btf_inet_sock_set_state", "inet_sock_set_state"),
                ("tp_btf_tcp_retransmit_skb", "tcp_retransmit_skb"),
                ("tp_btf_tcp_send_reset", "tcp_send_reset"),
                ("tp_btf_tcp_receive_reset", "tcp_receive_reset"))
TP_BTF_TIMER_HOOKS = (("tp_btf_timer_start", "timer_start"),
                      ("tp_btf_timer_expire_entry", "timer_expire_entry"),
                      ("tp_btf_timer_cancel", "timer_cancel"))

# Every kernel field the program reads: -D name -> (struct, member path, the size each read
# assumes, None when only the offset matters). Offsets come from BTF; a kernel whose BTF gives another size is refused, not misread.
FIELDS = {
    "OFF_SK_PROTOCOL": ("sock", "sk_protocol", 2),
    "OFF_SKC_FAMILY": ("sock", "__sk_common.skc_family", 2),
    "OFF_INET_SPORT": ("inet_sock", "inet_sport", 2),
    "OFF_SKC_NUM": ("sock", "__sk_common.skc_num", 2),
    "OFF_SKC_DPORT": ("sock", "__sk_common.skc_dport", 2),
    "OFF_SKC_RCV_SADDR": ("sock", "__sk_common.skc_rcv_saddr", 4),
    "OFF_SKC_DADDR": ("sock", "__sk_common.skc_daddr", 4),
    "OFF_SKC_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr", 16),
    "OFF_SKC_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr", 16),
    "OFF_SKC_NET": ("sock", "__sk_common.skc_net", 8),
    "OFF_SKC_COOKIE": ("sock", "__sk_common.skc_cookie", 8),
    "OFF_NS_INUM": ("net", "ns.inum", 4),
    "OFF_SKB_DEV": ("sk_buff", "dev", 8),
    "OFF_DEV_ND_NET": ("net_device", "nd_net", 8),
    "OFF_TIMER_FUNCTION": ("timer_list", "function", 8),
    "OFF_TIMER_EXPIRES": ("timer_list", "expires", 8),
    "OFF_TW_TIMER": ("inet_timewait_sock", "tw_timer", None),   # only its start is used
    "OFF_TW_SUBSTATE": ("inet_timewait_sock", "tw_substate", 1),
}


class _Tuple(ctypes.Structure):
    """struct tuple of tcpstates.c."""

    _fields_ = [("family", ctypes.c_uint16), ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16),
                ("pad", ctypes.c_uint16), ("netns", ctypes.c_uint32), ("pad2", ctypes.c_uint32),
                ("saddr", ctypes.c_uint8 * 16), ("daddr", ctypes.c_uint8 * 16)]


class TraceEvent(ctypes.Structure):
    """struct event of tcpstates.c (EMIT_EVENTS only)."""

    _fields_ = [("ts_ns", ctypes.c_uint64), ("dwell_ns", ctypes.c_uint64), ("cookie", ctypes.c_uint64),
                ("tuple", _Tuple), ("oldstate", ctypes.c_uint32), ("newstate", ctypes.c_uint32),
                ("pid", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("comm", ctypes.c_char * 16)]


# struct netns_stats of tcpstates.c, as u64 words.
_STATS_WORDS = NSTATES * NSTATES + NSTATES * HIST_SLOTS + NSTATES + len(NETNS_COUNTERS)


class BpfUnavailable(Exception):
    """The program cannot be loaded here; the message says why in one line."""


class AttachModeUnavailable(BpfUnavailable):
    """The attach mode the operator asked for cannot be used here (bad input: exit 2)."""


@dataclass(frozen=True)
class AttachChoice:
    """The attach mode in use and why: ``reason`` is one word, for a label."""

    mode: str      # tp_btf or tracepoint
    reason: str    # requested, btf, no_btf, tp_btf_refused
    detail: str = ""


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


def tuple_key(netns: int, family: int, sport: int, dport: int, saddr: bytes, daddr: bytes) -> tuple:
    """The tracepoint-mode join key between the CLOSE_WAIT map and inet_diag's sockets."""
    return (netns, family, sport, dport, bytes(saddr), bytes(daddr))


# What the socket-owner iterator reads (OWNER_ITER in tcpstates.c), apart from FIELDS so that
# a kernel lacking one loses only the iterator (owners then come from the /proc walk).
OWNER_FIELDS = {
    "OFF_TASK_TGID": ("task_struct", "tgid", 4),
    "OFF_TASK_COMM": ("task_struct", "comm", 16),
    "OFF_FILE_INODE": ("file", "f_inode", 8),
    "OFF_INODE_MODE": ("inode", "i_mode", 2),
    "OFF_INODE_INO": ("inode", "i_ino", 8),
}
OWNER_ITERATOR = "bpf_iter_task_file"   # the kernel function an iter/task_file program attaches to
_SOCKET_OWNER = struct.Struct("=IIQ16s")   # struct socket_owner


def _offsets(types, fields: dict) -> dict:
    offsets = {}
    for name, (struct_name, path, expected) in fields.items():
        offset, size = types.offset(struct_name, path)
        if expected is not None and size != expected:
            raise btf.BtfError(f"struct {struct_name}.{path} is {size} bytes here, not {expected}")
        offsets[name] = offset
    return offsets


def owner_layout(btf_path: str = btf.VMLINUX) -> tuple:
    """(-D offsets, BTF id of bpf_iter_task_file) for the socket-owner iterator; BtfError
    when this kernel's BTF cannot describe it."""
    types = btf.Btf.load(btf_path)
    return _offsets(types, OWNER_FIELDS), types.type_id(btf.FUNC, OWNER_ITERATOR)


PROC_PID_INIT_INO = 0xEFFFFFFC   # include/linux/proc_ns.h: the initial pid namespace's inode


def in_initial_pid_namespace() -> bool:
    """The iterator reports pids as the initial pid namespace numbers them: only usable
    where tcpwatch (and so its /proc) numbers them the same way."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino == PROC_PID_INIT_INO
    except OSError:
        return False


def kernel_layout(btf_path: str = btf.VMLINUX, hooks=TP_BTF_HOOKS + TP_BTF_TIMER_HOOKS):
    """(-D offsets, {tracepoint: BTF id of btf_trace_<tracepoint>}) from the kernel's BTF.
    Raises btf.BtfError when the BTF is missing or does not describe what the program reads."""
    types = btf.Btf.load(btf_path)
    offsets = _offsets(types, FIELDS)
    ids = {tracepoint: types.type_id(btf.TYPEDEF, f"btf_trace_{tracepoint}") for _fn, tracepoint in hooks}
    return offsets, ids


class BpfProgram:
    """The loaded program. ``close()`` detaches everything; call it, atexit does not run on signals."""

    def __init__(self, max_sockets: int = 65536, port_range=None, track_time_wait: bool = True,
                 emit_events: bool = False, attach: str = "auto", max_netns: int = DEFAULT_MAX_NETNS,
                 btf_path: str = btf.VMLINUX, scan_owners: bool = False):
        self.bpf = None
        self._links: list = []
        self._prog_fds: list = []
        self._owner_link = None   # the socket-owner iterator's link fd, when it is attached
        if attach not in ATTACH_MODES:
            raise AttachModeUnavailable(f"unknown attach mode {attach!r}: want one of {', '.join(ATTACH_MODES)}")
        check_capabilities()
        try:
            from bcc import BPF  # noqa: F401
        except ImportError as exc:
            raise BpfUnavailable(f"bcc is not importable ({exc}); install python3-bpfcc") from None
        if not 1 <= max_sockets <= 1 << 24:
            raise BpfUnavailable(f"--collector.bpf.max-sockets {max_sockets} is outside 1..16777216")
        if not 2 <= max_netns <= 1 << 16:
            raise BpfUnavailable(f"--collector.bpf.max-netns {max_netns} is outside 2..65536")
        self.max_netns = max_netns
        self.socket_slots = 1 << (max_sockets - 1).bit_length()   # rows of socket_table (tp_btf)
        cflags = [f"-DMAX_SOCKETS={max_sockets}", f"-DMAX_NETNS={max_netns}", "-Wno-macro-redefined",
                  f"-DSOCKET_SLOTS={self.socket_slots}",
                  f"-DHIST_FIRST={histograms.FIRST_SLOT}", f"-DHIST_LAST={histograms.LAST_SLOT}"]
        if port_range:
            cflags += [f"-DPORT_MIN={port_range[0]}", f"-DPORT_MAX={port_range[1]}"]
        offsets, ids, layout_error = {}, {}, ""
        try:
            offsets, ids = kernel_layout(btf_path)
        except btf.BtfError as exc:
            layout_error = str(exc)
        self.time_wait_tracked = False
        if track_time_wait:
            handler = kernel_symbol("tw_timer_handler")
            if not handler:
                log.warning("time_wait timing disabled: /proc/kallsyms hides tw_timer_handler's "
                            "address (tcpwatch needs CAP_SYSLOG to read it)")
            elif layout_error:
                if attach == "tracepoint":   # otherwise the fallback's warning below says it
                    log.warning("time_wait timing disabled: it reads timewait sockets at offsets "
                                "from the kernel's BTF", extra={"reason": layout_error})
            else:
                tick_ns = round(time.clock_getres(CLOCK_MONOTONIC_COARSE) * 1e9)   # one jiffy
                cflags += ["-DTRACK_TIME_WAIT", f"-DTW_TIMER_HANDLER={handler:#x}ULL", f"-DTICK_NS={tick_ns}ULL",
                           f"-DTW_LEN_JIFFIES={TCP_TIMEWAIT_LEN_NS // tick_ns}LL"]
                self.time_wait_tracked = True
        if emit_events:
            cflags.append("-DEMIT_EVENTS")
        hooks = TP_BTF_HOOKS + (TP_BTF_TIMER_HOOKS if self.time_wait_tracked else ())

        if attach == "tracepoint":
            self.attach = AttachChoice("tracepoint", "requested")
        elif layout_error:
            if attach == "tp_btf":
                raise AttachModeUnavailable(f"--collector.bpf.attach tp_btf: {layout_error}")
            self.attach = AttachChoice("tracepoint", "no_btf", layout_error)
        else:
            self.attach = AttachChoice("tp_btf", "requested" if attach == "tp_btf" else "btf")
        owner_iterator, no_iterator = self._owner_iterator_flags(btf_path, cflags) if scan_owners else (None, "")
        if self.attach.mode == "tp_btf":
            try:
                self._load(cflags + ["-DATTACH_TP_BTF"], offsets, ids, hooks, tp_btf=True)
            except BpfUnavailable as exc:
                self.close()
                if attach == "tp_btf":
                    raise AttachModeUnavailable(f"--collector.bpf.attach tp_btf: {exc}") from None
                self.attach = AttachChoice("tracepoint", "tp_btf_refused", str(exc))
        if self.attach.mode == "tracepoint":
            check_tracefs()
            self._load(cflags, offsets, {}, (), tp_btf=False)
        if self.attach.detail:
            lost = ("; without BTF there are no namespace inodes (netns 0) and no time_wait timing"
                    if layout_error else "")
            log.warning("ebpf: tp_btf not used, attached to the classic tracepoints" + lost,
                        extra={"reason": self.attach.detail})
        if owner_iterator is not None:
            self._attach_owner_iterator(owner_iterator)
        elif no_iterator:
            log.info("socket owners come from the /proc walk, not the eBPF iterator", extra={"reason": no_iterator})
        self._release_compiler_memory()

    @staticmethod
    def _owner_iterator_flags(btf_path: str, cflags: list) -> tuple:
        """Compile the socket-owner iterator in (cflags), when it can work here: (the BTF id
        it attaches to, "") or (None, why not: owners then come from the /proc walk)."""
        if not in_initial_pid_namespace():
            return None, "tcpwatch runs in a pid namespace of its own"
        try:
            offsets, iterator_id = owner_layout(btf_path)
        except btf.BtfError as exc:
            return None, str(exc)
        cflags += ["-DOWNER_ITER"] + [f"-D{name}={value}" for name, value in offsets.items()]
        return iterator_id, ""

    def _attach_owner_iterator(self, iterator_id: int) -> None:
        try:
            prog_fd = _load_tracing(self.bpf.dump_func(b"socket_owners"), "socket_owners",
                                    _BPF_TRACE_ITER, iterator_id)
        except BpfUnavailable as exc:
            log.warning("socket owners come from the /proc walk: the iterator did not load",
                        extra={"reason": str(exc)})
            return
        self._prog_fds.append(prog_fd)
        attr = ctypes.create_string_buffer(struct.pack("IIII", prog_fd, 0, _BPF_TRACE_ITER, 0), 64)
        link = _libc.syscall(_SYS_BPF, _BPF_LINK_CREATE, attr, 64)
        if link < 0:
            log.warning("socket owners come from the /proc walk: the iterator did not attach",
                        extra={"reason": os.strerror(ctypes.get_errno())})
            return
        self._links.append(link)
        self._owner_link = link

    @property
    def scans_owners(self) -> bool:
        """The socket-owner iterator is attached: ``socket_owners`` works."""
        return self._owner_link is not None and self.bpf is not None

    def socket_owners(self, wanted_inodes=None) -> OwnerScan:
        """Every socket fd of every process, from one pass of the task_file iterator: the
        same OwnerScan as the /proc walk (a socket shared by processes goes to the lowest
        pid), at a fraction of the cost. OSError when the kernel refuses the read."""
        if not self.scans_owners:
            raise BpfUnavailable("the socket-owner iterator is not attached")
        attr = ctypes.create_string_buffer(struct.pack("II", self._owner_link, 0), 8)
        fd = _libc.syscall(_SYS_BPF, _BPF_ITER_CREATE, attr, 8)
        if fd < 0:
            error = ctypes.get_errno()
            raise OSError(error, f"cannot start the socket-owner iterator: {os.strerror(error)}")
        chunks = []
        try:
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        result = OwnerScan()
        owners, pids, names = result.owners, result.pids, {}
        for tgid, _pad, inode, comm in _SOCKET_OWNER.iter_unpack(b"".join(chunks)):
            if inode in owners or (wanted_inodes is not None and inode not in wanted_inodes):
                continue
            name = names.get(comm)
            if name is None:
                name = names[comm] = comm.split(b"\0", 1)[0].decode("utf-8", errors="replace")
            owners[inode] = name
            pids[inode] = tgid
        return result

    def _load(self, cflags: list, offsets: dict, ids: dict, hooks, tp_btf: bool) -> None:
        """Compile with bcc; in tp_btf mode also load and attach each hook ourselves."""
        from bcc import BPF

        cflags = cflags + [f"-D{name}={value}" for name, value in offsets.items()]
        devnull = os.open(os.devnull, os.O_WRONLY)
        saved = os.dup(2)
        try:
            os.dup2(devnull, 2)   # clang's and libbpf's chatter; the exception says what failed
            self.bpf = BPF(text=program_text().encode(), cflags=cflags)
        except Exception as exc:
            raise BpfUnavailable(_why(exc)) from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
        for function, tracepoint in hooks:
            prog_fd, link = attach_tp_btf(self.bpf, function, ids[tracepoint])
            self._prog_fds.append(prog_fd)
            if link is None:
                raise BpfUnavailable(f"cannot attach {function} to tracepoint {tracepoint}: "
                                     f"{os.strerror(ctypes.get_errno())}")
            self._links.append(link)
        free = self.bpf[b"free_slots"]
        for slot in range(1, self.max_netns):
            free.push(ctypes.c_uint32(slot))
        self._stats_fd = self.bpf[b"netns_stats"].map_fd
        self._last_fd = self.bpf[b"netns_last"].map_fd
        self._stale = {}   # slot -> (inode, counters) of namespaces not found at the last release
        self._slots = self.bpf[b"netns_slots"]
        self._counters = self.bpf[b"counters"]
        if tp_btf:   # the socket table, mapped read-only
            import mmap

            self._socket_table = mmap.mmap(self.bpf[b"socket_table"].map_fd, self.socket_slots * SOCKET_ROW.size,
                                           mmap.MAP_SHARED, mmap.PROT_READ)
            self._close_wait = None
        else:
            self._socket_table = None
            self._close_wait = self.bpf[b"close_wait_entered"]
        from bcc.utils import get_possible_cpus

        self._ncpus = len(get_possible_cpus())

    @staticmethod
    def _release_compiler_memory() -> None:
        """LLVM leaves tens of MB of freed heap behind after compiling; give it back."""
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass

    def read(self) -> BpfReading:
        if self.bpf is None:   # never read map fds that were closed: they may be reused
            raise BpfUnavailable("the eBPF program is detached")
        reading = BpfReading(attach_mode=self.attach.mode, attach_reason=self.attach.reason,
                             close_wait_by_cookie=self.attach.mode == "tp_btf")
        slots = {0: 0}
        slots.update((slot.value, inode.value) for inode, slot in self._slots.items())
        for slot, inode in slots.items():
            words = self._sum_stats(slot)
            if any(words):
                reading.netns[inode] = _activity(words)
        reading.counters = dict(zip(COUNTERS, _sum_per_cpu(self._counters, len(COUNTERS))))
        reading.counters["netns_tracked"] = len(slots) - 1
        if self._socket_table is not None:
            reading.close_wait_entered_ns = self._close_wait_rows()
            return reading
        for key, value in self._close_wait.items():
            length = 4 if key.family == socket.AF_INET else 16
            reading.close_wait_entered_ns[tuple_key(
                key.netns, key.family, key.sport, key.dport, bytes(key.saddr)[:length],
                bytes(key.daddr)[:length])] = value.ns
        return reading

    def _close_wait_rows(self) -> dict:
        """{cookie: entry ns} of the rows of socket_table in CLOSE_WAIT. The states are picked
        out of the mapped table with one strided slice (C speed), then those rows unpacked."""
        table = self._socket_table
        words = memoryview(table).cast("I")
        stride = SOCKET_ROW.size // 4
        states = words[2::stride].tolist()
        words.release()
        entered = {}
        for row in (i for i, state in enumerate(states) if state == TCP_CLOSE_WAIT):
            cookie, state, _slot, ns = SOCKET_ROW.unpack_from(table, row * SOCKET_ROW.size)
            if cookie and state == TCP_CLOSE_WAIT:   # re-checked: the row may have changed since
                entered[cookie] = ns
        return entered

    def _sum_stats(self, slot: int) -> list:
        """One namespace slot of netns_stats, summed over CPUs, as u64 words."""
        from bcc.libbcc import lib

        buffer = (ctypes.c_uint64 * (_STATS_WORDS * self._ncpus))()
        key = ctypes.c_uint32(slot)
        if lib.bpf_lookup_elem(self._stats_fd, ctypes.byref(key), buffer) < 0:
            raise BpfUnavailable(f"cannot read netns_stats[{slot}]: {os.strerror(ctypes.get_errno())}")
        return [sum(buffer[i::_STATS_WORDS]) for i in range(_STATS_WORDS)]

    def release_stale_netns(self, live_inodes) -> int:
        """Give back the slots of namespaces that are gone, for new ones to take.

        A slot is released when its namespace was not found on the host (``live_inodes``) at
        two calls in a row and its counters did not move between them: a namespace tcpwatch
        cannot see (an unreadable /proc entry) but that still has traffic keeps its slot.
        Returns the number of slots released.
        """
        from bcc.libbcc import lib

        previous, current, released = self._stale, {}, 0
        for key, value in list(self._slots.items()):
            inode, slot = key.value, value.value
            if inode in live_inodes:
                continue
            words = self._sum_stats(slot)
            if previous.get(slot) != (inode, words):
                current[slot] = (inode, words)
                continue
            # Order matters: unmap the inode first, so no new event resolves to the slot;
            # then forget it in every CPU's cache, zero its counters, and free it.
            self._slots.__delitem__(key)
            zero_cache = (ctypes.c_uint64 * self._ncpus)()
            if lib.bpf_update_elem(self._last_fd, ctypes.byref(ctypes.c_uint32(0)), zero_cache, 0) < 0:
                raise BpfUnavailable(f"cannot clear netns_last: {os.strerror(ctypes.get_errno())}")
            zero_stats = (ctypes.c_uint64 * (_STATS_WORDS * self._ncpus))()
            if lib.bpf_update_elem(self._stats_fd, ctypes.byref(ctypes.c_uint32(slot)), zero_stats, 0) < 0:
                raise BpfUnavailable(f"cannot clear netns_stats[{slot}]: {os.strerror(ctypes.get_errno())}")
            self.bpf[b"free_slots"].push(ctypes.c_uint32(slot))
            released += 1
        self._stale = current
        return released

    def poll_events(self, callback, timeout_ms: int = 200) -> None:
        """For ``tcpwatch trace`` only: per-event output through the perf buffer."""
        if not hasattr(self, "_events_open"):
            def decode(cpu, data, size):
                callback(ctypes.cast(data, ctypes.POINTER(TraceEvent)).contents)

            self.bpf[b"events"].open_perf_buffer(decode)
            self._events_open = True
        self.bpf.perf_buffer_poll(timeout=timeout_ms)

    def close(self) -> None:
        table = getattr(self, "_socket_table", None)
        if table is not None:
            table.close()
            self._socket_table = None
        for fd in self._links + self._prog_fds:   # links first: closing one detaches its program
            os.close(fd)
        self._links, self._prog_fds = [], []
        self._owner_link = None
        bpf = self.bpf
        if bpf is not None:
            bpf.cleanup()
            self.bpf = None


def _activity(words: list) -> NetnsActivity:
    """A NetnsActivity from the u64 words of one struct netns_stats."""
    activity = NetnsActivity()
    transitions = words[:NSTATES * NSTATES]
    for index, count in enumerate(transitions):
        if count:
            activity.transitions[divmod(index, NSTATES)] = count
    at = NSTATES * NSTATES
    for state in range(NSTATES):
        row = words[at + state * HIST_SLOTS:at + (state + 1) * HIST_SLOTS]
        if any(row):
            activity.duration_slots[state] = row
    at += NSTATES * HIST_SLOTS
    for state, total in enumerate(words[at:at + NSTATES]):
        if total:
            activity.duration_sum_ns[state] = total
    at += NSTATES
    activity.counters.update({name: count for name, count in zip(NETNS_COUNTERS, words[at:]) if count})
    return activity


# bpf(2) for the calls bcc cannot make for us: loading tp_btf and iterator programs, and
# making an iterator's link and its readable fd.
_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
_BPF_PROG_LOAD = 5
_BPF_LINK_CREATE = 28
_BPF_ITER_CREATE = 33
_BPF_PROG_TYPE_TRACING = 26
_BPF_TRACE_RAW_TP = 23
_BPF_TRACE_ITER = 28
_libc = ctypes.CDLL(None, use_errno=True)


def attach_tp_btf(compiled, function: str, btf_id: int) -> tuple:
    """Load ``function`` of a bcc-compiled module as a tp_btf program on the tracepoint whose
    ``btf_trace_`` typedef has ``btf_id``, then attach it: (program fd, link fd or None when
    the attach failed; errno tells why). BpfUnavailable when the kernel refuses the program."""
    from bcc.libbcc import lib

    prog_fd = _load_tracing(compiled.dump_func(function.encode()), function, _BPF_TRACE_RAW_TP, btf_id)
    link = lib.bpf_attach_kfunc(prog_fd)   # raw_tracepoint_open(NULL, prog_fd)
    return prog_fd, (link if link >= 0 else None)


def _load_tracing(instructions: bytes, name: str, attach_type: int, btf_id: int) -> int:
    """Load compiled instructions as a BTF-typed tracing program (tp_btf: BPF_TRACE_RAW_TP on
    a btf_trace_ typedef; an iterator: BPF_TRACE_ITER on a bpf_iter_ function); its fd, or
    BpfUnavailable with the verifier's last words."""
    kind = "tp_btf" if attach_type == _BPF_TRACE_RAW_TP else "an iterator"
    code = ctypes.create_string_buffer(instructions, len(instructions))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)   # union bpf_attr, BPF_PROG_LOAD part (Linux 5.5+)

    def attempt(log_buffer=None) -> int:
        struct.pack_into("IIQQ", attr, 0, _BPF_PROG_TYPE_TRACING, len(instructions) // 8,
                         ctypes.addressof(code), ctypes.addressof(license_))
        if log_buffer is not None:
            struct.pack_into("IIQ", attr, 24, 1, len(log_buffer), ctypes.addressof(log_buffer))
        attr[48:64] = name[:15].encode().ljust(16, b"\0")       # prog_name, for bpftool
        struct.pack_into("I", attr, 68, attach_type)              # expected_attach_type
        struct.pack_into("I", attr, 108, btf_id)                 # attach_btf_id
        return _libc.syscall(_SYS_BPF, _BPF_PROG_LOAD, attr, len(attr))

    fd = attempt()
    if fd >= 0:
        return fd
    error = ctypes.get_errno()
    if error == errno.EPERM:   # no privilege; EACCES and EINVAL come with a verifier log
        raise BpfUnavailable(f"the kernel refused to load {name} as {kind}: {os.strerror(error)}")
    verifier = ctypes.create_string_buffer(1 << 20)
    retry = attempt(verifier)
    if retry >= 0:
        return retry
    lines = [line for line in verifier.value.decode(errors="replace").splitlines() if line.strip()]
    log.debug("verifier log", extra={"program": name, "log": "\n".join(lines[-60:])})
    last = next((line for line in reversed(lines) if "processed" not in line), os.strerror(error))
    raise BpfUnavailable(f"the verifier refused {name} as {kind}: {last.strip()}")


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


def check_capabilities() -> None:
    """Fail early, with the reason, on what bcc would report obscurely."""
    missing = missing_capabilities(effective_capabilities())
    if missing:
        raise BpfUnavailable(f"not allowed to load eBPF programs: missing {' and '.join(missing)} "
                             "(needs root, or CAP_BPF and CAP_PERFMON)")


def check_tracefs() -> None:
    """The classic tracepoints need tracefs (tp_btf does not)."""
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
