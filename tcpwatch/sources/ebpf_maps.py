"""Reading and writing the loaded program's maps, at scrape time only.

Per-CPU values are summed here; nothing is read per event. The per-namespace statistics are
looked up with raw bpf(2) calls, the tp_btf socket table is mapped read-only, and the
socket-owner iterator is read in one pass. Pure helpers (the decoding of a namespace's
words, the rule that releases a gone namespace's slot) are tested without a kernel.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
import struct
import sys

from .. import histograms, states
from ..model import BpfReading, NetnsActivity, SocketOwners
from . import ebpf_iterators, ebpf_syscall as sys_bpf

NSTATES = 16
HIST_SLOTS = histograms.SLOTS
COUNTERS = ("unknown_socket", "netns_full", "slot_taken")
NETNS_COUNTERS = ("retransmits", "resets_sent", "resets_received")
# struct netns_stats of tcpstates.c, as u64 words.
STATS_WORDS = NSTATES * NSTATES + NSTATES * HIST_SLOTS + NSTATES + len(NETNS_COUNTERS)
# struct entered of tcpstates.c in tp_btf mode: cookie, state, namespace slot, entry ns.
SOCKET_ROW = struct.Struct("<QIIQ")
SOCKET_OWNER = struct.Struct("=IIQ16s")   # struct socket_owner: tgid, pad, inode, comm
SLOT_VALUE = struct.Struct("=II")          # struct netns_slot_value: slot, inode
TUPLE = struct.Struct("=HHHxxI4x16s16s")   # struct tuple: family, sport, dport, netns, saddr, daddr
CLOSE_WAIT_VALUE = struct.Struct("=QI4x")  # struct close_wait_value: ns, netns


class _Tuple(ctypes.Structure):
    """struct tuple of tcpstates.c."""

    _fields_ = [("family", ctypes.c_uint16), ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16),
                ("pad", ctypes.c_uint16), ("netns", ctypes.c_uint32), ("pad2", ctypes.c_uint32),
                ("saddr", ctypes.c_uint8 * 16), ("daddr", ctypes.c_uint8 * 16)]


class TraceEvent(ctypes.Structure):
    """struct event of tcpstates.c (EMIT_EVENTS only)."""

    _fields_ = [("ts_ns", ctypes.c_uint64), ("dwell_ns", ctypes.c_uint64), ("cookie", ctypes.c_uint64),
                ("tuple", _Tuple), ("oldstate", ctypes.c_uint32), ("newstate", ctypes.c_uint32),
                ("pid", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("comm", ctypes.c_char * 16),
                ("snd_una", ctypes.c_uint32), ("snd_nxt", ctypes.c_uint32), ("write_seq", ctypes.c_uint32),
                ("rcv_nxt", ctypes.c_uint32)]


def tuple_key(netns: int, family: int, sport: int, dport: int, saddr: bytes, daddr: bytes) -> tuple:
    """The tracepoint-mode join key between the CLOSE_WAIT map and inet_diag's sockets."""
    return (netns, family, sport, dport, bytes(saddr), bytes(daddr))


def decode_activity(words: list) -> NetnsActivity:
    """A NetnsActivity from the u64 words of one struct netns_stats: transitions[from][to],
    then a histogram of slots per state, the ns spent per state, then NETNS_COUNTERS."""
    activity = NetnsActivity()
    for index, count in enumerate(words[:NSTATES * NSTATES]):
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


class StaleSlots:
    """The two-strike rule for giving back a namespace's slot.

    A slot is released when its namespace was not found on the host at two calls in a row
    and its counters did not move between them: a namespace tcpwatch cannot see (an
    unreadable /proc entry) but that still has traffic keeps its slot.
    """

    def __init__(self):
        self._suspects = {}   # slot -> (namespace, counter words) when last found missing

    def to_release(self, slots: dict, live, words_of) -> list:
        """Slots to release now. ``slots``: {slot: its namespace}; ``live``: the namespaces
        found now; ``words_of(slot)``: its counters."""
        previous, suspects, release = self._suspects, {}, []
        for slot, namespace in slots.items():
            if namespace in live:
                continue
            seen = (namespace, words_of(slot))
            if previous.get(slot) == seen:
                release.append(slot)
            else:
                suspects[slot] = seen
        self._suspects = suspects
        return release


