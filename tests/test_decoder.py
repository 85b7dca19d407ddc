"""The inet_diag decoder on hand-built netlink messages: no kernel needed."""

import socket
import struct

import pytest

from tcpwatch import states
from tcpwatch.model import DiagSnapshot, DumpWants, Endpoint
from tcpwatch.sources.inet_diag_decoder import Decoder, DumpError

SOCK_DIAG_BY_FAMILY = 20
NLMSG_DONE, NLMSG_ERROR = 3, 2


def diag_msg(state, inode=0, sport=0, src="127.0.0.1", family=socket.AF_INET, rqueue=0,
             wqueue=0, cookie=0, attrs=b"", expires=0, dport=0):
    addr = socket.inet_pton(family, src).ljust(16, b"\0")
    body = struct.pack("=BBBB", family, state, 0, 0) + struct.pack(">HH", sport, dport)
    body += addr + b"\0" * 16 + struct.pack("=IQ", 0, cookie)
    body += struct.pack("=IIIII", expires, rqueue, wqueue, 0, inode) + attrs
    return struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


def done():
    return struct.pack("=IHHIIi", 20, NLMSG_DONE, 2, 1, 0, 0)


def test_counts_listeners_close_wait_and_inode_zero_sockets():
    snap = DiagSnapshot()
    decoder = Decoder(snap)
    # an attribute (INET_DIAG_SHUTDOWN, 5 bytes padded to 8) must be skipped by length
    shutdown_attr = struct.pack("=HHB", 5, 8, 0) + b"\0\0\0"
    decoder.feed(diag_msg(states.LISTEN, inode=10, sport=8080, src="0.0.0.0", rqueue=3, wqueue=128)
                 + diag_msg(states.ESTABLISHED, inode=11, attrs=shutdown_attr)
                 + diag_msg(states.CLOSE_WAIT, inode=12, sport=8080, cookie=99))
    assert not decoder.done
    decoder.feed(diag_msg(states.ESTABLISHED, inode=0, sport=8080)
                 + diag_msg(states.TIME_WAIT) + diag_msg(states.FIN_WAIT2) + done())
    assert decoder.done
    assert snap.counts[("ipv4", states.ESTABLISHED)] == 2
    assert snap.counts[("ipv4", states.TIME_WAIT)] == 1
    assert snap.counts[("ipv4", states.SYN_SENT)] == 0
    assert snap.total() == 6
    (listener,) = snap.listeners
    assert (listener.endpoint.port, listener.queue_length, listener.queue_limit) == (8080, 3, 128)
    assert listener.endpoint.is_wildcard and listener.inode == 10
    assert snap.inode_states == {10: states.LISTEN, 11: states.ESTABLISHED, 12: states.CLOSE_WAIT}
    (cw,) = snap.close_wait
    assert (cw.cookie, cw.inode, cw.endpoint.port) == (99, 12, 8080)
    queued = Endpoint("ipv4", socket.inet_aton("127.0.0.1"), 8080)
    assert snap.unaccepted == {(queued, states.ESTABLISHED): 1}   # TIME_WAIT, FIN_WAIT2: the kernel's


def test_ipv6_addresses_keep_sixteen_bytes():
    snap = DiagSnapshot()
    Decoder(snap).feed(diag_msg(states.LISTEN, inode=1, sport=443, src="::1",
                                        family=socket.AF_INET6) + done())
    assert snap.listeners[0].endpoint.address == socket.inet_pton(socket.AF_INET6, "::1")


def test_without_owners_keeps_no_inodes():
    snap = DiagSnapshot()
    Decoder(snap, DumpWants(owners=False)).feed(
        diag_msg(states.ESTABLISHED, inode=5) + diag_msg(states.TIME_WAIT) + done())
    assert snap.inode_states == {} and not snap.unaccepted
    assert snap.counts[("ipv4", states.ESTABLISHED)] == 1


def test_kernel_error_is_raised_with_errno():
    error = struct.pack("=IHHIIi", 36, NLMSG_ERROR, 0, 1, 0, -1) + b"\0" * 16
    with pytest.raises(DumpError) as info:
        Decoder(DiagSnapshot()).feed(error)
    assert info.value.errno == 1 and "EPERM" in str(info.value)


def test_truncated_message_is_an_error_not_a_wrong_count():
    msg = diag_msg(states.ESTABLISHED, inode=1)
    with pytest.raises(DumpError):
        Decoder(DiagSnapshot()).feed(msg[:-8])


def snapshot_of(chunks, want_owners=True, want_ports=False):
    snap = DiagSnapshot()
    decoder = Decoder(snap, DumpWants(want_owners, want_ports))
    for chunk in chunks:
        decoder.feed(chunk)
    assert decoder.done
    return snap


