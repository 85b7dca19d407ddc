"""Pure aggregation: who owns which sockets, top-N caps, first-seen ages, listen queues.

Nothing here does I/O; the collectors and ``snapshot`` feed it a ``DiagSnapshot`` and the
inode -> process map, and tests feed it hand-built ones.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import repeat
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .model import KERNEL_HELD, OTHER, UNKNOWN_OWNER, DiagSnapshot, Endpoint, Listener


class ListenerIndex:
    """Finds the listener an accept-queue socket belongs to, by family, port and address."""

    def __init__(self, listeners: Iterable[Listener]):
        self._by_port = defaultdict(list)
        for listener in listeners:
            ep = listener.endpoint
            self._by_port[(ep.family, ep.port)].append(listener)

    def find(self, endpoint: Endpoint):
        candidates = self._by_port.get((endpoint.family, endpoint.port), ())
        wildcard = None
        for listener in candidates:
            if listener.endpoint.address == endpoint.address:
                return listener
            if listener.endpoint.is_wildcard and wildcard is None:
                wildcard = listener
        return wildcard


@dataclass
class Ownership:
    sockets: dict = field(default_factory=lambda: defaultdict(Counter))  # process -> state -> n
    close_wait_owner: dict = field(default_factory=dict)                 # cookie -> process


def attribute(snap: DiagSnapshot, owners: Mapping, unknown=UNKNOWN_OWNER, kernel=KERNEL_HELD) -> Ownership:
    """Give every socket of the dump to an owner (a process name, or any key the caller
    made of it) or a placeholder: ``unknown`` or ``kernel``.

    Sockets with an fd go to the process holding it. Sockets without one (inode 0) that can
    still be in an accept queue go to the listener's process; the rest are the kernel's,
    counted as what remains of each state's total (no per-socket work for TIME_WAIT).
    """
    result = Ownership()
    get = owners.get
    # (owner, state) of every socket with an fd, counted in C: no Python per socket.
    pairs = Counter(zip(map(get, snap.inode_states.keys(), repeat(unknown)), snap.inode_states.values()))
    index = ListenerIndex(snap.listeners)

    def listener_owner(endpoint):
        listener = index.find(endpoint)
        if listener is None:
            return kernel
        return get(listener.inode, unknown)

    with_fd = Counter(snap.inode_states.values())
    for (endpoint, state), count in snap.unaccepted.items():
        pairs[(listener_owner(endpoint), state)] += count
        with_fd[state] += count
    for state, total in snap.per_state().items():
        if total > with_fd[state]:
            pairs[(kernel, state)] += total - with_fd[state]
    for (process, state), count in pairs.items():
        result.sockets[process][state] += count
    for sock in snap.close_wait:
        if sock.inode:
            result.close_wait_owner[sock.cookie] = get(sock.inode, unknown)
        else:
            result.close_wait_owner[sock.cookie] = listener_owner(sock.endpoint)
    return result


PLACEHOLDERS = (KERNEL_HELD, UNKNOWN_OWNER)


def is_placeholder(name) -> bool:
    return name in PLACEHOLDERS


def top_names(weights: Mapping, limit: int, placeholder=is_placeholder) -> set:
    """The ``limit`` heaviest names, ties broken by name so the choice is stable.

    Placeholders are always kept and do not use up the limit: there are only two of them
    (per namespace, when names are keyed by namespace).
    """
    placeholders = {n for n in weights if placeholder(n)}
    ranked = sorted((n for n in weights if n not in placeholders), key=lambda n: (-weights[n], n))
    return placeholders | set(ranked[:limit])


def cap_process_sockets(sockets: Mapping, limit: int, other=lambda name: OTHER,
                        placeholder=is_placeholder) -> dict:
    """Per-process state counts with everything past the top ``limit`` summed under
    ``other(name)`` (``other`` for plain names)."""
    keep = top_names({p: sum(c.values()) for p, c in sockets.items()}, limit, placeholder)
    capped = {}
    for process, counts in sockets.items():
        target = process if process in keep else other(process)
        capped.setdefault(target, Counter()).update(counts)
    return capped


class FirstSeen:
    """When each key was first seen; keys missing from the latest update are forgotten.

    Memory is bounded by the number of keys present now (the sockets in CLOSE_WAIT).
    """

    def __init__(self):
        self._first = {}

    def update(self, keys: Iterable, now: float) -> dict:
        previous = self._first
        self._first = {key: previous.get(key, now) for key in keys}
        return self._first


def oldest_close_wait(snap: DiagSnapshot, ownership: Ownership, first_seen: Mapping[int, float],
                      now: float, limit: int, unknown=UNKNOWN_OWNER) -> dict:
    """Age in seconds of the oldest CLOSE_WAIT socket per process, capped like the counts.

    Processes are ranked by how many CLOSE_WAIT sockets they hold, so a leaking process is
    named even on a host where busier processes hold more sockets in total.
    """
    oldest, counts = {}, Counter()
    for sock in snap.close_wait:
        process = ownership.close_wait_owner.get(sock.cookie, unknown)
        age = now - first_seen.get(sock.cookie, now)
        counts[process] += 1
        if age > oldest.get(process, -1.0):
            oldest[process] = age
    if limit is None:   # the caller caps
        return oldest, counts
    keep = top_names(counts, limit)
    capped = {}
    for process, age in oldest.items():
        target = process if process in keep else OTHER
        capped[target] = max(age, capped.get(target, 0.0))
    return capped


def listen_queues(listeners: Iterable[Listener], limit: int) -> dict:
    """Accept-queue (length, limit) per local port, summed over the port's listeners.

    A port may have several listeners (IPv4 and IPv6, SO_REUSEPORT groups): their queues add
    up. Past ``limit`` ports the rest are summed under ``other``; ports are ranked by queue
    length first, so a filling queue is always named, then by port number for stable series.
    """
    per_port = {}
    for listener in listeners:
        length, cap = per_port.get(listener.endpoint.port, (0, 0))
        per_port[listener.endpoint.port] = (length + listener.queue_length, cap + listener.queue_limit)
    ranked = sorted(per_port, key=lambda port: (-per_port[port][0], port))
    result = {str(port): per_port[port] for port in ranked[:limit]}
    rest = ranked[limit:]
    if rest:
        result[OTHER] = (sum(per_port[p][0] for p in rest), sum(per_port[p][1] for p in rest))
    return result
