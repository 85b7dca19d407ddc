"""Network-namespace sysctls from /proc/sys: like inet_diag, they are per network namespace."""

from __future__ import annotations

LOCAL_PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


def ephemeral_ports(path: str = LOCAL_PORT_RANGE) -> int:
    """Ports in net.ipv4.ip_local_port_range (IPv6 uses the same range).

    connect() picks its local port from this range, so it bounds the connections, TIME_WAIT
    included, that can exist at once to one remote address and port.
    """
    with open(path) as f:
        low, high = (int(field) for field in f.read().split())
    return max(0, high - low + 1)
