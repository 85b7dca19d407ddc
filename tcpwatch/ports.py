"""Pure: sockets per service port, capped (``tcpwatch_port_sockets``).

Per namespace, the dump counts server-side sockets by the local port they listen on and
client-side ones by the remote port they talk to (``inet_diag.Decoder``). A port label is
unbounded, so each side keeps its top N ports by socket count plus the allow-listed ones;
the rest are summed under ``port="other"``.
"""

from __future__ import annotations

from collections import Counter

from . import states
from .model import OTHER

SIDES = ("server", "client")

# Exported for every exported port even at 0, so that rules comparing them have a series
# to see rise from 0; other states only when some socket is in them.
BASELINE_STATES = (states.ESTABLISHED, states.CLOSE_WAIT, states.TIME_WAIT)


def top_ports(counts: Counter, max_ports: int, always=frozenset()) -> dict:
    """{port label: Counter(state -> sockets)} from {(port, state): sockets}: the
    ``max_ports`` ports with the most sockets (ties: lower port first), every port of
    ``always`` (even when empty), and "other" for the sum of the rest when there is one."""
    per_port = {}
    for (port, state), count in counts.items():
        per_port.setdefault(port, Counter())[state] += count
    ranked = sorted(per_port, key=lambda port: (-sum(per_port[port].values()), port))
    kept = set(ranked[:max_ports]) | set(always)
    result = {str(port): per_port.get(port, Counter()) for port in sorted(kept)}
    rest = Counter()
    for port in ranked:
        if port not in kept:
            rest.update(per_port[port])
    if rest:
        result[OTHER] = rest
    return result


def exported_states(counts: Counter) -> list:
    """The states exported for one port, in kernel order."""
    return [s for s in states.REPORTED if s in BASELINE_STATES or counts.get(s)]
