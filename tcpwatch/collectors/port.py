"""tcpwatch_port_sockets: connections per service port, counted inside the inet_diag
decoder (server side by local port listened on, client side by remote port)."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily

from .. import ports, states
from ..snapshot import INET_DIAG
from . import Collector, register


@register
class PortCollector(Collector):
    name = "port"
    needs = (INET_DIAG,)

    @classmethod
    def enabled(cls, settings, ebpf_loaded: bool) -> bool:
        return settings.port_enabled

    def collect(self, snapshot) -> list:
        opts = self.settings
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
        for label, totals in snapshot.groups.dumped():
            for side, most in (("server", opts.port_server_max), ("client", opts.port_client_max)):
                for port, counts in ports.top_ports(totals.ports[side], most, opts.port_include).items():
                    for state in ports.exported_states(counts):
                        family.add_metric([label, port, side, states.name(state)], counts.get(state, 0))
        return [family]