class ProgramMaps:
    """The maps of a loaded program, read and written by fd with raw bpf(2) calls: the same
    whether bcc compiled in this process or in a child (ebpf_load.py). ``maps``: {name: fd};
    the fds stay the loader's."""

    def __init__(self, maps: dict, attach, owner_link, socket_slots: int, max_netns: int):
        self._maps = maps
        self._attach = attach
        self._owner_link = owner_link   # the socket-owner iterator's link, or None
        self._stale = StaleSlots()
        self._ncpus = sys_bpf.possible_cpus()
        for slot in range(1, max_netns):
            sys_bpf.map_push(maps["free_slots"], ctypes.c_uint32(slot))
        self._socket_table = None
        if attach.mode == "tp_btf":   # the socket table, mapped read-only
            self._socket_table = mmap.mmap(maps["socket_table"], socket_slots * SOCKET_ROW.size,
                                           mmap.MAP_SHARED, mmap.PROT_READ)

    def close(self) -> None:
        if self._socket_table is not None:
            self._socket_table.close()
            self._socket_table = None

    def read(self) -> BpfReading:
        reading = BpfReading(attach_mode=self._attach.mode, attach_reason=self._attach.reason,
                             close_wait_by_cookie=self._socket_table is not None)
        slots = self._slot_ids()
        for slot, (key, inode) in slots.items():
            words = self._sum_stats(slot)
            if any(words):
                reading.netns[key] = decode_activity(words)
                reading.netns_inodes[key] = inode
        reading.counters = dict(zip(COUNTERS, self._sum_counters()))
        reading.counters["netns_tracked"] = len(slots) - 1
        reading.close_wait_entered_ns = self._close_wait_entries()
        return reading

    def _slot_ids(self) -> dict:
        """{slot: (key, inode)}: the namespace's key (its cookie, or its inode on kernels
        without net_cookie) and inode; slot 0 is the unknown namespace, (0, 0)."""
        slots = {0: (0, 0)}
        fd, value = self._maps["netns_slots"], ctypes.create_string_buffer(SLOT_VALUE.size)
        for raw in sys_bpf.map_keys(fd, 8):
            try:
                sys_bpf.map_lookup(fd, ctypes.create_string_buffer(raw, 8), value)
            except sys_bpf.BpfCallFailed:
                continue   # released meanwhile
            slot, inode = SLOT_VALUE.unpack(value.raw)
            slots[slot] = (int.from_bytes(raw, sys.byteorder), inode)
        return slots

    def _close_wait_entries(self) -> dict:
        if self._socket_table is not None:
            return self._close_wait_rows()
        entered, fd = {}, self._maps["close_wait_entered"]
        value = ctypes.create_string_buffer(CLOSE_WAIT_VALUE.size)
        for raw in sys_bpf.map_keys(fd, TUPLE.size):
            try:
                sys_bpf.map_lookup(fd, ctypes.create_string_buffer(raw, TUPLE.size), value)
            except sys_bpf.BpfCallFailed:
                continue
            family, sport, dport, netns, saddr, daddr = TUPLE.unpack(raw)
            length = 4 if family == socket.AF_INET else 16
            entered[tuple_key(netns, family, sport, dport, saddr[:length], daddr[:length])] = \
                CLOSE_WAIT_VALUE.unpack(value.raw)[0]
        return entered

    def _close_wait_rows(self) -> dict:
        """{cookie: entry ns} of the rows of socket_table in CLOSE_WAIT. The states are picked
        out of the mapped table with one strided slice (C speed), then those rows unpacked."""
        table = self._socket_table
        words = memoryview(table).cast("I")
        row_states = words[2::SOCKET_ROW.size // 4].tolist()
        words.release()
        entered = {}
        for row in (i for i, state in enumerate(row_states) if state == states.CLOSE_WAIT):
            cookie, state, _slot, ns = SOCKET_ROW.unpack_from(table, row * SOCKET_ROW.size)
            if cookie and state == states.CLOSE_WAIT:   # re-checked: the row may have changed since
                entered[cookie] = ns
        return entered

    def _sum_stats(self, slot: int) -> list:
        """One namespace slot of netns_stats, summed over CPUs, as u64 words."""
        buffer = (ctypes.c_uint64 * (STATS_WORDS * self._ncpus))()
        try:
            sys_bpf.map_lookup(self._maps["netns_stats"], ctypes.c_uint32(slot), buffer)
        except sys_bpf.BpfCallFailed as exc:
            raise OSError(exc.errno, f"cannot read netns_stats[{slot}]: {exc.strerror}") from None
        words = memoryview(buffer).cast("B").cast("Q").tolist()   # one CPU's struct after another
        return list(map(sum, zip(*[words[cpu * STATS_WORDS:(cpu + 1) * STATS_WORDS] for cpu in range(self._ncpus)])))

    def release_stale_netns(self, live_keys, live_inodes=()) -> int:
        """Give back the slots of namespaces that are gone (StaleSlots' rule), for new ones to
        take: live are the namespaces whose key (cookie) is in ``live_keys``, or whose inode
        is in ``live_inodes`` (found, but their cookie unknown). Returns the slots released."""
        slots = {slot: ids for slot, ids in self._slot_ids().items() if slot}
        live = {ids for ids in slots.values() if ids[0] in live_keys or ids[1] in live_inodes}
        release = self._stale.to_release(slots, live, self._sum_stats)
        for slot in release:
            # Order matters: unmap the key first, so no new event resolves to the slot;
            # then forget it in every CPU's cache, zero its counters, and free it.
            sys_bpf.map_delete(self._maps["netns_slots"], ctypes.c_uint64(slots[slot][0]))
            sys_bpf.map_update(self._maps["netns_last"], ctypes.c_uint32(0),
                               (ctypes.c_uint64 * (2 * self._ncpus))())
            sys_bpf.map_update(self._maps["netns_stats"], ctypes.c_uint32(slot),
                               (ctypes.c_uint64 * (STATS_WORDS * self._ncpus))())
            sys_bpf.map_push(self._maps["free_slots"], ctypes.c_uint32(slot))
        return len(release)

    def _sum_counters(self) -> list:
        """The program-wide per-CPU counters, summed over CPUs, in COUNTERS order."""
        values, buffer = [], (ctypes.c_uint64 * self._ncpus)()
        for index in range(len(COUNTERS)):
            sys_bpf.map_lookup(self._maps["counters"], ctypes.c_uint32(index), buffer)
            values.append(sum(buffer))
        return values

    @property
    def has_owner_iterator(self) -> bool:
        return self._owner_link is not None

    def socket_owners(self, wanted_inodes=None) -> SocketOwners:
        """Every socket fd of every process, from one pass of the task_file iterator: the
        same SocketOwners as the /proc walk (a socket shared by processes goes to the lowest
        pid), at a fraction of the cost. OSError when the kernel refuses the read."""
        records = ebpf_iterators.read_to_end(ebpf_iterators.start(self._owner_link, "socket-owner"))
        return _owners_of(records, wanted_inodes)


def _owners_of(records: bytes, wanted_inodes) -> SocketOwners:
    result = SocketOwners()
    owners, pids, names = result.owners, result.pids, {}
    for tgid, _pad, inode, comm in SOCKET_OWNER.iter_unpack(records):
        if inode in owners or (wanted_inodes is not None and inode not in wanted_inodes):
            continue
        name = names.get(comm)
        if name is None:
            name = names[comm] = comm.split(b"\0", 1)[0].decode("utf-8", errors="replace")
        owners[inode] = name
        pids[inode] = tgid
    return result



