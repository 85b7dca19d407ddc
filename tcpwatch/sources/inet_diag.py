"""TCP sockets from the kernel's netlink inet_diag interface (what ``ss`` uses).

One dump per network namespace, both address families in one request: the original
TCPDIAG_GETSOCK request (``struct inet_diag_req``), which the kernel answers with
``sdiag_family = AF_UNSPEC``, so its walk of the socket hash (shared by every namespace on
the host) happens once instead of once per family. pyroute2 supplies the protocol
constants. The reply is read on a plain AF_NETLINK socket and only the fixed 72-byte
``inet_diag_msg`` header of each message is decoded: pyroute2 0.9's own socket runs an
asyncio endpoint that decodes every message into objects, which costs seconds and hundreds
of MB at 100k sockets. The request asks for no extensions (idiag_ext = 0), so the kernel
adds only the attributes it always adds, which are skipped by length.
"""

from __future__ import annotations

import itertools
import os
import random
from errno import errorcode as errno_names
from collections import Counter
from itertools import accumulate, compress, repeat
from operator import add, and_, itemgetter, not_, or_, sub
import socket
import struct
import sys

from pyroute2.netlink import NETLINK_SOCK_DIAG, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.diag import SOCK_DIAG_BY_FAMILY

from .. import states
from ..model import CloseWaitSocket, DiagSnapshot, DumpWants, Endpoint, Listener

TCPDIAG_GETSOCK = 18                      # include/uapi/linux/inet_diag.h: the v1 request type
_DIAG_TYPES = (TCPDIAG_GETSOCK, SOCK_DIAG_BY_FAMILY)   # replies carry the request's type
_FAMILY_MARK = bytes(0x10 if i == socket.AF_INET6 else 0 for i in range(256))  # v6 -> bit 4

_NLMSGHDR = struct.Struct("=IHH")        # nlmsg_len, nlmsg_type, nlmsg_flags (seq, pid skipped)
_NLMSGHDR_LEN = 16
_ERRNO = struct.Struct("=i")
# Offsets inside inet_diag_msg, counted from the netlink header's start.
_FAMILY_AT = _NLMSGHDR_LEN
_STATE_AT = _NLMSGHDR_LEN + 1
_U32 = struct.Struct("=I")
_INODE_AT = _NLMSGHDR_LEN + 68
_SPORT = struct.Struct(">H")
_PORTS = struct.Struct("=HH")             # local, remote port as the native u16 view reads them
_SPORT_AT = _NLMSGHDR_LEN + 4
_DPORT_AT = _NLMSGHDR_LEN + 6
_SRC_AT = _NLMSGHDR_LEN + 8
_DST_AT = _NLMSGHDR_LEN + 24
_EXPIRES_AT = _NLMSGHDR_LEN + 52          # idiag_expires: ms left on the socket's timer
_COOKIE = struct.Struct("=Q")
_COOKIE_AT = _NLMSGHDR_LEN + 44
_QUEUES = struct.Struct("=II")            # idiag_rqueue, idiag_wqueue
_QUEUES_AT = _NLMSGHDR_LEN + 56
_MSG_MIN_LEN = _NLMSGHDR_LEN + 72
_DONE_LEN = _NLMSGHDR_LEN + 4                 # NLMSG_DONE carries one int

_RECV_BYTES = 64 * 1024                   # the kernel fills at most ~32 KiB per dump chunk
_LITTLE_ENDIAN = sys.byteorder == "little"
_FAMILY_NAMES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
_ADDR_LEN = bytes(16 if i == socket.AF_INET6 else 4 for i in range(256))          # by family byte
_ACCEPT_QUEUE_MARK = bytes(1 if i in (states.ESTABLISHED, states.SYN_RECV) else 0 for i in range(256))
_RAW_END = _SRC_AT + 16 - _FAMILY_AT    # family byte .. end of the 16-byte source address
# Random first number: the chunk splitter's marker holds it, so a peer cannot predict it.
_sequence = itertools.count(random.randrange(1, 1 << 30))
# struct inet_diag_req: family, src_len, dst_len, ext, inet_diag_sockid (48 bytes), states, dbs
_V1_REQUEST = struct.Struct("=IHHIIBBBB48sII")


class DumpError(OSError):
    """The kernel refused or broke off the dump."""


