"""tcpwatch_state_transitions_total, tcpwatch_state_duration_seconds and the rest of what
the eBPF program counts in the kernel (sources/bpf.py), per network namespace."""

from __future__ import annotations

from itertools import repeat

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from .. import histograms, namespaces, states
from ..exposition import RenderedLabels
from ..snapshot import EBPF
from . import Collector, register


@register
class EbpfCollector(Collector):
    name = "ebpf"
    owns = (EBPF,)
    needs = (EBPF,)

    @classmethod
    def enabled(cls, settings, ebpf_loaded: bool) -> bool:
        return ebpf_loaded

    def __init__(self, settings, clock=None):
        super().__init__(settings, clock)
        self._rows = HistogramRows()

    def collect(self, snapshot) -> list:
        reading = snapshot.reading
        transitions, duration, retransmits, resets = _per_namespace(snapshot.groups, self._rows)
        attach, tracked, untracked = _program_wide(reading)
        return [transitions, duration, untracked, retransmits, resets, attach, tracked]


def _program_wide(reading) -> tuple:
    """How the program is attached and what it could not count."""
    attach = GaugeMetricFamily(
        "tcpwatch_ebpf_attach_info",
        "Always 1: how the eBPF program is attached. mode: tp_btf (BTF-typed raw tracepoints) "
        "or tracepoint (the classic ones, the fallback). reason: requested "
        "(--collector.bpf.attach), btf (auto, the kernel has BTF), no_btf (auto, no usable "
        "BTF), tp_btf_refused (auto, the kernel refused tp_btf; the log says why). headers: "
        "bundled (tcpwatch's own include tree, where the kernel has BTF) or kernel (the "
        "kernel's headers, without BTF).",
        labels=["mode", "reason", "headers"])
    attach.add_metric([reading.attach_mode, reading.attach_reason, reading.headers], 1.0)
    tracked = GaugeMetricFamily(
        "tcpwatch_ebpf_netns_tracked",
        "Network namespaces the eBPF program keeps counters for "
        "(at most --collector.bpf.max-netns - 1; the rest count under netns_full).")
    tracked.add_metric([], reading.counters.get("netns_tracked", 0))
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
    return attach, tracked, untracked


LE_TEXT = [floatToGoString(le) for le in histograms.BOUNDS]


class HistogramRows:
    """The label sets of each (netns, state) histogram's 39 samples, kept from one scrape to
    the next: made as RenderedLabels once, not as 39 fresh dicts that are escaped and sorted
    again at every scrape (at 100 busy namespaces, most of this collector's time). Only the
    label sets used at the last scrape are kept."""

    def __init__(self):
        self._kept, self._used = {}, {}

    def add(self, family, labels: tuple, counts: list, total: float) -> None:
        """``counts``: cumulative, one per bucket of histograms.BOUNDS."""
        rows = self._used.get(labels) or self._kept.get(labels)
        if rows is None:
            plain = dict(zip(("netns", "state"), labels))
            rows = ([RenderedLabels({**plain, "le": le}) for le in LE_TEXT], RenderedLabels(plain))
        self._used[labels] = rows
        bucket_rows, plain = rows
        name = family.name
        none = repeat(None)   # timestamp, exemplar, native histogram; Sample built in C, not by its __new__
        family.samples.extend(map(tuple.__new__, repeat(Sample),
                                  zip(repeat(name + "_bucket"), bucket_rows, counts, none, none, none)))
        family.samples.append(Sample(name + "_count", plain, counts[-1], None, None))
        family.samples.append(Sample(name + "_sum", plain, total, None, None))

    def end_scrape(self) -> None:
        self._kept, self._used = self._used, {}


def _per_namespace(groups, rows: HistogramRows) -> tuple:
    """Transitions, time in state, retransmits and resets of every netns label that had
    activity (host always)."""
    transitions = CounterMetricFamily(
        "tcpwatch_state_transitions_total",
        "TCP state changes of full sockets seen by the eBPF program (sock:inet_sock_set_state) "
        "per network namespace, since tcpwatch started. A namespace no longer found has its "
        "counts moved to netns=\"gone\"; those past --collector.netns.max-series count under "
        "\"other\": no series goes down. Timewait sockets are not full sockets: entering "
        "TIME_WAIT shows as fin_wait2 -> close (or closing -> close).",
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
    for label, group in sorted(groups.by_label.items()):
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
            rows.add(duration, (label, states.name(state)), histograms.cumulative_counts(slots or []),
                     total.duration_sum_ns.get(state, 0) / 1e9)
        retransmits.add_metric([label], total.counters.get("retransmits", 0))
        resets.add_metric([label, "sent"], total.counters.get("resets_sent", 0))
        resets.add_metric([label, "received"], total.counters.get("resets_received", 0))
    rows.end_scrape()
    return transitions, duration, retransmits, resets
