"""One scrape's inputs, gathered once and shared by every collector.

The order: the eBPF maps are read (before any other thread competes for the interpreter),
the owner walk starts in its own thread, the namespaces are found and dumped beside it, stale
eBPF namespace slots are released, and the owner walk is joined. Each source records its own seconds and its failure: a source that raised has no
data (``failed``); one that answered with some of its parts missing keeps its data and says
so (``degraded``). The collectors (``collectors/``) turn a snapshot into metric families;
derived data that several of them use (the namespace groups, who owns each socket) is
computed once, on first use, by the first collector that needs it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Optional

from . import attribution, namespace_book, namespaces, ports
from .model import KERNEL_HELD, UNKNOWN_OWNER, NamespaceDumps, NetnsActivity, NetnsDump
from .namespace_book import NamespaceBook

# The sources of a snapshot; each is owned by one collector (collectors/__init__.py).
EBPF, NETNS, INET_DIAG, OWNERS = "ebpf", "netns", "inet_diag", "owners"
_PLACEHOLDER_KEYS = {name: (name, "", "", "") for name in attribution.PLACEHOLDERS}


@dataclass
class Sources:
    """Where a snapshot's inputs come from. ``dumper`` has ``discover()``,
    ``dump_all(discovered)`` and ``container_of(pid)`` (namespace_dumps.NamespaceDumper);
    ``owner_walk(inodes)`` gives SocketOwners; ``bpf_read()`` a BpfReading and
    ``bpf_release(live cookies, live inodes of namespaces whose cookie is unknown)`` gives
    back gone namespaces' slots (None: eBPF is off)."""

    dumper: object
    owner_walk: Optional[Callable] = None          # None: --no-collector.process
    bpf_read: Optional[Callable] = None
    bpf_release: Optional[Callable] = None


class NamespaceTotals:
    """Everything exported under one netns label: one namespace, or all of "other" or "gone"."""

    def __init__(self):
        self.counts = Counter()              # (family, state) -> sockets
        self.listeners = []                  # [Listener]
        self.time_wait_min_ms = -1           # shortest TIME_WAIT timer left; -1: none
        self.ephemeral_ports = -1            # -1: unknown, or a sum that would mean nothing
        self.kernel = {}                     # {"TcpExt": Counter, "Tcp": Counter}, monotone (ledger.py)
        self.ports = {side: Counter() for side in ports.SIDES}
        self.activity = NetnsActivity()      # the eBPF program's counts, monotone (ledger.py)
        self.has_activity = False
        self.dumped = False

    def add_dump(self, dump: NetnsDump, alone: bool) -> None:
        self.dumped = True
        snap = dump.snap
        self.counts.update(snap.counts)
        self.listeners.extend(snap.listeners)
        remaining = snap.time_wait_min_remaining_ms
        if remaining >= 0 and (self.time_wait_min_ms < 0 or remaining < self.time_wait_min_ms):
            self.time_wait_min_ms = remaining
        if alone:   # a sum of port ranges over namespaces means nothing
            self.ephemeral_ports = dump.ephemeral_ports
        self.ports["server"].update(snap.server_ports)
        self.ports["client"].update(snap.client_ports)


@dataclass
class NamespaceGroups:
    """Namespaces as they are exported: the top --collector.netns.max-series by socket count
    keep their name, the rest are summed under "other"; counters of namespaces no longer
    found are under "gone" (namespace_book.py)."""

    label_of_inode: dict = field(default_factory=dict)   # inode -> netns label
    by_label: dict = field(default_factory=dict)         # netns label -> NamespaceTotals

    @classmethod
    def build(cls, infos: dict, dumps: Optional[NamespaceDumps], reading, max_series: int,
              book: NamespaceBook) -> "NamespaceGroups":
        dumped = dumps.dumps if dumps is not None else []
        names = {inode: info.name for inode, info in infos.items()}   # found, not read: "other"
        names.update(book.name_dumps(dumped))
        weights = {names[dump.info.inode]: dump.snap.total() for dump in dumped}
        groups = cls(namespace_book.cap(names, weights, max_series))
        members = Counter(groups.label_of_inode[dump.info.inode] for dump in dumped)
        for dump in dumped:
            label = groups.label_of_inode[dump.info.inode]
            alone = members[label] == 1 and label != namespaces.OTHER
            groups.by_label.setdefault(label, NamespaceTotals()).add_dump(dump, alone)
        if reading is not None:
            for label, activity in book.activity_exports(reading, groups.label_of_inode, dumps).items():
                totals = groups.by_label.setdefault(label, NamespaceTotals())
                totals.activity, totals.has_activity = activity, True
        if dumps is not None:
            for label, kernel in book.kernel_exports(groups.label_of_inode, dumps).items():
                groups.by_label.setdefault(label, NamespaceTotals()).kernel = kernel
        return groups

    def dumped(self):
        """(label, NamespaceTotals) of the labels with dumped sockets, by label."""
        return [(label, totals) for label, totals in sorted(self.by_label.items()) if totals.dumped]


