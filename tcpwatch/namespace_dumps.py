"""One scrape's view of every network namespace: discovery, names, and a dump of each.

Glue between the sources (``sources/netns.py`` finds and enters namespaces,
``sources/runtime.py`` names containers, ``sources/inet_diag.py`` dumps) and the pure
naming rules of ``namespaces.py``. Two steps, each its own source in the scrape's snapshot:
``discover`` (the ``netns`` collector's time) and ``dump_all`` (``inet_diag``'s). Degrades
instead of failing: without CAP_SYS_ADMIN only tcpwatch's own namespace is read (one
warning; ``tcpwatch_netns_unreadable`` counts the rest), and a namespace that vanishes
mid-scrape is counted and skipped.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass

from . import namespaces
from .model import KERNEL_FIELDS, DumpWants, NamespaceDumps, NetnsDump, NetnsInfo
from .sources import inet_diag, netns, runtime

log = logging.getLogger(__name__)

# Namespaces dumped at once (at most one per CPU). A dump's cost is mostly the kernel's walk
# of the host-wide socket hash, which runs in recv() without the GIL, so threads scale it.
PARALLEL_DUMPS = 4
INET_DIAG = "inet_diag"


@dataclass
class Discovered:
    """Every namespace found now, named, and which of them this scrape dumps."""

    infos: dict       # inode -> NetnsInfo, every namespace found
    targets: dict     # inode -> netns.NetnsRef, the namespaces to dump
    own_inode: int    # tcpwatch's own namespace


class NamespaceDumper:
    """Finds, names and dumps network namespaces. ``wants`` is fixed at start-up."""

    def __init__(self, wants: DumpWants = DumpWants(), all_namespaces: bool = True, proc_root: str = "/proc",
                 named_dir: str = netns.NAMED_NETNS_DIR, runtimes=None, socket_iterator=None,
                 fallback_reason: str = "ebpf_off"):
        self._wants = wants
        # Counting: the eBPF socket iterator (sources/ebpf_iterators.py) when given, else
        # inet_diag, and the one word that says why (the sockets collector exports it).
        self._iterator = socket_iterator
        self._fallback_reason = fallback_reason
        self._iterator_warned = False
        self._all = all_namespaces
        self._proc_root = proc_root
        self._named_dir = named_dir
        self._reader = netns.Reader(proc_root, named_dir)
        self._runtimes = runtimes or runtime.Runtimes()
        self._no_privilege = False
        self._pid_containers = {}   # pid -> container id, for this scrape
        self._parallel = max(1, min(PARALLEL_DUMPS, os.cpu_count() or 1))
        self._executor = None
        self._failure_lock = threading.Lock()

    def container_of(self, pid: int):
        """The Container the process runs in, or None (cached for the scrape)."""
        cid = self._pid_containers.get(pid)
        if cid is None:
            cid = self._pid_containers[pid] = runtime.container_id(pid, self._proc_root)
        return self._runtimes.lookup(cid) if cid else None

    def names(self) -> dict:
        """{inode: NetnsInfo} of every namespace found now, without reading any of them."""
        return self.discover().infos

    def discover(self) -> Discovered:
        """Every namespace on the host, named (every one is named: the eBPF program's counters
        of all of them need labels); with --no-collector.netns only tcpwatch's own is dumped."""
        self._pid_containers = {}
        self._runtimes.forget_unasked()   # containers nobody asked about last scrape are gone
        found = netns.discover(self._proc_root, self._named_dir)
        if not self._all:   # --no-collector.netns: tcpwatch's own namespace is the "host"
            found.host_inode = found.own_inode
        infos = [namespaces.name_one(ref.inode, found.host_inode,
                                     [self.container_of(pid) for pid in ref.pids], ref.bind_names)
                 for ref in found.namespaces.values()]
        targets = found.namespaces if self._all else {
            found.own_inode: found.namespaces.get(found.own_inode, netns.NetnsRef(found.own_inode))}
        return Discovered(namespaces.unique(infos), targets, found.own_inode)

    def dump_all(self, discovered: Discovered) -> NamespaceDumps:
        """One walk of every target namespace's sockets (the eBPF socket iterator, else an
        inet_diag dump), and its kernel counter files."""
        result = NamespaceDumps(infos=discovered.infos)
        result.source, result.reason = ((self._iterator.source, "") if self._iterator is not None
                                        else (INET_DIAG, self._fallback_reason))
        # Handles first, in this thread (setns happens here, once per new namespace), then
        # the dumps in parallel: each kernel walk runs inside read() or recv(), without the GIL.
        opened = []
        for inode, ref in sorted(discovered.targets.items(), key=lambda item: item[1].pids[:1] or [1 << 31]):
            handles = self._handles_of(ref, result.infos[inode], result.failures)
            if handles is None:
                result.unreadable += 1
            else:
                opened.append((ref, result.infos[inode], handles))

        def read(item):
            return self._dump_one(*item, result)

        if len(opened) > 1 and self._parallel > 1:
            dumped = list(self._pool().map(read, opened))
        else:
            dumped = [read(item) for item in opened]
        for item in dumped:
            if item is None:
                result.unreadable += 1
            else:
                result.dumps.append(item)
        self._reader.retire(set(discovered.targets))
        runtime_errors = self._runtimes.take_errors()
        if runtime_errors:
            result.failures["runtime_state"] += runtime_errors
        return result

    def _pool(self):
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(self._parallel, thread_name_prefix="netns-dump")
        return self._executor

    def _handles_of(self, ref, info: NetnsInfo, failures: Counter):
        if self._no_privilege and ref.inode != self._reader.own_inode:
            return None
        try:
            return self._reader.handles(ref)
        except netns.NoPrivilege as exc:
            self._no_privilege = True
            log.warning("cannot enter other network namespaces: reading tcpwatch's own only "
                        "(tcpwatch_netns_unreadable counts the rest)", extra={"error": str(exc)})
        except netns.NamespaceGone:
            failures["vanished"] += 1
            log.info("network namespace gone before it could be read", extra={"netns": info.name})
        except OSError as exc:
            failures["error"] += 1
            log.error("cannot open a network namespace", extra={"netns": info.name, "error": str(exc)})
        return None

    def _dump_one(self, ref, info: NetnsInfo, handles, result: NamespaceDumps):
        failures = result.failures
        try:
            snap = self._count(ref, info, handles, result)
        except OSError as exc:
            with self._failure_lock:
                self._reader.drop(ref.inode)
                failures["error"] += 1
            log.error("inet_diag dump failed", extra={"netns": info.name, "error": str(exc)})
            return None
        counters = {}
        for name in handles.files:
            try:
                counters.update(netns.parse_counters(handles.read_file(name), KERNEL_FIELDS))
            except OSError as exc:
                log.debug("counter file unreadable", extra={"netns": info.name, "error": str(exc)})
        try:
            ports = handles.ephemeral_ports()
        except (OSError, ValueError):
            ports = -1
        return NetnsDump(info, snap, counters, ports, handles.cookie)

    def _count(self, ref, info: NetnsInfo, handles, result: NamespaceDumps):
        """One namespace's DiagSnapshot: by the socket iterator, or by inet_diag when there is
        none or it failed here (then for this namespace and this scrape only)."""
        if self._iterator is not None:
            try:
                fd = self._reader.inside(handles, self._iterator.open)
                return self._iterator.dump(fd, self._wants, ref.inode)
            except OSError as exc:
                with self._failure_lock:
                    result.source, result.reason = INET_DIAG, "iterator_failed"
                    warn, self._iterator_warned = not self._iterator_warned, True
                (log.warning if warn else log.debug)(
                    "socket iterator failed, counting with inet_diag", extra={"netns": info.name, "error": str(exc)})
        return inet_diag.dump(self._wants, handles.diag, ref.inode)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._reader.close()

