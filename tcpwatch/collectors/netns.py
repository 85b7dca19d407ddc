"""What names each netns label and what the kernel counts per namespace: tcpwatch_netns_info,
discovery and read failures, and the /proc/net/netstat and /proc/net/snmp counters read
beside each dump (namespace_dumps.py)."""

from __future__ import annotations

from collections import Counter

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .. import namespaces
from ..snapshot import NETNS
from . import Collector, register

# Kernel counters exported per namespace: (group, field in /proc/net/netstat or snmp); each
# is in model.KERNEL_FIELDS, the fields the dumps parse and keep.
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


@register
class NetnsCollector(Collector):
    name = "netns"
    owns = (NETNS,)
    needs = (NETNS,)

    def __init__(self, settings, clock=None):
        super().__init__(settings, clock)
        self._read_failures = Counter({"vanished": 0, "error": 0, "runtime_state": 0})   # since start

    def collect(self, snapshot) -> list:
        dumps = snapshot.dumps
        if dumps is not None:
            self._read_failures.update(dumps.failures)
        failures = CounterMetricFamily(
            "tcpwatch_netns_read_failures",
            "Namespaces that could not be read during a scrape since tcpwatch started. vanished: "
            "it ended between discovery and the dump; error: the log says why; runtime_state: a "
            "container runtime's state file vanished or did not parse while naming (the "
            "container is named by its id's first 12 digits for that scrape).",
            labels=["reason"])
        for reason, count in sorted(self._read_failures.items()):
            failures.add_metric([reason], count)
        info, discovered, unreadable = _names(snapshot)
        return [info, discovered, unreadable, failures] + _kernel_counters(snapshot.groups)


def _names(snapshot) -> tuple:
    """What each label names, and how many namespaces were found and not read."""
    info = GaugeMetricFamily(
        "tcpwatch_netns_info",
        "Always 1: what each netns label names. kind: host, pod, container, named (ip netns) "
        "or unnamed. pod_namespace and pod: the Kubernetes pod whose sandbox owns the "
        "namespace (join on netns to put them on any series). inode: as /proc/PID/ns/net shows.",
        labels=["netns", "inode", "kind", "runtime", "pod_namespace", "pod", "container_id"])
    infos, label_of_inode = snapshot.infos, snapshot.groups.label_of_inode
    for inode, netns_info in sorted(infos.items()):
        label = label_of_inode.get(inode)
        if label is None or label == namespaces.OTHER:
            continue
        info.add_metric([label, str(inode), netns_info.kind, netns_info.runtime,
                         netns_info.pod_namespace, netns_info.pod, netns_info.container_id], 1.0)
    discovered = GaugeMetricFamily(
        "tcpwatch_netns_discovered",
        "Network namespaces found at this scrape (processes' and /run/netns bind mounts).")
    discovered.add_metric([], len(infos))
    unreadable = GaugeMetricFamily(
        "tcpwatch_netns_unreadable",
        "Network namespaces found but not read at this scrape (no CAP_SYS_ADMIN to enter "
        "them, or gone meanwhile): their sockets are missing from every metric.")
    unreadable.add_metric([], snapshot.dumps.unreadable if snapshot.dumps is not None else 0)
    return info, discovered, unreadable


def _kernel_counters(groups) -> list:
    """The kernel's own TCP counters of every dumped namespace."""
    result = []
    with_counters = [(label, totals) for label, totals in sorted(groups.by_label.items()) if totals.kernel]
    for name, group_name, field_name, text in _KERNEL_COUNTERS:
        family = CounterMetricFamily(name, text + " Per network namespace.", labels=["netns"])
        for label, totals in with_counters:
            if group_name in totals.kernel:
                family.add_metric([label], totals.kernel[group_name].get(field_name, 0))
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
    for label, totals in with_counters:
        ext, tcp = totals.kernel.get("TcpExt"), totals.kernel.get("Tcp")
        if ext is not None:
            for reason, field_name in _ABORTS:
                aborts.add_metric([label, reason], ext.get(field_name, 0))
        if tcp is not None:
            opened.add_metric([label, "active"], tcp.get("ActiveOpens", 0))
            opened.add_metric([label, "passive"], tcp.get("PassiveOpens", 0))
    return result + [aborts, opened]
