"""TCP sockets from the kernel's netlink inet_diag interface (what ``ss`` uses).

pyroute2 supplies the protocol constants and encodes the request. The reply is read on a
plain AF_NETLINK socket and only the fixed 72-byte ``inet_diag_msg`` header of each message
is decoded, with ``struct``: pyroute2 0.9's own socket runs an asyncio endpoint that decodes
every message into objects, which costs seconds and hundreds of MB at 100k sockets. The
request asks for no extensions (idiag_ext = 0), so the kernel adds only the attributes it
always adds, which are skipped by length.
"""

from __future__ import annotations

import itertools
import os
from errno import errorcode as errno_names
import socket
import struct

from pyroute2.netlink import NETLINK_SOCK_DIAG, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.diag import SOCK_DIAG_BY_FAMILY, inet_diag_req

from .. import states
from ..model import CloseWaitSocket, DiagSnapshot, Endpoint, Listener

_FAMILIES = ((socket.AF_INET, "ipv4"), (socket.AF_INET6, "ipv6"))

_NLMSGHDR = struct.Struct("=IHH")        # nlmsg_len, nlmsg_type, nlmsg_flags (seq, pid skipped)
_NLMSGHDR_LEN = 16
_ERRNO = struct.Struct("=i")
# Offsets inside inet_diag_msg, counted from the netlink header's start.
_STATE_AT = _NLMSGHDR_LEN + 1
_U32 = struct.Struct("=I")
_INODE_AT = _NLMSGHDR_LEN + 68
_SPORT = struct.Struct(">H")
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
_sequence = itertools.count(1)


class DumpError(OSError):
    """The kernel refused or broke off the dump."""


def _request(family: int, sequence: int) -> bytes:
    req = inet_diag_req()
    req["header"]["type"] = SOCK_DIAG_BY_FAMILY
    req["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    req["header"]["sequence_number"] = sequence
    req["sdiag_family"] = family
    req["sdiag_protocol"] = socket.IPPROTO_TCP
    req["idiag_states"] = states.ALL_STATES_MASK
    req["idiag_ext"] = 0
    req.encode()
    return bytes(req.data)


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


def dump(want_owners: bool = True, sock=None, netns_inode=None) -> DiagSnapshot:
    """Dump every TCP socket of one network namespace, IPv4 then IPv6.

    ``sock``: a socket from ``open_socket`` (its namespace is the one dumped); without one,
    a fresh socket dumps this thread's namespace. ``want_owners`` keeps the inode of each
    socket so that processes can be matched to it; without it the dump keeps only counts,
    listeners and CLOSE_WAIT sockets.
    """
    if sock is None:
        with open_socket() as fresh:
            return dump(want_owners, fresh, _netns_inode())
    snap = DiagSnapshot(netns_inode=netns_inode or 0)
    for family, label in _FAMILIES:
        sock.sendall(_request(family, next(_sequence)))
        decoder = Decoder(label, snap, want_owners)
        while not decoder.done:
            data = sock.recv(_RECV_BYTES)
            if not data:
                raise DumpError("netlink socket closed during the dump")
            decoder.feed(data)
    return snap


class Decoder:
    """Reduces the reply messages of one family's dump into a ``DiagSnapshot``.

    Pure: it takes the bytes the kernel sent, so tests feed it hand-built messages.

    Speed comes from chunks whose messages all have one length, the usual case: with no
    extensions requested every full socket of a family carries the same attributes. Such a
    chunk is read column-wise with strided slices done in C (every state byte, every inode),
    so Python does a few operations per 32 KiB rather than per socket. Chunks that mix
    lengths (timewait and request sockets have no attributes) are walked message by message.
    """

    def __init__(self, family: str, snap: DiagSnapshot, want_owners: bool = True):
        self.family = family
        self.snap = snap
        self.want_owners = want_owners
        self.done = False
        self._addr_len = 4 if family == "ipv4" else 16
        self._per_state = [0] * 16

    def feed(self, data: bytes) -> None:
        """Decode one recv()'s worth of netlink messages."""
        if not self._feed_uniform(data):
            self._feed_each(data, 0)

    def _feed_uniform(self, data: bytes) -> bool:
        size = len(data)
        if size < _MSG_MIN_LEN or size % 4:
            return False
        length = _U32.unpack_from(data, 0)[0]
        if length < _MSG_MIN_LEN or length % 4:
            return False
        count, rest = divmod(size, length)
        if rest not in (0, _DONE_LEN):
            return False
        end = count * length
        words = memoryview(data).cast("I")
        step = length // 4
        if words[0:end // 4:step].tolist().count(length) != count:
            return False
        if memoryview(data).cast("H")[2:end // 2:length // 2].tolist().count(SOCK_DIAG_BY_FAMILY) != count:
            return False
        if rest and _NLMSGHDR.unpack_from(data, end)[:2] != (_DONE_LEN, NLMSG_DONE):
            return False

        state_bytes = data[_STATE_AT:end:length]
        per_state = self._per_state
        for state in states.REPORTED:
            per_state[state] += state_bytes.count(state)
        inodes = words[_INODE_AT // 4:end // 4:step].tolist()
        time_waits = state_bytes.count(states.TIME_WAIT)
        if time_waits:
            expires = words[_EXPIRES_AT // 4:end // 4:step].tolist()
            if time_waits != count:
                expires = [ms for ms, state in zip(expires, state_bytes) if state == states.TIME_WAIT]
            self._note_time_wait(min(expires))
        if self.want_owners:
            self.snap.inode_states.update(zip(inodes, state_bytes))
        for state in (states.LISTEN, states.CLOSE_WAIT):
            i = state_bytes.find(state)
            while i >= 0:
                self._note_special(data, i * length, state, inodes[i])
                i = state_bytes.find(state, i + 1)
        if self.want_owners and (state_bytes.count(states.ESTABLISHED) or state_bytes.count(states.SYN_RECV)):
            i = -1
            for _ in range(inodes.count(0)):
                i = inodes.index(0, i + 1)
                if state_bytes[i] in (states.ESTABLISHED, states.SYN_RECV):
                    self._note_special(data, i * length, state_bytes[i], 0)
        if rest:
            self._finish()
        return True

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
            if msg_type == SOCK_DIAG_BY_FAMILY and length >= _MSG_MIN_LEN:
                state = data[offset + _STATE_AT]
                per_state[state & 15] += 1
                inode = unpack_u32(data, offset + _INODE_AT)[0]
                if inode_states is not None:
                    inode_states[inode] = state
                if state == states.LISTEN or state == states.CLOSE_WAIT or (
                        not inode and state in states.ACCEPT_QUEUE_STATES):
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
        endpoint = Endpoint(
            self.family,
            bytes(data[offset + _SRC_AT:offset + _SRC_AT + self._addr_len]),
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
                bytes(data[offset + _DST_AT:offset + _DST_AT + self._addr_len]),
                _SPORT.unpack_from(data, offset + _DPORT_AT)[0]))
        if not inode and self.want_owners:
            snap.unaccepted[(endpoint, state)] += 1

    def _note_time_wait(self, remaining_ms: int) -> None:
        current = self.snap.time_wait_min_remaining_ms
        if current < 0 or remaining_ms < current:
            self.snap.time_wait_min_remaining_ms = remaining_ms

    def _finish(self) -> None:
        self.done = True
        self.snap.inode_states.pop(0, None)   # sockets without an fd are not keyed by inode
        for state in states.REPORTED:
            self.snap.counts[(self.family, state)] += self._per_state[state]