def _request(sequence: int) -> bytes:
    """A dump of every TCP socket of both families, in every state, no extensions."""
    return _V1_REQUEST.pack(_V1_REQUEST.size, TCPDIAG_GETSOCK, NLM_F_REQUEST | NLM_F_DUMP, sequence, 0,
                            socket.AF_UNSPEC, 0, 0, 0, bytes(48), states.ALL_STATES_MASK, 0)


def _netns_inode() -> int:
    """The network namespace this thread's netlink socket dumps (0 if it cannot be read)."""
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return 0


def open_socket() -> socket.socket:
    """A NETLINK_SOCK_DIAG socket; it dumps the namespace the calling thread is in now."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    try:
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def dump(wants: DumpWants = DumpWants(), sock=None, netns_inode=None) -> DiagSnapshot:
    """Dump every TCP socket of one network namespace, both families in one walk.

    ``sock``: a socket from ``open_socket`` (its namespace is the one dumped); without one,
    a fresh socket dumps this thread's namespace. ``wants.owners`` keeps the inode of each
    socket so that processes can be matched to it; without it the dump keeps only counts,
    listeners and CLOSE_WAIT sockets. ``wants.ports`` counts sockets per service port
    (``DiagSnapshot.server_ports`` and ``client_ports``).
    """
    if sock is None:
        with open_socket() as fresh:
            return dump(wants, fresh, _netns_inode())
    snap = DiagSnapshot(netns_inode=netns_inode or 0)
    sock.sendall(_request(next(_sequence)))
    decoder = Decoder(snap, wants)
    while not decoder.done:
        data = sock.recv(_RECV_BYTES)
        if not data:
            raise DumpError("netlink socket closed during the dump")
        decoder.feed(data)
    return snap


def _offsets(data: bytes, words) -> list:
    """Where each diag message of a chunk starts, found in C: every message header after its
    length word is the same 12 bytes (type, flags, sequence number, port id), so splitting
    on them gives the messages' spans. The offsets are then checked against the length
    words (a payload that happened to contain those 12 bytes fails the check); [] if the
    chunk does not parse this way."""
    marker = data[4:_NLMSGHDR_LEN]
    pieces = data.split(marker)
    if len(pieces) < 2 or len(pieces[0]) != 4:
        return []
    # marker k starts at sum(len(pieces[:k+1])) + 12 k; its message 4 bytes before.
    ends = list(accumulate(map((len(marker)).__add__, map(len, pieces))))
    offsets = list(map((-len(marker) - 4).__add__, ends[:-1]))
    if any(map((3).__and__, offsets)):            # netlink messages are 4-byte aligned
        return []
    lengths = _gather(list(map((2).__rrshift__, offsets)), words)
    if list(map(sub, offsets[1:], offsets[:-1])) != lengths[:-1] or min(lengths) < _MSG_MIN_LEN:
        return []
    if lengths[-1] % 4 or offsets[-1] + lengths[-1] > len(data):
        return []
    return offsets


def _swap(port: int) -> int:
    """A port read as a native u16 from its big-endian bytes, back to its number (and back)."""
    return int.from_bytes(port.to_bytes(2, "big"), "little") if _LITTLE_ENDIAN else port


class _InodesAt:
    """Inodes read only where asked: without owners only listeners need theirs."""

    def __init__(self, offsets, words):
        self._offsets, self._words = offsets, words

    def __getitem__(self, i):
        return self._words[(self._offsets[i] + _INODE_AT) >> 2]


def _gather(indices: list, sequence) -> list:
    """``[sequence[i] for i in indices]`` at C speed (itemgetter), as a list."""
    if not indices:
        return []
    if len(indices) == 1:
        return [sequence[indices[0]]]
    return list(itemgetter(*indices)(sequence))


class Decoder:
    """Reduces the reply messages of one dump into a ``DiagSnapshot``.

    Pure: it takes the bytes the kernel sent, so tests feed it hand-built messages.

    Each recv() brings a chunk of up to ~32 KiB of messages. Python must not work per
    socket, so a chunk is read column-wise: the state, family and inode of every message
    are picked out in C, with strided slices when every message has one length (full
    sockets all carry the same attributes), or with itemgetter over the message offsets
    when lengths mix (timewait and request sockets carry none). Per-message Python is left
    for the few sockets that need more fields: listeners, CLOSE_WAIT, and sockets no fd
    holds yet. A chunk that does not parse that way (an error, a truncated message) is
    walked message by message, which raises the right error.

    Ports (``wants.ports``): a socket whose local port some listener of the namespace has is
    a server-side socket, counted by (local port, state); any other is a client-side one,
    counted by (remote port, state). The kernel's dump walks the listening hash before the
    established one, so the listening ports are known before the first connection arrives.
    Ports are kept byte-swapped (as the native u16 view of their big-endian bytes reads
    them) until ``_finish``, so that the chunk path never converts one.
    """

    def __init__(self, snap: DiagSnapshot, wants: DumpWants = DumpWants()):
        self.snap = snap
        self.want_owners = wants.owners
        self.want_ports = wants.ports
        self.done = False
        self._per_state = [0] * 32        # state, +16 for IPv6
        self._unaccepted = Counter()      # (raw family .. source address, state) -> sockets
        self._listening = set()           # local ports of listeners, byte-swapped
        self._server = Counter()          # (swapped local port, state) -> sockets
        self._client = Counter()          # (swapped remote port, state) -> sockets

    def feed(self, data: bytes) -> None:
        """Decode one recv()'s worth of netlink messages."""
        if not self._feed_columns(data):
            self._feed_each(data, 0)

    def _feed_columns(self, data: bytes) -> bool:
        size = len(data)
        if size < _MSG_MIN_LEN or size % 4:
            return False
        words = memoryview(data).cast("I")
        length = words[0]
        if length < _MSG_MIN_LEN or length % 4:
            return False
        count, rest = divmod(size, length)
        uniform = (rest in (0, _DONE_LEN) and words[0:count * length // 4:length // 4].tolist().count(length) == count)
        if uniform:
            end = count * length
            offsets = range(0, end, length)
            types = memoryview(data).cast("H")[2:end // 2:length // 2].tolist()
            if types.count(types[0]) != count:
                return False
            msg_type = types[0]
            state_bytes = data[_STATE_AT:end:length]
            family_bytes = data[_FAMILY_AT:end:length]
            inodes = words[_INODE_AT // 4:end // 4:length // 4].tolist()
            if self.want_ports:
                halves = memoryview(data).cast("H")
                local_ports = halves[_SPORT_AT // 2:end // 2:length // 2].tolist()
                remote_ports = halves[_DPORT_AT // 2:end // 2:length // 2].tolist()
        else:
            offsets = _offsets(data, words)
            if not offsets:
                return False
            end = offsets[-1] + words[offsets[-1] >> 2]
            rest = size - end
            msg_type = _NLMSGHDR.unpack_from(data)[1]   # the split marker holds every type
            state_bytes = bytes(_gather(list(map(_STATE_AT.__add__, offsets)), data))
            family_bytes = bytes(_gather(list(map(_FAMILY_AT.__add__, offsets)), data))
            inodes = (_gather(list(map((_INODE_AT // 4).__add__, map((2).__rrshift__, offsets))), words)
                      if self.want_owners else _InodesAt(offsets, words))
            if self.want_ports:
                halves = memoryview(data).cast("H")
                local_ports = _gather(list(map((_SPORT_AT // 2).__add__, map((1).__rrshift__, offsets))), halves)
                remote_ports = _gather(list(map((_DPORT_AT // 2).__add__, map((1).__rrshift__, offsets))), halves)
        count = len(offsets)
        if not count or msg_type not in _DIAG_TYPES:
            return False
        if rest not in (0, _DONE_LEN) or (rest and _NLMSGHDR.unpack_from(data, end)[:2] != (_DONE_LEN, NLMSG_DONE)):
            return False

        per_state = self._per_state
        v6 = family_bytes.count(socket.AF_INET6)
        if v6 == 0 or v6 == count:
            base = 16 if v6 else 0
            for state in states.REPORTED:
                per_state[base + state] += state_bytes.count(state)
        else:   # both families: state | 0x10 for IPv6, one count per (family, state)
            marked = bytes(map(or_, state_bytes, family_bytes.translate(_FAMILY_MARK)))
            for state in states.REPORTED:
                per_state[state] += marked.count(state)
                per_state[16 + state] += marked.count(16 + state)
        if states.TIME_WAIT in state_bytes:
            expires = _gather(list(map((_EXPIRES_AT // 4).__add__, map((2).__rrshift__, offsets))), words)
            self._note_time_wait(min(compress(expires, map(states.TIME_WAIT.__eq__, state_bytes))))
        if self.want_owners:
            self.snap.inode_states.update(zip(inodes, state_bytes))
        i = state_bytes.find(states.LISTEN)   # listeners: few, one by one
        while i >= 0:
            self._note_special(data, offsets[i], states.LISTEN, inodes[i])
            i = state_bytes.find(states.LISTEN, i + 1)
        if self.want_ports:
            self._count_ports(state_bytes, local_ports, remote_ports)
        if self.want_owners:
            # CLOSE_WAIT details (ages, owners) and sockets no fd holds yet, picked out in C.
            if states.CLOSE_WAIT in state_bytes:
                self._close_wait_columns(data, offsets, state_bytes, family_bytes, inodes)
            chosen = list(compress(range(count), map(and_, map((0).__eq__, inodes),
                                                      state_bytes.translate(_ACCEPT_QUEUE_MARK))))
            if chosen:
                # counted per (family .. local address bytes, state), made Endpoints at the end
                starts = list(map(_FAMILY_AT.__add__, _gather(chosen, offsets)))
                raws = map(data.__getitem__, map(slice, starts, map(_RAW_END.__add__, starts)))
                self._unaccepted.update(zip(raws, _gather(chosen, state_bytes)))
        if rest:
            self._finish()
        return True

    def _close_wait_columns(self, data, offsets, state_bytes: bytes, family_bytes: bytes, inodes) -> None:
        """Every CLOSE_WAIT socket of a chunk as a CloseWaitSocket, built column by column
        (cookies, addresses, ports) with no Python per socket; those still in an accept
        queue (inode 0) also counted as unaccepted."""
        chosen = list(compress(range(len(state_bytes)), map(states.CLOSE_WAIT.__eq__, state_bytes)))
        at = _gather(chosen, offsets)
        words = memoryview(data).cast("I")
        low = _gather(list(map((_COOKIE_AT // 4).__add__, map((2).__rrshift__, at))), words)
        high = _gather(list(map((_COOKIE_AT // 4 + 1).__add__, map((2).__rrshift__, at))), words)
        cookies = list(map(or_, low, map((32).__rlshift__, high)))
        families = bytes(_gather(chosen, family_bytes))
        lengths = families.translate(_ADDR_LEN)
        labels = list(map(_FAMILY_NAMES.__getitem__, families))

        def addresses(field_at):
            starts = list(map(field_at.__add__, at))
            return list(map(data.__getitem__, map(slice, starts, map(add, starts, lengths))))

        def ports(field_at):
            high_bytes = _gather(list(map(field_at.__add__, at)), data)
            low_bytes = _gather(list(map((field_at + 1).__add__, at)), data)
            return list(map(add, map((8).__rlshift__, high_bytes), low_bytes))

        endpoints = list(map(tuple.__new__, repeat(Endpoint), zip(labels, addresses(_SRC_AT), ports(_SPORT_AT))))
        chosen_inodes = _gather(chosen, inodes)
        self.snap.close_wait.extend(map(tuple.__new__, repeat(CloseWaitSocket), zip(
            cookies, chosen_inodes, endpoints, addresses(_DST_AT), ports(_DPORT_AT))))
        self.snap.unaccepted.update(zip(compress(endpoints, map(not_, chosen_inodes)), repeat(states.CLOSE_WAIT)))

    def _count_ports(self, state_bytes: bytes, local_ports: list, remote_ports: list) -> None:
        """Server- and client-side counts of one chunk, picked out in C (see the class doc)."""
        listening = self._listening
        i = state_bytes.find(states.LISTEN)
        while i >= 0:
            listening.add(local_ports[i])
            i = state_bytes.find(states.LISTEN, i + 1)
        server = list(map(listening.__contains__, local_ports))
        self._server.update(compress(zip(local_ports, state_bytes), server))
        self._client.update(compress(zip(remote_ports, state_bytes), map(not_, server)))

    def _feed_each(self, data: bytes, offset: int) -> None:
        per_state = self._per_state
        inode_states = self.snap.inode_states if self.want_owners else None
        unpack_hdr = _NLMSGHDR.unpack_from
        unpack_u32 = _U32.unpack_from
        end = len(data)
        while offset + _NLMSGHDR_LEN <= end and not self.done:
            length, msg_type, _flags = unpack_hdr(data, offset)
            if length < _NLMSGHDR_LEN or offset + length > end:
                raise DumpError(f"truncated netlink message ({length} bytes)")
            if msg_type in _DIAG_TYPES and length >= _MSG_MIN_LEN:
                state = data[offset + _STATE_AT]
                per_state[(state & 15) + (16 if data[offset + _FAMILY_AT] == socket.AF_INET6 else 0)] += 1
                inode = unpack_u32(data, offset + _INODE_AT)[0]
                if self.want_ports:
                    local, remote = _PORTS.unpack_from(data, offset + _SPORT_AT)
                    self._count_ports(bytes((state,)), [local], [remote])
                if inode_states is not None:
                    inode_states[inode] = state
                if state == states.LISTEN or (inode_states is not None and (
                        state == states.CLOSE_WAIT or (not inode and state in states.ACCEPT_QUEUE_STATES))):
                    self._note_special(data, offset, state, inode)
                elif state == states.TIME_WAIT:
                    self._note_time_wait(unpack_u32(data, offset + _EXPIRES_AT)[0])
            elif msg_type == NLMSG_DONE:
                self._finish()
            elif msg_type == NLMSG_ERROR:
                errno = -_ERRNO.unpack_from(data, offset + _NLMSGHDR_LEN)[0]
                raise DumpError(errno, f"inet_diag dump refused: {errno_names.get(errno, errno)}")
            offset += (length + 3) & ~3

    def _note_special(self, data, offset, state, inode) -> None:
        """Listeners, CLOSE_WAIT sockets and sockets no fd holds: the few that need more fields."""
        snap = self.snap
        v6 = data[offset + _FAMILY_AT] == socket.AF_INET6
        addr_len = 16 if v6 else 4
        endpoint = Endpoint(
            "ipv6" if v6 else "ipv4",
            bytes(data[offset + _SRC_AT:offset + _SRC_AT + addr_len]),
            _SPORT.unpack_from(data, offset + _SPORT_AT)[0],
        )
        if state == states.LISTEN:
            length, limit = _QUEUES.unpack_from(data, offset + _QUEUES_AT)
            snap.listeners.append(Listener(endpoint, inode, length, limit))
            return
        if state == states.CLOSE_WAIT:
            cookie = _COOKIE.unpack_from(data, offset + _COOKIE_AT)[0]
            snap.close_wait.append(CloseWaitSocket(
                cookie, inode, endpoint,
                bytes(data[offset + _DST_AT:offset + _DST_AT + addr_len]),
                _SPORT.unpack_from(data, offset + _DPORT_AT)[0]))
        if not inode and self.want_owners:
            snap.unaccepted[(endpoint, state)] += 1

    def _note_time_wait(self, remaining_ms: int) -> None:
        current = self.snap.time_wait_min_remaining_ms
        if current < 0 or remaining_ms < current:
            self.snap.time_wait_min_remaining_ms = remaining_ms

    def _finish(self) -> None:
        self.done = True
        for (raw, state), count in self._unaccepted.items():
            v6 = raw[0] == socket.AF_INET6
            start = _SRC_AT - _FAMILY_AT
            endpoint = Endpoint("ipv6" if v6 else "ipv4", raw[start:start + (16 if v6 else 4)],
                                _SPORT.unpack_from(raw, _SPORT_AT - _FAMILY_AT)[0])
            self.snap.unaccepted[(endpoint, state)] += count
        self.snap.inode_states.pop(0, None)   # sockets without an fd are not keyed by inode
        if self.want_ports:
            for mine, theirs in ((self._server, self.snap.server_ports), (self._client, self.snap.client_ports)):
                for (swapped, state), count in mine.items():
                    if state != states.LISTEN:
                        theirs[(_swap(swapped), state)] += count
        for state in states.REPORTED:
            self.snap.counts[("ipv4", state)] += self._per_state[state]
            self.snap.counts[("ipv6", state)] += self._per_state[16 + state]
