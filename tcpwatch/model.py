"""Plain data passed between the sources and the collectors: no I/O, no libraries.

A ``DiagSnapshot`` is what one inet_diag dump says, already reduced to what the metrics use,
so that a scrape of 100k sockets keeps a few dicts of ints rather than 100k objects.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

# Placeholder process names, documented in the README. Brackets keep them apart from real
# comm values in practice (a process may still rename itself to one; that is its choice).
KERNEL_HELD = "[kernel]"      # no fd anywhere: TIME_WAIT, orphans after close()
UNKNOWN_OWNER = "[unknown]"   # has an inode, but no /proc/*/fd we could read points at it
OTHER = "other"               # everything past the top-N cap


class Endpoint(NamedTuple):
    """A local (family, address, port); address is the raw 4 or 16 bytes, never exported.

    A NamedTuple, not a dataclass: the decoder makes one per listener, CLOSE_WAIT socket
    and unaccepted connection, and a tuple is built in C.
    """

    family: str
    address: bytes
    port: int

    @property
    def is_wildcard(self) -> bool:
        return not any(self.address)


@dataclass(frozen=True)
class Listener:
    endpoint: Endpoint
    inode: int
    queue_length: int   # sk_ack_backlog: connections waiting for accept()
    queue_limit: int    # sk_max_ack_backlog: the backlog given to listen(), capped by somaxconn


class CloseWaitSocket(NamedTuple):
    cookie: int         # the kernel's socket cookie: stable for the socket's life
    inode: int          # 0 while the socket waits in an accept queue
    endpoint: Endpoint  # local end
    remote_address: bytes = b""
    remote_port: int = 0

    def tuple_key(self) -> tuple:
        """Joins this socket to the eBPF program's CLOSE_WAIT entry times (same layout)."""
        family = 2 if self.endpoint.family == "ipv4" else 10
        return (family, self.endpoint.port, self.remote_port, self.endpoint.address, self.remote_address)


@dataclass
class DiagSnapshot:
    """One dump of TCP sockets over IPv4 and IPv6."""

    counts: Counter = field(default_factory=Counter)         # (family, state) -> sockets
    listeners: list = field(default_factory=list)            # [Listener]
    inode_states: dict = field(default_factory=dict)         # inode -> state, inode != 0
    unaccepted: Counter = field(default_factory=Counter)     # (Endpoint, state) -> sockets, inode 0
    time_wait_min_remaining_ms: int = -1                     # shortest TIME_WAIT timer left; -1: none
    close_wait: list = field(default_factory=list)           # [CloseWaitSocket]
    netns_inode: int = 0                                      # the namespace dumped; 0: unknown
    server_ports: Counter = field(default_factory=Counter)   # (local port listened on, state) -> sockets
    client_ports: Counter = field(default_factory=Counter)   # (remote port, state) -> the other sockets

    def total(self) -> int:
        return sum(self.counts.values())

    def per_state(self) -> Counter:
        """Sockets per state over both families."""
        totals = Counter()
        for (_family, state), count in self.counts.items():
            totals[state] += count
        return totals


@dataclass(frozen=True)
class DumpWants:
    """What each inet_diag dump keeps beyond the counts: fixed at start-up by the flags."""

    owners: bool = True   # each socket's inode (to join owners) and CLOSE_WAIT details
    ports: bool = False   # connections per service port (--collector.port)


@dataclass
class SocketOwners:
    """Which process holds each socket: from the /proc walk (sources/processes.py) or the
    eBPF task_file iterator (sources/ebpf_maps.py)."""

    owners: dict = field(default_factory=dict)   # inode -> process name (comm)
    pids: dict = field(default_factory=dict)     # inode -> pid of that process
    unreadable: int = 0                          # processes whose fds we were not allowed to read


