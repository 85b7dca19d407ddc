"""Hand-built inputs shared by the tests that need no kernel: a dump, an eBPF reading, an
owner walk, a fake clock, and an Exporter over them (one namespace, "host")."""

from __future__ import annotations

import socket
from collections import Counter

from prometheus_client import CollectorRegistry

from tcpwatch import histograms, states
from tcpwatch.collectors import CollectorSettings
from tcpwatch.exporter import Exporter
from tcpwatch.model import (BpfReading, CloseWaitSocket, DiagSnapshot, Endpoint, Listener, NamespaceDumps,
                            NetnsActivity, NetnsDump, NetnsInfo, SocketOwners)
from tcpwatch.namespace_dumps import Discovered
from tcpwatch.snapshot import Snapshot, Sources

LOCAL = socket.inet_aton("127.0.0.1")
HOST_INODE = 4026531840
HOST_COOKIE = 3


def hand_built_snapshot():
    snap = DiagSnapshot(netns_inode=HOST_INODE)
    for family in states.FAMILIES:
        for state in states.REPORTED:
            snap.counts[(family, state)] = 0
    snap.counts.update({("ipv4", states.LISTEN): 1, ("ipv4", states.ESTABLISHED): 2,
                        ("ipv4", states.CLOSE_WAIT): 2, ("ipv6", states.TIME_WAIT): 4})
    snap.listeners = [Listener(Endpoint("ipv4", bytes(4), 8080), 1, 1, 128)]
    snap.inode_states = {1: states.LISTEN, 2: states.ESTABLISHED, 3: states.ESTABLISHED,
                         4: states.CLOSE_WAIT}
    snap.unaccepted = Counter({(Endpoint("ipv4", LOCAL, 8080), states.CLOSE_WAIT): 1})
    snap.close_wait = [CloseWaitSocket(40, 4, Endpoint("ipv4", LOCAL, 8080), LOCAL, 50000),
                       CloseWaitSocket(41, 0, Endpoint("ipv4", LOCAL, 8080), LOCAL, 50001)]
    snap.time_wait_min_remaining_ms = 45000
    snap.server_ports = Counter({(8080, states.CLOSE_WAIT): 2})
    snap.client_ports = Counter({(5432, states.ESTABLISHED): 2, (443, states.TIME_WAIT): 4})
    return snap


def hand_built_reading():
    """Four handshakes of about 0.6 ms, one failed; socket 40 entered CLOSE_WAIT at t=900 s."""
    slots = [0] * histograms.SLOTS
    slots[20 - histograms.FIRST_SLOT] = 4
    return BpfReading(
        attach_mode="tp_btf", attach_reason="btf", headers="bundled",
        netns={HOST_COOKIE: NetnsActivity(
            transitions=Counter({(states.CLOSE, states.SYN_SENT): 5, (states.SYN_SENT, states.ESTABLISHED): 4,
                                 (states.SYN_SENT, states.CLOSE): 1, (states.ESTABLISHED, states.SYN_SENT): 0}),
            duration_slots={states.SYN_SENT: slots},
            duration_sum_ns=Counter({states.SYN_SENT: 4 * 600_000}),
            counters=Counter({"retransmits": 7, "resets_sent": 1})),
            0: NetnsActivity(counters=Counter({"resets_received": 3}))},   # unknown namespace: "other"
        netns_inodes={HOST_COOKIE: HOST_INODE, 0: 0},
        counters={"unknown_socket": 2, "netns_tracked": 1},
        close_wait_entered_ns={40: 900 * 10**9})


def owners(inodes):
    return SocketOwners(owners={1: "web", 2: "web", 4: "web", 3: "client"})


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class OneNamespace:
    """A namespace source over one dump function, named "host": ``dump()`` gives a
    DiagSnapshot (or raises, like a failing netlink dump)."""

    def __init__(self, dump, ephemeral_ports: int = 28232, kernel_counters=None):
        self._dump = dump
        self._ephemeral_ports = ephemeral_ports
        self._kernel_counters = kernel_counters or {}
        self.info = NetnsInfo(HOST_INODE, "host", "host")

    def discover(self) -> Discovered:
        return Discovered({self.info.inode: self.info}, {}, self.info.inode)

    def dump_all(self, discovered: Discovered) -> NamespaceDumps:
        dump = NetnsDump(self.info, self._dump(), self._kernel_counters, self._ephemeral_ports, HOST_COOKIE)
        return NamespaceDumps(dumps=[dump], infos=dict(discovered.infos))

    def container_of(self, pid):
        return None


def exporter_for(dump=hand_built_snapshot, owner_walk=owners, clock=None, settings=CollectorSettings(),
                 bpf_read=None, collectors=None):
    """(registry, exporter) over OneNamespace(dump); ``collectors`` replaces the enabled ones."""
    clock = clock or Clock()
    sources = Sources(OneNamespace(dump), owner_walk if settings.process_enabled else None, bpf_read=bpf_read)
    exporter = Exporter(settings, sources, clock, collectors)
    registry = CollectorRegistry()
    registry.register(exporter)
    return registry, exporter


KERNEL_COUNTERS = {"TcpExt": {"ListenOverflows": 3, "ListenDrops": 4, "TCPTimeWaitOverflow": 0, "TCPAbortOnData": 2},
                   "Tcp": {"ActiveOpens": 5, "PassiveOpens": 6}}


def scrape_snapshot(reading=hand_built_reading, owner_walk=owners, netns_max_series=128):
    """A Snapshot as snapshot.take makes it, of OneNamespace(hand_built_snapshot)."""
    source = OneNamespace(hand_built_snapshot, kernel_counters=KERNEL_COUNTERS)
    snap = Snapshot(netns_max_series, source.container_of)
    snap.reading = reading() if reading else None
    snap.discovered = source.discover()
    snap.dumps = source.dump_all(snap.discovered)
    snap.owners = owner_walk(None) if owner_walk else None
    return snap