@pytest.mark.parametrize("want_owners,want_ports", [(True, True), (False, False), (False, True)])
def test_uniform_chunks_decode_like_single_messages(want_owners, want_ports):
    """The column-wise path (one length per chunk) must agree with the per-message walk."""
    import random

    rng = random.Random(7)
    attr = struct.pack("=HHB", 5, 8, 0) + b"\0\0\0"
    msgs = []
    for i in range(300):
        state = rng.choice(states.REPORTED[:6] + (states.CLOSE_WAIT, states.LISTEN, states.LAST_ACK))
        inode = 0 if rng.random() < 0.3 else 1000 + i
        msgs.append(diag_msg(state, inode=inode, sport=rng.choice([80, 443, 40000 + i]), cookie=i,
                             rqueue=i % 5, wqueue=128, attrs=attr, expires=rng.randrange(1000, 60000),
                             dport=rng.choice([5432, 6379, 50000 + i])))
    msgs.sort(key=lambda m: m[17] != states.LISTEN)   # the kernel sends listeners first
    listeners_first = [diag_msg(states.LISTEN, inode=5, sport=80, src="0.0.0.0", attrs=attr)] + msgs
    one_chunk = snapshot_of([b"".join(listeners_first) + done()], want_owners, want_ports)
    one_by_one = snapshot_of([m for m in listeners_first] + [done()], want_owners, want_ports)
    assert one_chunk == one_by_one
    assert bool(one_chunk.server_ports) == want_ports == bool(one_chunk.client_ports)
    time_wait_timers = [struct.unpack_from("=I", m, 16 + 52)[0] for m in msgs if m[17] == states.TIME_WAIT]
    assert time_wait_timers and one_chunk.time_wait_min_remaining_ms == min(time_wait_timers)
    assert one_chunk.total() == 301
    assert len(one_chunk.listeners) == sum(1 for m in listeners_first if m[17] == states.LISTEN)


def test_uniform_chunk_with_a_different_length_falls_back():
    short, long_ = diag_msg(states.TIME_WAIT), diag_msg(states.ESTABLISHED, inode=3, attrs=b"\0" * 8)
    snap = snapshot_of([diag_msg(states.TIME_WAIT, expires=59000) + long_ + short + done()])
    assert snap.counts[("ipv4", states.TIME_WAIT)] == 2 and snap.inode_states == {3: states.ESTABLISHED}
    assert snap.time_wait_min_remaining_ms == 0


class ColumnsOnly(Decoder):
    """Fails if a chunk falls back to the per-message walk."""

    def _feed_each(self, data, offset):
        raise AssertionError("chunk walked message by message")


@pytest.mark.parametrize("want_owners,want_ports", [(True, True), (False, False), (False, True)])
def test_mixed_lengths_and_families_decode_by_columns_like_the_walk(want_owners, want_ports):
    """A realistic chunk: full sockets of both families (attributes) interleaved with timewait
    and request sockets (none), as the kernel's hash walk returns them."""
    import random

    rng = random.Random(11)
    attr = struct.pack("=HHB", 5, 8, 0) + b"\0\0\0"
    msgs = []
    for i in range(400):
        family, src = rng.choice([(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
        state = rng.choice((states.ESTABLISHED, states.ESTABLISHED, states.TIME_WAIT, states.SYN_RECV,
                            states.CLOSE_WAIT, states.FIN_WAIT2, states.LISTEN))
        full = state not in (states.TIME_WAIT, states.SYN_RECV)
        inode = 1000 + i if full and rng.random() < 0.8 else 0
        msgs.append(diag_msg(state, inode=inode, sport=rng.choice([80, 443, 40000 + i]), src=src,
                             family=family, cookie=(i << 37) | i, rqueue=i % 3, attrs=attr if full else b"",
                             expires=rng.randrange(1000, 60000), dport=rng.choice([5432, 50000 + i])))
    msgs.sort(key=lambda m: m[17] != states.LISTEN)   # the kernel sends listeners first
    chunk = b"".join(msgs) + done()
    by_columns = DiagSnapshot()
    decoder = ColumnsOnly(by_columns, DumpWants(want_owners, want_ports))
    decoder.feed(chunk)
    by_walk = DiagSnapshot()
    walker = Decoder(by_walk, DumpWants(want_owners, want_ports))
    walker._feed_each(chunk, 0)
    assert decoder.done and walker.done
    assert by_columns == by_walk
    if want_owners:   # CLOSE_WAIT details were built by columns: 64-bit cookies, both families
        assert by_columns.close_wait and any(s.cookie >> 32 for s in by_columns.close_wait)
        assert {s.endpoint.family for s in by_columns.close_wait} == {"ipv4", "ipv6"}
        assert any(state == states.CLOSE_WAIT for _e, state in by_columns.unaccepted)
    assert by_columns.counts[("ipv6", states.TIME_WAIT)] and by_columns.counts[("ipv4", states.TIME_WAIT)]
    assert by_columns.total() == 400


def test_ports_count_server_side_by_local_port_and_client_side_by_remote_port():
    """A listener on 8080: its accepted and queued connections are the server side; a
    connection from an ephemeral port to 5432 is the client side, by remote port."""
    snap = snapshot_of([
        diag_msg(states.LISTEN, inode=1, sport=8080, src="0.0.0.0")
        + diag_msg(states.ESTABLISHED, inode=2, sport=8080, dport=41000)
        + diag_msg(states.CLOSE_WAIT, inode=3, sport=8080, dport=41001)
        + diag_msg(states.SYN_RECV, sport=8080, dport=41002),
        diag_msg(states.CLOSE_WAIT, inode=4, sport=41003, dport=5432)
        + diag_msg(states.CLOSE_WAIT, inode=5, sport=41004, dport=5432)
        + diag_msg(states.TIME_WAIT, sport=41005, dport=5432)
        + diag_msg(states.ESTABLISHED, inode=6, sport=41006, dport=8080) + done()], want_ports=True)
    assert snap.server_ports == {(8080, states.ESTABLISHED): 1, (8080, states.CLOSE_WAIT): 1,
                                 (8080, states.SYN_RECV): 1}
    assert snap.client_ports == {(5432, states.CLOSE_WAIT): 2, (5432, states.TIME_WAIT): 1,
                                 (8080, states.ESTABLISHED): 1}