class Snapshot:
    """What one scrape read; see the module docstring."""

    def __init__(self, netns_max_series: int = 128, container_of: Optional[Callable] = None,
                 book: Optional[NamespaceBook] = None):
        self.netns_max_series = netns_max_series
        self.container_of = container_of   # pid -> Container or None
        self.book = book if book is not None else NamespaceBook()   # kept across scrapes by the caller
        self.reading = None                # BpfReading, or None
        self.discovered = None             # namespace_dumps.Discovered, or None
        self.dumps: Optional[NamespaceDumps] = None
        self.owners = None                 # SocketOwners, or None
        self.seconds = Counter()           # source -> seconds it took
        self.failed = {}                   # source -> why it gave nothing
        self.degraded = {}                 # source -> why part of it is missing

    def run(self, source: str, call: Callable, *args):
        """``call(*args)``, timed as ``source``; its exception is recorded, not raised."""
        started = time.perf_counter()
        try:
            return call(*args)
        except Exception as exc:   # one failing source must not fail the scrape
            self.failed[source] = str(exc) or type(exc).__name__
            return None
        finally:
            self.seconds[source] += time.perf_counter() - started

    @property
    def infos(self) -> dict:
        """{inode: NetnsInfo} of every namespace found at this scrape."""
        return self.discovered.infos if self.discovered is not None else {}

    @cached_property
    def groups(self) -> NamespaceGroups:
        return NamespaceGroups.build(self.infos, self.dumps, self.reading, self.netns_max_series, self.book)

    @cached_property
    def owner_keys(self) -> dict:
        """{inode: (comm, container, pod namespace, pod)} for every socket a process holds
        (TCP or not: the others are never looked up). The container is found once per
        process; the per-socket work is done in C."""
        found = self.owners
        holders = list(map(found.pids.get, found.owners))   # pid of each inode
        if None in holders:   # a walk that did not say which process: the name stands in
            holders = [comm if pid is None else pid for pid, comm in zip(holders, found.owners.values())]
        by_holder = {}
        for holder, comm in dict(zip(holders, found.owners.values())).items():
            pid = holder if isinstance(holder, int) else None
            container = self.container_of(pid) if (self.container_of and pid) else None
            by_holder[holder] = ((comm, container.name, container.pod_namespace, container.pod)
                                 if container else (comm, "", "", ""))
        return dict(zip(found.owners, map(by_holder.__getitem__, holders)))

    @cached_property
    def ownership(self) -> list:
        """[(netns label, dump, attribution.Ownership)] of every dumped namespace: which
        owner holds each socket, keyed (comm, container, pod namespace, pod)."""
        keys = self.owner_keys
        unknown, kernel = _PLACEHOLDER_KEYS[UNKNOWN_OWNER], _PLACEHOLDER_KEYS[KERNEL_HELD]
        label_of = self.groups.label_of_inode
        return [(label_of[dump.info.inode], dump, attribution.attribute(dump.snap, keys, unknown, kernel))
                for dump in self.dumps.dumps]


def take(sources: Sources, owner_pool, netns_max_series: int, book: NamespaceBook) -> Snapshot:
    """Read every source once, in the order of the module docstring. ``owner_pool`` runs
    the owner walk beside the dumps: both are mostly syscalls, and neither needs the other
    until the owners are joined to the sockets."""
    snap = Snapshot(netns_max_series, getattr(sources.dumper, "container_of", None), book)
    if sources.bpf_read is not None:
        snap.reading = snap.run(EBPF, sources.bpf_read)
    walk = owner_pool.submit(_timed, sources.owner_walk) if sources.owner_walk is not None else None
    snap.discovered = snap.run(NETNS, sources.dumper.discover)
    if snap.discovered is None:
        snap.failed.setdefault(INET_DIAG, f"namespace discovery failed: {snap.failed[NETNS]}")
    else:
        snap.dumps = snap.run(INET_DIAG, sources.dumper.dump_all, snap.discovered)
    if snap.dumps is not None:
        _check_dumps(snap)
        if snap.reading is not None and sources.bpf_release is not None:
            with_cookie = {dump.info.inode: dump.cookie for dump in snap.dumps.dumps if dump.cookie}
            snap.run("ebpf_release", sources.bpf_release, set(with_cookie.values()),
                     set(snap.infos) - set(with_cookie))
            _fold_release(snap)
    if walk is not None:
        _join_walk(snap, walk)
    return snap


def _timed(call):
    started = time.perf_counter()
    return call(None), time.perf_counter() - started


def _check_dumps(snap: Snapshot) -> None:
    if not snap.dumps.dumps:
        snap.failed[INET_DIAG] = "no network namespace could be dumped"
        snap.dumps = None
    elif snap.dumps.failures.get("error"):
        snap.degraded[INET_DIAG] = f"{snap.dumps.failures['error']} namespace(s) failed (logged above)"


def _fold_release(snap: Snapshot) -> None:
    """Releasing slots is part of the eBPF source: its time and its failure are ebpf's."""
    snap.seconds[EBPF] += snap.seconds.pop("ebpf_release", 0.0)
    failure = snap.failed.pop("ebpf_release", None)
    if failure is not None:
        snap.degraded[EBPF] = f"releasing namespace slots failed: {failure}"


def _join_walk(snap: Snapshot, walk) -> None:
    try:
        snap.owners, seconds = walk.result()
        snap.seconds[OWNERS] += seconds
    except Exception as exc:
        snap.failed[OWNERS] = str(exc) or type(exc).__name__
