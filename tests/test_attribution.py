"""Owner attribution, caps and ages: pure functions on hand-built snapshots."""

import socket
from collections import Counter

from tcpwatch import attribution, states
from tcpwatch.model import KERNEL_HELD, OTHER, UNKNOWN_OWNER, CloseWaitSocket, DiagSnapshot, Endpoint, Listener

LOCAL = socket.inet_aton("127.0.0.1")
ANY = bytes(4)


def ep(port, address=LOCAL, family="ipv4"):
    return Endpoint(family, address, port)


def test_sockets_go_to_fd_holders_listeners_or_the_kernel():
    snap = DiagSnapshot()
    snap.listeners = [Listener(ep(80, ANY), 1, 2, 128), Listener(ep(81), 2, 0, 128)]
    snap.inode_states = {1: states.LISTEN, 2: states.LISTEN, 3: states.ESTABLISHED, 4: states.CLOSE_WAIT}
    snap.unaccepted = Counter({(ep(80), states.ESTABLISHED): 2,      # wildcard listener matches
                               (ep(81), states.CLOSE_WAIT): 1,        # exact listener
                               (ep(82), states.SYN_RECV): 1})         # no listener: kernel
    snap.counts = Counter({("ipv4", states.LISTEN): 2, ("ipv4", states.ESTABLISHED): 3,
                           ("ipv4", states.CLOSE_WAIT): 2, ("ipv4", states.SYN_RECV): 1,
                           ("ipv6", states.TIME_WAIT): 5})   # TIME_WAIT: no fd, no listener
    snap.close_wait = [CloseWaitSocket(7, 4, ep(5000)), CloseWaitSocket(8, 0, ep(81))]
    owners = {1: "nginx", 2: "app", 3: "app"}                         # inode 4: nobody readable
    result = attribution.attribute(snap, owners)
    assert result.sockets["nginx"] == Counter({states.LISTEN: 1, states.ESTABLISHED: 2})
    assert result.sockets["app"] == Counter({states.LISTEN: 1, states.ESTABLISHED: 1, states.CLOSE_WAIT: 1})
    assert result.sockets[UNKNOWN_OWNER] == Counter({states.CLOSE_WAIT: 1})
    assert result.sockets[KERNEL_HELD] == Counter({states.TIME_WAIT: 5, states.SYN_RECV: 1})
    assert result.close_wait_owner == {7: UNKNOWN_OWNER, 8: "app"}


def test_exact_address_beats_wildcard_and_family_must_match():
    index = attribution.ListenerIndex([Listener(ep(80, ANY), 1, 0, 1), Listener(ep(80), 2, 0, 1)])
    assert index.find(ep(80)).inode == 2
    assert index.find(ep(80, socket.inet_aton("127.0.0.2"))).inode == 1
    assert index.find(ep(80, bytes(16), family="ipv6")) is None


def test_cap_keeps_heaviest_names_and_placeholders():
    sockets = {"a": Counter({1: 5}), "b": Counter({1: 3}), "c": Counter({1: 3}), "d": Counter({8: 1}),
               KERNEL_HELD: Counter({6: 100})}
    capped = attribution.cap_process_sockets(sockets, 2)
    assert capped == {"a": Counter({1: 5}), "b": Counter({1: 3}), KERNEL_HELD: Counter({6: 100}),
                      OTHER: Counter({1: 3, 8: 1})}
    assert set(attribution.cap_process_sockets(sockets, 0)) == {KERNEL_HELD, OTHER}


def test_first_seen_remembers_present_keys_and_forgets_gone_ones():
    seen = attribution.FirstSeen()
    assert seen.update([1, 2], now=10.0) == {1: 10.0, 2: 10.0}
    assert seen.update([2, 3], now=15.0) == {2: 10.0, 3: 15.0}
    assert seen.update([1], now=20.0) == {1: 20.0}


def test_oldest_close_wait_ranks_by_close_wait_count():
    snap = DiagSnapshot()
    snap.close_wait = [CloseWaitSocket(c, c, ep(1)) for c in range(1, 6)]
    ownership = attribution.Ownership()
    ownership.close_wait_owner = {1: "leaky", 2: "leaky", 3: "leaky", 4: "busy", 5: "quiet"}
    first = {1: 100.0, 2: 40.0, 3: 90.0, 4: 10.0, 5: 50.0}
    assert attribution.oldest_close_wait(snap, ownership, first, now=100.0, limit=1) == \
        {"leaky": 60.0, OTHER: 90.0}


def test_listen_queues_sum_per_port_and_name_the_fullest():
    listeners = [Listener(ep(port), 0, length, 10) for port, length in
                 [(443, 0), (443, 1), (80, 0), (22, 9), (8080, 0)]]
    assert attribution.listen_queues(listeners, 2) == {"22": (9, 10), "443": (1, 20), OTHER: (0, 20)}
    assert list(attribution.listen_queues(listeners, 10)) == ["22", "443", "80", "8080"]
