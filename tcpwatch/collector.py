"""The Prometheus collector: metric families built fresh at every scrape.

Scrapes are serialised by a lock (the CLOSE_WAIT first-seen memory is shared state) and
coalesced: a scrape that waited for another one reuses its result when that collection
started after the waiting scrape arrived, so 50 concurrent scrapers cost one dump, not 50.
A failing source gives ``tcpwatch_scrape_collector_success{collector} 0`` and the others
still answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from . import __version__, attribution, histograms, namespaces, ports, states
from .model import KERNEL_HELD, OTHER, UNKNOWN_OWNER, BpfReading, NetnsActivity, NetnsDump, NetnsScan

log = logging.getLogger(__name__)

COLLECTOR_INET_DIAG = "inet_diag"
COLLECTOR_PROCESS = "process"
COLLECTOR_EBPF = "ebpf"
COLLECTOR_NETNS = "netns"
COLLECTOR_PORT = "port"


@dataclass(frozen=True)
class CollectorOptions:
    process_enabled: bool = True
    process_max_series: int = 20
    listen_max_ports: int = 64
    netns_max_series: int = 128
    port_enabled: bool = True
    port_server_max: int = 10
    port_client_max: int = 10
    port_include: frozenset = frozenset()


# Kernel counters exported per namespace: (group, field in /proc/net/netstat or snmp).
_ABORTS = (("close", "TCPAbortOnClose"), ("data", "TCPAbortOnData"), ("timeout", "TCPAbortOnTimeout"),
           ("memory", "TCPAbortOnMemory"), ("linger", "TCPAbortOnLinger"))
_KERNEL_COUNTERS = (
    ("tcpwatch_listen_overflows_total", "TcpExt", "ListenOverflows",
     "Connections dropped because a listener's accept queue was full (TcpExt ListenOverflows)."),
    ("tcpwatch_listen_drops_total", "TcpExt", "ListenDrops",
     "SYNs and handshake ACKs dropped at listening sockets for any reason, overflows included "
     "(TcpExt ListenDrops)."),
    ("tcpwatch_time_wait_overflows_total", "TcpExt", "TCPTimeWaitOverflow",
     "Connections closed without a TIME_WAIT socket because net.ipv4.tcp_max_tw_buckets was "
     "reached (TcpExt TCPTimeWaitOverflow)."),
)
_PLACEHOLDER_KEYS = {name: (name, "", "", "") for name in attribution.PLACEHOLDERS}


class _Group:
    """Everything exported under one netns label: one namespace, or all of "other"."""

    def __init__(self):
        self.counts = Counter()
        self.listeners = []
        self.time_wait_min_ms = -1
        self.ephemeral_ports = -1
        self.kernel = {}
        self.ports = {side: Counter() for side in ports.SIDES}
        self.activity = NetnsActivity()
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
        for group, fields in dump.kernel_counters.items():
            mine = self.kernel.setdefault(group, Counter())
            mine.update(fields)


class TcpCollector:
    """Every network namespace: inet_diag dumps, kernel counters, owners, eBPF activity.

    ``namespaces(want_owners)`` returns a NetnsScan (``scan.NamespaceScanner.scan``, or
    ``scan.single_namespace`` over one dump function); ``scan_owners(inodes)`` an OwnerScan;
    ``container_of(pid)`` the Container a process runs in, or None.
    """

    def __init__(self, options: CollectorOptions, namespaces: Callable, scan_owners: Callable,
                 clock: Callable[[], float] = time.monotonic, bpf_read: Optional[Callable] = None,
                 container_of: Optional[Callable] = None, bpf_release: Optional[Callable] = None):
        self._options = options
        self._namespaces = namespaces
        self._scan_owners = scan_owners
        self._container_of = container_of
        self._bpf_read = bpf_read   # None: eBPF is off or could not load
        self._bpf_release = bpf_release
        self._clock = clock
        self._lock = threading.Lock()
        self._close_wait_first_seen = attribution.FirstSeen()
        self._warned_unreadable = False
        self._errors = {COLLECTOR_INET_DIAG: 0, COLLECTOR_PROCESS: 0, COLLECTOR_EBPF: 0, COLLECTOR_NETNS: 0}
        self._netns_failures = Counter({"vanished": 0, "error": 0, "runtime_state": 0})
        self._last_started = float("-inf")
        self._last_families: list = []
        self._owner_executor = None
        self.observers = []   # called with every fresh collection's families (the state API)

    def describe(self):
        return []  # keeps the registry from running a dump at registration

    def collect(self):
        arrived = self._clock()
        with self._lock:
            if self._last_started >= arrived:
                return list(self._last_families)
            self._last_started = self._clock()
            self._last_families = self._collect_now()
            for observe in self.observers:
                try:
                    observe(self._last_families)
                except Exception as exc:   # the page's history must never fail a scrape
                    log.error("collection observer failed", extra={"error": repr(exc)})
            return list(self._last_families)

    def _collect_now(self) -> list:
        opts = self._options
        families = []
        durations = GaugeMetricFamily(
            "tcpwatch_scrape_collector_duration_seconds",
            "Time each collector took during this scrape.", labels=["collector"])
        success = GaugeMetricFamily(
            "tcpwatch_scrape_collector_success",
            "1 if the collector produced its metrics during this scrape, 0 if it failed.",
            labels=["collector"])

        reading = None
        if self._bpf_read is not None:
            started = time.perf_counter()
            try:
                reading = self._bpf_read()
            except Exception as exc:
                self._errors[COLLECTOR_EBPF] += 1
                log.error("ebpf collector failed", extra={"error": str(exc)})
            durations.add_metric([COLLECTOR_EBPF], time.perf_counter() - started)
            success.add_metric([COLLECTOR_EBPF], 1.0 if reading is not None else 0.0)
        enabled = GaugeMetricFamily("tcpwatch_ebpf_enabled",
                                    "1 if the eBPF program is attached and read, 0 if not (see the log).")
        enabled.add_metric([], 1.0 if self._bpf_read is not None else 0.0)

        # The owner walk (/proc/*/fd) runs beside the namespace dumps: both are mostly
        # syscalls, and neither needs the other until the owners are joined to the sockets.
        owners = self._owner_pool().submit(self._timed_owner_walk) if opts.process_enabled else None
        scan = None
        started = time.perf_counter()
        try:
            scan = self._namespaces(opts.process_enabled, want_ports=opts.port_enabled)
        except Exception as exc:  # a failing source must not fail the scrape
            self._errors[COLLECTOR_INET_DIAG] += 1
            log.error("inet_diag collector failed", extra={"error": str(exc)})
        elapsed = time.perf_counter() - started
        seconds = scan.seconds if scan is not None and scan.seconds else {COLLECTOR_INET_DIAG: elapsed}
        dumped = scan is not None and bool(scan.dumps)
        if scan is not None and scan.failures.get("error"):
            self._errors[COLLECTOR_INET_DIAG] += 1   # some namespace failed; the log says which
        durations.add_metric([COLLECTOR_INET_DIAG], seconds.get(COLLECTOR_INET_DIAG, 0.0))
        success.add_metric([COLLECTOR_INET_DIAG],
                           1.0 if dumped and not scan.failures.get("error") else 0.0)
        if scan is not None and COLLECTOR_NETNS in seconds:
            durations.add_metric([COLLECTOR_NETNS], seconds[COLLECTOR_NETNS])
            success.add_metric([COLLECTOR_NETNS], 1.0)
        if scan is not None:
            self._netns_failures.update(scan.failures)
            if reading is not None and self._bpf_release is not None:
                try:
                    self._bpf_release(set(scan.infos))
                except Exception as exc:
                    log.error("releasing eBPF namespace slots failed", extra={"error": str(exc)})

        labels, groups = self._group(scan, reading)
        if reading is not None:
            families.extend(self._bpf_families(reading, groups))
        oldest = GaugeMetricFamily(
            "tcpwatch_state_oldest_age_seconds",
            "Age of the oldest socket now in the state, per network namespace. close_wait, per "
            f"owner (top {opts.process_max_series} by CLOSE_WAIT count, the rest under "
            "process=\"other\"): exact when the eBPF program saw the socket enter CLOSE_WAIT, "
            "otherwise measured from the first scrape that saw it (a lower bound). time_wait, "
            "process \"[kernel]\": 60 s (TCP_TIMEWAIT_LEN) less the shortest timewait timer left.",
            labels=["netns", "state", "process", "container", "pod_namespace", "pod"])
        if scan is not None:
            families.extend(self._socket_families(groups))
            families.extend(self._netns_families(scan, labels, groups))
            if opts.port_enabled:
                started = time.perf_counter()
                families.append(self._port_family(groups))
                durations.add_metric([COLLECTOR_PORT], time.perf_counter() - started)
                success.add_metric([COLLECTOR_PORT], 1.0 if dumped else 0.0)
            for label, group in groups.items():
                if group.time_wait_min_ms >= 0:
                    age = max(0.0, states.TIME_WAIT_SECONDS - group.time_wait_min_ms / 1000.0)
                    oldest.add_metric([label, "time_wait", KERNEL_HELD, "", "", ""], age)

        if opts.process_enabled:
            started = time.perf_counter()
            ok = False
            try:
                found, walk_seconds = owners.result()
                if dumped:
                    families.extend(self._process_families(scan, labels, reading, oldest, found))
                    ok = True
            except Exception as exc:
                walk_seconds = 0.0
                self._errors[COLLECTOR_PROCESS] += 1
                log.error("process collector failed", extra={"error": str(exc)})
            durations.add_metric([COLLECTOR_PROCESS], walk_seconds + time.perf_counter() - started)
            success.add_metric([COLLECTOR_PROCESS], 1.0 if ok else 0.0)

        build = GaugeMetricFamily("tcpwatch_build_info", "Always 1; the version of tcpwatch running.",
                                  labels=["version"])
        build.add_metric([__version__], 1.0)
        errors = CounterMetricFamily(
            "tcpwatch_scrape_collector_errors",
            "Scrapes in which the collector failed since tcpwatch started (the log says why).",
            labels=["collector"])
        for name in ([COLLECTOR_INET_DIAG] + ([COLLECTOR_PROCESS] if opts.process_enabled else [])
                     + ([COLLECTOR_EBPF] if self._bpf_read is not None else [])):
            errors.add_metric([name], self._errors[name])
        families.extend([oldest, enabled, durations, success, errors, build])
        return families

    def _owner_pool(self):
        if self._owner_executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._owner_executor = ThreadPoolExecutor(1, thread_name_prefix="owner-walk")
        return self._owner_executor

    def _timed_owner_walk(self):
        started = time.perf_counter()
        found = self._scan_owners(None)
        return found, time.perf_counter() - started

    def _group(self, scan, reading):
        """{inode: label} and {label: _Group}: the top --collector.netns.max-series namespaces
        by socket count keep their name, the rest are summed under "other"."""
        infos = dict(scan.infos) if scan is not None else {}
        weights = {}
        for dump in scan.dumps if scan is not None else ():
            weights[dump.info.name] = dump.snap.total()
        names = {inode: info.name for inode, info in infos.items()}
        for inode in (reading.netns if reading is not None else ()):
            if inode not in names:   # seen by the program, not found on the host (gone, or 0: unknown)
                names[inode] = f"netns-{inode}" if inode else namespaces.OTHER
                weights.setdefault(names[inode], 0)
        kept = namespaces.kept_names(weights, self._options.netns_max_series)
        labels = {inode: namespaces.label_of(name, kept) for inode, name in names.items()}
        groups = {}
        members = Counter(labels[dump.info.inode] for dump in (scan.dumps if scan is not None else ()))
        for dump in scan.dumps if scan is not None else ():
            label = labels[dump.info.inode]
            groups.setdefault(label, _Group()).add_dump(dump, members[label] == 1 and label != namespaces.OTHER)
        for inode, activity in (reading.netns.items() if reading is not None else ()):
            group = groups.setdefault(labels[inode], _Group())
            group.activity.add(activity)
            group.has_activity = True
        return labels, groups

    def _bpf_families(self, reading: BpfReading, groups: dict) -> list:
        attach = GaugeMetricFamily(
            "tcpwatch_ebpf_attach_info",
            "Always 1: how the eBPF program is attached. mode: tp_btf (BTF-typed raw tracepoints) "
            "or tracepoint (the classic ones, the fallback). reason: requested "
            "(--collector.bpf.attach), btf (auto, the kernel has BTF), no_btf (auto, no usable "
            "BTF), tp_btf_refused (auto, the kernel refused tp_btf; the log says why).",
            labels=["mode", "reason"])
        attach.add_metric([reading.attach_mode, reading.attach_reason], 1.0)
        tracked = GaugeMetricFamily(
            "tcpwatch_ebpf_netns_tracked",
            "Network namespaces the eBPF program keeps counters for "
            "(at most --collector.bpf.max-netns - 1; the rest count under netns_full).")
        tracked.add_metric([], reading.counters.get("netns_tracked", 0))
        transitions = CounterMetricFamily(
            "tcpwatch_state_transitions_total",
            "TCP state changes of full sockets seen by the eBPF program (sock:inet_sock_set_state) "
            "per network namespace, since tcpwatch started or the namespace appeared. Timewait "
            "sockets are not full sockets: entering TIME_WAIT shows as fin_wait2 -> close (or "
            "closing -> close).",
            labels=["netns", "from", "to"])
        duration = HistogramMetricFamily(
            "tcpwatch_state_duration_seconds",
            "Time sockets spent in a state, observed when they leave it, per network namespace "
            "(a socket still in the state is not counted: see tcpwatch_state_oldest_age_seconds). "
            "time_wait: life of timewait sockets, from creation to expiry or early reuse. Only "
            "states a namespace has seen are exported, but for host.",
            labels=["netns", "state"])
        retransmits = CounterMetricFamily(
            "tcpwatch_retransmits_total", "TCP segments retransmitted (tcp:tcp_retransmit_skb).",
            labels=["netns"])
        resets = CounterMetricFamily(
            "tcpwatch_resets_total",
            "TCP resets sent (tcp:tcp_send_reset) and received (tcp:tcp_receive_reset).",
            labels=["netns", "direction"])
        for label, group in sorted(groups.items()):
            if not group.has_activity and label != namespaces.HOST:
                continue
            total = group.activity
            pairs = set(states.KNOWN_TRANSITIONS) | set(total.transitions)
            for old, new in sorted(pairs):
                transitions.add_metric([label, states.name(old), states.name(new)],
                                       total.transitions.get((old, new), 0))
            for state in states.TIMED:
                slots = total.duration_slots.get(state)
                if not any(slots or ()) and label != namespaces.HOST:
                    continue
                slots = slots or []
                buckets = [(floatToGoString(le), count) for le, count in histograms.cumulative_buckets(slots)]
                duration.add_metric([label, states.name(state)], buckets,
                                    total.duration_sum_ns.get(state, 0) / 1e9)
            retransmits.add_metric([label], total.counters.get("retransmits", 0))
            resets.add_metric([label, "sent"], total.counters.get("resets_sent", 0))
            resets.add_metric([label, "received"], total.counters.get("resets_received", 0))
        untracked = CounterMetricFamily(
            "tcpwatch_ebpf_untracked_total",
            "Events the eBPF program could not time. unknown_socket: a socket left a state it "
            "entered before tcpwatch attached, or whose entry the full LRU map evicted "
            "(--collector.bpf.max-sockets). slot_taken: tp_btf, a new socket whose row in the "
            "socket table (indexed by socket cookie) a live socket held; it is not timed. "
            "netns_full: events of a network namespace that found every namespace slot taken "
            "(--collector.bpf.max-netns); they are counted under netns=\"other\".",
            labels=["reason"])
        for reason in ("unknown_socket", "slot_taken", "netns_full"):
            untracked.add_metric([reason], reading.counters.get(reason, 0))
        return [transitions, duration, untracked, retransmits, resets, attach, tracked]

    def _socket_families(self, groups: dict) -> list:
        sockets = GaugeMetricFamily(
            "tcpwatch_sockets",
            "TCP sockets per network namespace, address family and state, from one inet_diag "
            "dump of each namespace. time_wait counts timewait sockets by the substate the "
            "kernel reports (a timewait socket of a FIN_WAIT2 orphan counts as fin_wait2).",
            labels=["netns", "family", "state"])
        length = GaugeMetricFamily(
            "tcpwatch_listen_queue_length",
            "Connections waiting in the accept queue of listening sockets on this local port, "
            "summed over the port's listeners (a count of connections, not bytes).",
            labels=["netns", "port"])
        limit = GaugeMetricFamily(
            "tcpwatch_listen_queue_limit",
            "Accept-queue capacity (listen() backlog, capped by net.core.somaxconn) of "
            "listening sockets on this local port, summed over the port's listeners.",
            labels=["netns", "port"])
        ephemeral = GaugeMetricFamily(
            "tcpwatch_ephemeral_ports",
            "Ports in the namespace's net.ipv4.ip_local_port_range, from which connect() picks "
            "local ports: the most connections (TIME_WAIT included) that can exist at once to "
            "one remote address and port.", labels=["netns"])
        for label, group in sorted(groups.items()):
            if not group.dumped:
                continue
            for family in states.FAMILIES:
                for state in states.REPORTED:
                    sockets.add_metric([label, family, states.name(state)], group.counts.get((family, state), 0))
            for port, (queued, capacity) in attribution.listen_queues(
                    group.listeners, self._options.listen_max_ports).items():
                length.add_metric([label, port], queued)
                limit.add_metric([label, port], capacity)
            if group.ephemeral_ports >= 0:
                ephemeral.add_metric([label], group.ephemeral_ports)
        return [sockets, length, limit, ephemeral]

    def _port_family(self, groups: dict):
        opts = self._options
        family = GaugeMetricFamily(
            "tcpwatch_port_sockets",
            "TCP connections per network namespace and service port. side=\"server\": by local "
            "port, for connections on a port the namespace listens on; side=\"client\": every "
            f"other connection, by remote port (the upstream service). Top "
            f"{opts.port_server_max} server and {opts.port_client_max} client ports by "
            "connections, plus --collector.port.include, the rest under port=\"other\". Listening "
            "sockets are not counted. established, close_wait and time_wait are exported for "
            "every port; other states when not 0.",
            labels=["netns", "port", "side", "state"])
        for label, group in sorted(groups.items()):
            if not group.dumped:
                continue
            for side, most in (("server", opts.port_server_max), ("client", opts.port_client_max)):
                for port, counts in ports.top_ports(group.ports[side], most, opts.port_include).items():
                    for state in ports.exported_states(counts):
                        family.add_metric([label, port, side, states.name(state)], counts.get(state, 0))
        return family

    def _netns_families(self, scan: NetnsScan, labels: dict, groups: dict) -> list:
        info = GaugeMetricFamily(
            "tcpwatch_netns_info",
            "Always 1: what each netns label names. kind: host, pod, container, named (ip netns) "
            "or unnamed. pod_namespace and pod: the Kubernetes pod whose sandbox owns the "
            "namespace (join on netns to put them on any series). inode: as /proc/PID/ns/net shows.",
            labels=["netns", "inode", "kind", "runtime", "pod_namespace", "pod", "container_id"])
        for inode, netns_info in sorted(scan.infos.items()):
            label = labels.get(inode)
            if label is None or label == namespaces.OTHER:
                continue
            info.add_metric([label, str(inode), netns_info.kind, netns_info.runtime,
                             netns_info.pod_namespace, netns_info.pod, netns_info.container_id], 1.0)
        discovered = GaugeMetricFamily(
            "tcpwatch_netns_discovered",
            "Network namespaces found at this scrape (processes' and /run/netns bind mounts).")
        discovered.add_metric([], len(scan.infos))
        unreadable = GaugeMetricFamily(
            "tcpwatch_netns_unreadable",
            "Network namespaces found but not read at this scrape (no CAP_SYS_ADMIN to enter "
            "them, or gone meanwhile): their sockets are missing from every metric.")
        unreadable.add_metric([], scan.unreadable)
        failures = CounterMetricFamily(
            "tcpwatch_netns_read_failures",
            "Namespaces that could not be read during a scrape since tcpwatch started. vanished: "
            "it ended between discovery and the dump; error: the log says why; runtime_state: a "
            "container runtime's state file vanished or did not parse while naming (the "
            "container is named by its id's first 12 digits for that scrape).",
            labels=["reason"])
        for reason, count in sorted(self._netns_failures.items()):
            failures.add_metric([reason], count)
        result = [info, discovered, unreadable, failures]
        for name, group_name, field_name, text in _KERNEL_COUNTERS:
            family = CounterMetricFamily(name, text + " Per network namespace.", labels=["netns"])
            for label, group in sorted(groups.items()):
                if group.dumped and group_name in group.kernel:
                    family.add_metric([label], group.kernel[group_name].get(field_name, 0))
            result.append(family)
        aborts = CounterMetricFamily(
            "tcpwatch_aborts_total",
            "Connections the kernel aborted with a reset, per network namespace and reason "
            "(TcpExt TCPAbortOn*): close (closed with unread data), data (data after close), "
            "timeout (retransmissions or keepalives gave up), memory (out of socket memory), "
            "linger (SO_LINGER timed out).", labels=["netns", "reason"])
        opened = CounterMetricFamily(
            "tcpwatch_connections_opened_total",
            "Connections opened per network namespace: active (connect(), Tcp ActiveOpens) and "
            "passive (accepted handshakes, Tcp PassiveOpens).", labels=["netns", "direction"])
        for label, group in sorted(groups.items()):
            if not group.dumped:
                continue
            ext, tcp = group.kernel.get("TcpExt"), group.kernel.get("Tcp")
            if ext is not None:
                for reason, field_name in _ABORTS:
                    aborts.add_metric([label, reason], ext.get(field_name, 0))
            if tcp is not None:
                opened.add_metric([label, "active"], tcp.get("ActiveOpens", 0))
                opened.add_metric([label, "passive"], tcp.get("PassiveOpens", 0))
        return result + [aborts, opened]

    def _owner_keys(self, found) -> dict:
        """{inode: (comm, container, pod namespace, pod)} for every socket a process holds
        (TCP or not: the others are never looked up). The container is found once per
        process; the per-socket work is done in C."""
        holders = list(map(getattr(found, "pids", {}).get, found.owners))   # pid of each inode
        if None in holders:   # a scan that did not say which process: the name stands in
            holders = [comm if pid is None else pid for pid, comm in zip(holders, found.owners.values())]
        comm_of = dict(zip(holders, found.owners.values()))                 # one comm per holder
        by_holder = {}
        for holder, comm in comm_of.items():
            pid = holder if isinstance(holder, int) else None
            container = self._container_of(pid) if (self._container_of and pid) else None
            by_holder[holder] = ((comm, container.name, container.pod_namespace, container.pod)
                                 if container else (comm, "", "", ""))
        return dict(zip(found.owners, map(by_holder.__getitem__, holders)))

    def _process_families(self, scan: NetnsScan, labels: dict, reading: Optional[BpfReading], oldest,
                          found) -> list:
        opts = self._options
        keys = self._owner_keys(found)
        now = self._clock()
        cookies = [s.cookie for d in scan.dumps for s in d.snap.close_wait]
        first_seen = dict(self._close_wait_first_seen.update(cookies, now))
        # The program's entry times are exact, in ns of CLOCK_MONOTONIC: our clock.
        if reading is not None:
            for dump in scan.dumps:
                for sock in dump.snap.close_wait:
                    entered = reading.close_wait_entered(sock, dump.snap.netns_inode)
                    if entered is not None:
                        first_seen[sock.cookie] = min(first_seen[sock.cookie], entered / 1e9)

        unknown, kernel = _PLACEHOLDER_KEYS[UNKNOWN_OWNER], _PLACEHOLDER_KEYS[KERNEL_HELD]
        sockets, ages, cw_counts = {}, {}, Counter()
        for dump in scan.dumps:
            label = labels[dump.info.inode]
            ownership = attribution.attribute(dump.snap, keys, unknown, kernel)
            for owner, counts in ownership.sockets.items():
                sockets.setdefault((label,) + owner, Counter()).update(counts)
            oldest_of, counted = attribution.oldest_close_wait(dump.snap, ownership, first_seen, now, None, unknown)
            for owner, age in oldest_of.items():
                key = (label,) + owner
                ages[key] = max(age, ages.get(key, 0.0))
                cw_counts[key] += counted[owner]

        def other(key):
            return (key[0], OTHER, "", "", "")

        def placeholder(key):
            return key[1] in attribution.PLACEHOLDERS

        per_process = GaugeMetricFamily(
            "tcpwatch_process_sockets",
            "TCP sockets per network namespace, owning process name (comm), its container and "
            f"Kubernetes pod (namespace and name), and state. Top {opts.process_max_series} owners by socket count, the rest "
            "under process=\"other\" of their namespace; \"[kernel]\" holds sockets no process "
            "has (TIME_WAIT, orphans), \"[unknown]\" sockets whose holder could not be read. "
            "container, pod_namespace and pod are empty for a process in no container (or pod).",
            labels=["netns", "process", "container", "pod_namespace", "pod", "state"])
        for key, counts in sorted(attribution.cap_process_sockets(
                sockets, opts.process_max_series, other, placeholder).items()):
            for state in states.REPORTED:
                per_process.add_metric(list(key) + [states.name(state)], counts.get(state, 0))

        keep = attribution.top_names(cw_counts, opts.process_max_series, placeholder)
        capped = {}
        for key, age in ages.items():
            target = key if key in keep else other(key)
            capped[target] = max(age, capped.get(target, 0.0))
        for key, age in sorted(capped.items()):
            oldest.add_metric([key[0], "close_wait", *key[1:]], age)

        unreadable = GaugeMetricFamily(
            "tcpwatch_process_unreadable",
            "Processes whose open files could not be read at this scrape (missing "
            "CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH); their sockets count as \"[unknown]\".")
        unreadable.add_metric([], found.unreadable)
        if found.unreadable and not self._warned_unreadable:
            self._warned_unreadable = True   # once: the gauge tracks it from then on
            log.warning("cannot read the fds of other processes: their sockets count as "
                        "process=\"[unknown]\" (tcpwatch needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)",
                        extra={"processes": found.unreadable})
        return [per_process, unreadable]


class ServerCollector:
    """tcpwatch's own HTTP server and threads: the proof that hostile clients are bounded."""

    def __init__(self, stats, threads: Callable[[], int] = threading.active_count):
        self._stats = stats
        self._threads = threads

    def describe(self):
        return []

    def collect(self):
        with self._stats.lock:
            responses = dict(self._stats.responses)
            dropped = dict(self._stats.dropped)
            open_now = self._stats.open_connections
        served = CounterMetricFamily("tcpwatch_http_responses",
                                     "HTTP responses tcpwatch sent, by status code.", labels=["code"])
        for code in sorted(responses):
            served.add_metric([str(code)], responses[code])
        drops = CounterMetricFamily(
            "tcpwatch_http_dropped_connections",
            "Connections tcpwatch closed without a response: over the connection limit, evicted "
            "while idle to make room, past the 30 s deadline, timed out, failed TLS handshake, "
            "client gone, other error.",
            labels=["reason"])
        for reason in sorted(dropped):
            drops.add_metric([reason], dropped[reason])
        connections = GaugeMetricFamily("tcpwatch_http_open_connections",
                                        "HTTP connections being served now (at most 64).")
        connections.add_metric([], open_now)
        threads = GaugeMetricFamily("tcpwatch_threads", "Threads in the tcpwatch process now.")
        threads.add_metric([], self._threads())
        return [served, drops, connections, threads]
