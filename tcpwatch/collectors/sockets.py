"""tcpwatch_sockets, the listen queues and the ephemeral port range of every namespace,
from one walk of its sockets: the eBPF socket iterator (sources/ebpf_iterators.py) where it
loads, else an inet_diag dump (sources/inet_diag.py). Both give the same DiagSnapshot."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily

from .. import attribution, states
from ..snapshot import INET_DIAG
from . import Collector, register


@register
class SocketsCollector(Collector):
    """Socket counts per state: the collector named inet_diag, after its first source (the
    name stays, so that dashboards and --collector flags keep working)."""

    name = "inet_diag"
    owns = (INET_DIAG,)
    needs = (INET_DIAG,)

    def collect(self, snapshot) -> list:
        sockets = GaugeMetricFamily(
            "tcpwatch_sockets",
            "TCP sockets per network namespace, address family and state, from one walk of each "
            "namespace's sockets (tcpwatch_sockets_source_info says how). time_wait counts timewait sockets by the substate the "
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
        for label, totals in snapshot.groups.dumped():
            for family in states.FAMILIES:
                for state in states.REPORTED:
                    sockets.add_metric([label, family, states.name(state)], totals.counts.get((family, state), 0))
            for port, (queued, capacity) in attribution.listen_queues(
                    totals.listeners, self.settings.listen_max_ports).items():
                length.add_metric([label, port], queued)
                limit.add_metric([label, port], capacity)
            if totals.ephemeral_ports >= 0:
                ephemeral.add_metric([label], totals.ephemeral_ports)
        source = GaugeMetricFamily(
            "tcpwatch_sockets_source_info",
            "How this scrape counted sockets: source ebpf_iterator (a BPF iterator over the "
            "kernel's TCP tables) or inet_diag; reason says why inet_diag (ebpf_off, flag, "
            "unavailable, iterator_failed).", labels=["source", "reason"])
        source.add_metric([snapshot.dumps.source, snapshot.dumps.reason], 1)
        return [sockets, length, limit, ephemeral, source]