@dataclass
class NetnsActivity:
    """What the eBPF program counted in one network namespace (or, summed, in all of them)."""

    transitions: Counter = field(default_factory=Counter)      # (from, to) -> count
    duration_slots: dict = field(default_factory=dict)         # state -> [count per histogram slot]
    duration_sum_ns: Counter = field(default_factory=Counter)  # state -> ns
    counters: Counter = field(default_factory=Counter)         # retransmits, resets_sent, resets_received

    def add(self, other: "NetnsActivity") -> None:
        self.transitions.update(other.transitions)
        self.duration_sum_ns.update(other.duration_sum_ns)
        self.counters.update(other.counters)
        for state, slots in other.duration_slots.items():
            mine = self.duration_slots.setdefault(state, [0] * len(slots))
            self.duration_slots[state] = [a + b for a, b in zip(mine, slots)]


@dataclass
class BpfReading:
    """What the eBPF program's maps hold at one scrape, summed over CPUs.

    ``close_wait_entered_ns`` is keyed by socket cookie when the program could make cookies
    (tp_btf), else by (netns inode, family, local port, remote port, local, remote address).
    """

    attach_mode: str = ""                                      # tp_btf or tracepoint
    attach_reason: str = ""                                    # why that mode (one word)
    headers: str = ""                                          # bundled or kernel: what bcc compiled against
    netns: dict = field(default_factory=dict)                  # netns key (cookie; 0: unknown) -> NetnsActivity
    netns_inodes: dict = field(default_factory=dict)           # netns key -> its inode
    counters: dict = field(default_factory=dict)               # program-wide: name -> count
    close_wait_by_cookie: bool = True
    close_wait_entered_ns: dict = field(default_factory=dict)  # cookie or tuple key -> CLOCK_MONOTONIC ns

    def total(self) -> NetnsActivity:
        """Every namespace summed."""
        total = NetnsActivity()
        for activity in self.netns.values():
            total.add(activity)
        return total

    def close_wait_entered(self, sock: CloseWaitSocket, netns: int):
        """When ``sock``, dumped from namespace ``netns``, entered CLOSE_WAIT; None if unseen."""
        if self.close_wait_by_cookie:
            return self.close_wait_entered_ns.get(sock.cookie)
        key = sock.tuple_key()
        entered = self.close_wait_entered_ns.get((netns,) + key)
        return entered if entered is not None else self.close_wait_entered_ns.get((0,) + key)


@dataclass(frozen=True)
class NetnsInfo:
    """A network namespace and the name it is exported under (see namespaces.py)."""

    inode: int
    name: str
    kind: str                  # host, pod, container, named, unnamed
    runtime: str = ""
    pod_namespace: str = ""
    pod: str = ""
    container_id: str = ""


# The kernel's counters read per namespace (/proc/net/netstat and snmp): those tcpwatch
# exports (collectors/netns.py), and only those, are parsed and kept.
KERNEL_FIELDS = {
    "TcpExt": frozenset(("ListenOverflows", "ListenDrops", "TCPTimeWaitOverflow", "TCPAbortOnClose",
                         "TCPAbortOnData", "TCPAbortOnTimeout", "TCPAbortOnMemory", "TCPAbortOnLinger")),
    "Tcp": frozenset(("ActiveOpens", "PassiveOpens")),
}


@dataclass
class NetnsDump:
    """What one scrape read in one namespace."""

    info: NetnsInfo
    snap: DiagSnapshot
    kernel_counters: dict = field(default_factory=dict)   # {"TcpExt": {name: n}, "Tcp": {...}}
    ephemeral_ports: int = -1                            # -1: not readable
    cookie: int = 0                                      # the namespace's cookie; 0: unknown

    @property
    def identity(self):
        """What tells this namespace from every other, ever: its cookie, else its inode."""
        return self.cookie or ("inode", self.info.inode)


@dataclass
class NamespaceDumps:
    """Every namespace of one scrape: those dumped, and what could not be."""

    dumps: list = field(default_factory=list)             # [NetnsDump]
    infos: dict = field(default_factory=dict)             # inode -> NetnsInfo, every one found
    unreadable: int = 0                                   # namespaces found but not read
    failures: Counter = field(default_factory=Counter)    # reason -> namespaces, this scrape
    source: str = "inet_diag"                             # what counted the sockets: or ebpf_iterator
    reason: str = ""                                      # why inet_diag: ebpf_off, flag, unavailable, iterator_failed
