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
from dataclasses import dataclass
from typing import Callable, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from . import __version__, attribution, histograms, states
from .model import KERNEL_HELD, BpfReading, DiagSnapshot

log = logging.getLogger(__name__)

COLLECTOR_INET_DIAG = "inet_diag"
COLLECTOR_PROCESS = "process"
COLLECTOR_EBPF = "ebpf"


@dataclass(frozen=True)
class CollectorOptions:
    process_enabled: bool = True
    process_max_series: int = 20
    listen_max_ports: int = 64


class TcpCollector:
    """Everything from one inet_diag dump plus the /proc owner walk."""

    def __init__(self, options: CollectorOptions, dump: Callable[[bool], DiagSnapshot],
                 scan_owners: Callable, clock: Callable[[], float] = time.monotonic,
                 bpf_read: Optional[Callable] = None,
                 ephemeral_ports: Optional[Callable[[], int]] = None):
        self._options = options
        self._ephemeral_ports = ephemeral_ports
        self._dump = dump
        self._scan_owners = scan_owners
        self._bpf_read = bpf_read   # None: eBPF is off or could not load
        self._clock = clock
        self._lock = threading.Lock()
        self._close_wait_first_seen = attribution.FirstSeen()
        self._warned_unreadable = False
        self._errors = {COLLECTOR_INET_DIAG: 0, COLLECTOR_PROCESS: 0, COLLECTOR_EBPF: 0}
        self._last_started = float("-inf")
        self._last_families: list = []

    def describe(self):
        return []  # keeps the registry from running a dump at registration

    def collect(self):
        arrived = self._clock()
        with self._lock:
            if self._last_started >= arrived:
                return list(self._last_families)
            self._last_started = self._clock()
            self._last_families = self._collect_now()
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
                families.extend(self._bpf_families(reading))
            except Exception as exc:
                reading = None
                self._errors[COLLECTOR_EBPF] += 1
                log.error("ebpf collector failed", extra={"error": str(exc)})
            durations.add_metric([COLLECTOR_EBPF], time.perf_counter() - started)
            success.add_metric([COLLECTOR_EBPF], 1.0 if reading is not None else 0.0)
        enabled = GaugeMetricFamily("tcpwatch_ebpf_enabled",
                                    "1 if the eBPF program is attached and read, 0 if not (see the log).")
        enabled.add_metric([], 1.0 if self._bpf_read is not None else 0.0)

        oldest = GaugeMetricFamily(
            "tcpwatch_state_oldest_age_seconds",
            "Age of the oldest socket now in the state. close_wait, per process (top "
            f"{opts.process_max_series} by CLOSE_WAIT count, the rest under \"other\"): exact "
            "when the eBPF program saw the socket enter CLOSE_WAIT, otherwise measured from the "
            "first scrape that saw it (a lower bound). time_wait, process \"[kernel]\": 60 s "
            "(TCP_TIMEWAIT_LEN) less the shortest timewait timer left.",
            labels=["state", "process"])
        started = time.perf_counter()
        snap = None
        try:
            snap = self._dump(opts.process_enabled)
            families.extend(self._socket_families(snap))
            if self._ephemeral_ports is not None:
                ports = GaugeMetricFamily(
                    "tcpwatch_ephemeral_ports",
                    "Ports in net.ipv4.ip_local_port_range, from which connect() picks local "
                    "ports: the most connections (TIME_WAIT included) that can exist at once "
                    "to one remote address and port.")
                ports.add_metric([], self._ephemeral_ports())
                families.append(ports)
            if snap.time_wait_min_remaining_ms >= 0:
                age = max(0.0, states.TIME_WAIT_SECONDS - snap.time_wait_min_remaining_ms / 1000.0)
                oldest.add_metric(["time_wait", KERNEL_HELD], age)
        except Exception as exc:  # a failing source must not fail the scrape
            self._errors[COLLECTOR_INET_DIAG] += 1
            log.error("inet_diag collector failed", extra={"error": str(exc)})
        durations.add_metric([COLLECTOR_INET_DIAG], time.perf_counter() - started)
        success.add_metric([COLLECTOR_INET_DIAG], 1.0 if snap is not None else 0.0)

        if opts.process_enabled:
            started = time.perf_counter()
            ok = False
            if snap is not None:
                try:
                    families.extend(self._process_families(snap, reading, oldest))
                    ok = True
                except Exception as exc:
                    self._errors[COLLECTOR_PROCESS] += 1
                    log.error("process collector failed", extra={"error": str(exc)})
            durations.add_metric([COLLECTOR_PROCESS], time.perf_counter() - started)
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

    @staticmethod
    def _bpf_families(reading: BpfReading) -> list:
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
        total = reading.total()
        transitions = CounterMetricFamily(
            "tcpwatch_state_transitions_total",
            "TCP state changes of full sockets seen by the eBPF program (sock:inet_sock_set_state), "
            "since tcpwatch started. Timewait sockets are not full sockets: entering TIME_WAIT "
            "shows as fin_wait2 -> close (or closing -> close).",
            labels=["from", "to"])
        pairs = set(states.KNOWN_TRANSITIONS) | set(total.transitions)
        for old, new in sorted(pairs):
            transitions.add_metric([states.name(old), states.name(new)], total.transitions.get((old, new), 0))
        duration = HistogramMetricFamily(
            "tcpwatch_state_duration_seconds",
            "Time sockets spent in a state, observed when they leave it (a socket still in the "
            "state is not counted: see tcpwatch_state_oldest_age_seconds). time_wait: life of "
            "timewait sockets, from creation to expiry or early reuse.",
            labels=["state"])
        for state in states.TIMED:
            slots = total.duration_slots.get(state, [])
            buckets = [(floatToGoString(le), count) for le, count in histograms.cumulative_buckets(slots)]
            duration.add_metric([states.name(state)], buckets, total.duration_sum_ns.get(state, 0) / 1e9)
        untracked = CounterMetricFamily(
            "tcpwatch_ebpf_untracked_total",
            "Events the eBPF program could not time. unknown_socket: a socket left a state it "
            "entered before tcpwatch attached, or whose entry the full LRU map evicted "
            "(--collector.bpf.max-sockets). slot_taken: tp_btf, a new socket whose row in the "
            "socket table (indexed by socket cookie) a live socket held; it is not timed. netns_full: events of a network namespace that found every namespace slot taken "
            "(--collector.bpf.max-netns); they are counted, but not under their namespace.",
            labels=["reason"])
        for reason in ("unknown_socket", "slot_taken", "netns_full"):
            untracked.add_metric([reason], reading.counters.get(reason, 0))
        retransmits = CounterMetricFamily(
            "tcpwatch_retransmits_total", "TCP segments retransmitted (tcp:tcp_retransmit_skb).")
        retransmits.add_metric([], total.counters.get("retransmits", 0))
        resets = CounterMetricFamily(
            "tcpwatch_resets_total",
            "TCP resets sent (tcp:tcp_send_reset) and received (tcp:tcp_receive_reset).",
            labels=["direction"])
        resets.add_metric(["sent"], total.counters.get("resets_sent", 0))
        resets.add_metric(["received"], total.counters.get("resets_received", 0))
        return [transitions, duration, untracked, retransmits, resets, attach, tracked]

    def _socket_families(self, snap: DiagSnapshot) -> list:
        sockets = GaugeMetricFamily(
            "tcpwatch_sockets",
            "TCP sockets in this network namespace per address family and state, from one "
            "inet_diag dump. time_wait counts timewait sockets by the substate the kernel "
            "reports (a timewait socket of a FIN_WAIT2 orphan counts as fin_wait2).",
            labels=["family", "state"])
        for family in states.FAMILIES:
            for state in states.REPORTED:
                sockets.add_metric([family, states.name(state)], snap.counts.get((family, state), 0))
        queues = attribution.listen_queues(snap.listeners, self._options.listen_max_ports)
        length = GaugeMetricFamily(
            "tcpwatch_listen_queue_length",
            "Connections waiting in the accept queue of listening sockets on this local port, "
            "summed over the port's listeners (a count of connections, not bytes).",
            labels=["port"])
        limit = GaugeMetricFamily(
            "tcpwatch_listen_queue_limit",
            "Accept-queue capacity (listen() backlog, capped by net.core.somaxconn) of "
            "listening sockets on this local port, summed over the port's listeners.",
            labels=["port"])
        for port, (queued, capacity) in queues.items():
            length.add_metric([port], queued)
            limit.add_metric([port], capacity)
        return [sockets, length, limit]

    def _process_families(self, snap: DiagSnapshot, reading: Optional[BpfReading], oldest) -> list:
        opts = self._options
        scan = self._scan_owners(snap.inode_states.keys())
        ownership = attribution.attribute(snap, scan.owners)
        now = self._clock()
        first_seen = dict(self._close_wait_first_seen.update((s.cookie for s in snap.close_wait), now))
        # The program's entry times are exact, in ns of CLOCK_MONOTONIC: our clock.
        for sock in snap.close_wait if reading is not None else ():
            entered = reading.close_wait_entered(sock, snap.netns_inode)
            if entered is not None:
                first_seen[sock.cookie] = min(first_seen[sock.cookie], entered / 1e9)

        per_process = GaugeMetricFamily(
            "tcpwatch_process_sockets",
            "TCP sockets per owning process name (comm) and state. Top "
            f"{opts.process_max_series} names by socket count, the rest under process=\"other\"; "
            "\"[kernel]\" holds sockets no process has (TIME_WAIT, orphans), \"[unknown]\" "
            "sockets whose holder could not be read.",
            labels=["process", "state"])
        for process, counts in sorted(attribution.cap_process_sockets(
                ownership.sockets, opts.process_max_series).items()):
            for state in states.REPORTED:
                per_process.add_metric([process, states.name(state)], counts.get(state, 0))

        for process, age in sorted(attribution.oldest_close_wait(
                snap, ownership, first_seen, now, opts.process_max_series).items()):
            oldest.add_metric(["close_wait", process], age)

        unreadable = GaugeMetricFamily(
            "tcpwatch_process_unreadable",
            "Processes whose open files could not be read at this scrape (missing "
            "CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH); their sockets count as \"[unknown]\".")
        unreadable.add_metric([], scan.unreadable)
        if scan.unreadable and not self._warned_unreadable:
            self._warned_unreadable = True   # once: the gauge tracks it from then on
            log.warning("cannot read the fds of other processes: their sockets count as "
                        "process=\"[unknown]\" (tcpwatch needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)",
                        extra={"processes": scan.unreadable})
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
