"""The pure half of the inet_diag source: the kernel's dump reply, bytes in, a DiagSnapshot out.

No socket and no library here, so tests feed it hand-built messages; sources/inet_diag.py
sends the request and feeds it what recv() returns.
"""

from __future__ import annotations

import socket
from collections import Counter
from errno import errorcode as errno_names
from itertools import compress, repeat
from operator import add, not_, or_

from .. import states
from ..model import CloseWaitSocket, DiagSnapshot, DumpWants, Endpoint, Listener
from .inet_diag_layout import (
    ADDR_LEN, COOKIE, COOKIE_AT, DIAG_TYPES, DONE_LEN, DPORT_AT, DST_AT, ERRNO, EXPIRES_AT,
    FAMILY_AT, FAMILY_MARK, FAMILY_NAMES, INODE_AT, MSG_MIN_LEN, NLMSG_DONE, NLMSG_ERROR, NLMSGHDR, NLMSGHDR_LEN,
    PORTS, QUEUES, QUEUES_AT, SPORT, SPORT_AT, SRC_AT, STATE_AT, U32, BYTE, CLOSE_WAIT_MARK, HEAD_END,
    TIME_WAIT_MARK, WORD, Columns, InodesAt, column_of, gather, message_offsets, picked, swap_port, unaccepted_mask)


class DumpError(OSError):
    """The kernel refused or broke off the dump."""


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
        self._unaccepted = Counter()      # (raw family .. local port, local address) -> sockets
        self._listening = set()           # local ports of listeners, byte-swapped
        self._server = Counter()          # (swapped local port, state) -> sockets
        self._client = Counter()          # (swapped remote port, state) -> sockets

    def feed(self, data: bytes) -> None:
        """Decode one recv()'s worth of netlink messages."""
        if not self._feed_columns(data):
            self._feed_each(data, 0)

    def _feed_columns(self, data: bytes) -> bool:
        columns = self._columns(data)
        if columns is None:
            return False
        offsets, state_bytes, family_bytes, inodes = (columns.offsets, columns.states, columns.families,
                                                      columns.inodes)
        self._count_states(state_bytes, family_bytes)
        if states.TIME_WAIT in state_bytes:
            self._note_time_wait(min(compress(column_of(data, offsets, EXPIRES_AT), state_bytes.translate(TIME_WAIT_MARK))))
        if self.want_owners:
            self.snap.inode_states.update(zip(inodes, state_bytes))
        i = state_bytes.find(states.LISTEN)   # listeners: few, one by one
        while i >= 0:
            self._note_special(data, offsets[i], states.LISTEN, inodes[i])
            i = state_bytes.find(states.LISTEN, i + 1)
        if self.want_ports:
            self._count_ports(state_bytes, columns.local_ports, columns.remote_ports)
        if self.want_owners:
            # CLOSE_WAIT details (ages, owners) and sockets no fd holds yet, picked out in C.
            if states.CLOSE_WAIT in state_bytes:
                self._close_wait_columns(data, offsets, state_bytes, family_bytes, inodes)
            self._unaccepted_columns(data, columns)
        if columns.done:
            self._finish()
        return True

    def _columns(self, data: bytes):
        """The chunk's messages as Columns, or None when it does not parse that way: by
        strided slices when every message has one length, else by their offsets."""
        size = len(data)
        if size < MSG_MIN_LEN or size % 4:
            return None
        words = memoryview(data).cast("I")
        length = words[0]
        if length < MSG_MIN_LEN or length % 4:
            return None
        count, rest = divmod(size, length)
        uniform = (rest in (0, DONE_LEN) and words[0:count * length // 4:length // 4].tolist().count(length) == count)
        columns = self._uniform_columns(data, words, length, count) if uniform else self._mixed_columns(data, words)
        if columns is None or not columns.offsets or columns.msg_type not in DIAG_TYPES:
            return None
        rest = size - columns.end
        if rest not in (0, DONE_LEN) or (rest and NLMSGHDR.unpack_from(data, columns.end)[:2] != (DONE_LEN, NLMSG_DONE)):
            return None
        return columns._replace(done=bool(rest))

    def _uniform_columns(self, data: bytes, words, length: int, count: int):
        end = count * length
        halves = memoryview(data).cast("H")
        types = halves[2:end // 2:length // 2].tolist()
        if types.count(types[0]) != count:
            return None
        local_ports = remote_ports = None
        if self.want_ports:
            local_ports = halves[SPORT_AT // 2:end // 2:length // 2].tolist()
            remote_ports = halves[DPORT_AT // 2:end // 2:length // 2].tolist()
        return Columns(range(0, end, length), end, types[0], data[STATE_AT:end:length], data[FAMILY_AT:end:length],
                        words[INODE_AT // 4:end // 4:length // 4].tolist(), local_ports, remote_ports)

    def _mixed_columns(self, data: bytes, words):
        offsets = message_offsets(data, words)
        if not offsets:
            return None
        inodes = (gather(list(map((INODE_AT // 4).__add__, map((2).__rrshift__, offsets))), words)
                  if self.want_owners else InodesAt(offsets, words))
        local_ports = remote_ports = None
        if self.want_ports:
            halves = memoryview(data).cast("H")
            local_ports = gather(list(map((SPORT_AT // 2).__add__, map((1).__rrshift__, offsets))), halves)
            remote_ports = gather(list(map((DPORT_AT // 2).__add__, map((1).__rrshift__, offsets))), halves)
        return Columns(offsets, offsets[-1] + words[offsets[-1] >> 2],
                        NLMSGHDR.unpack_from(data)[1],   # the split marker holds every type
                        bytes(gather(list(map(STATE_AT.__add__, offsets)), data)),
                        bytes(gather(list(map(FAMILY_AT.__add__, offsets)), data)),
                        inodes, local_ports, remote_ports)

    def _count_states(self, state_bytes: bytes, family_bytes: bytes) -> None:
        per_state = self._per_state
        v6 = family_bytes.count(socket.AF_INET6)
        if v6 == 0 or v6 == len(state_bytes):
            base = 16 if v6 else 0
            for state in states.REPORTED:
                per_state[base + state] += state_bytes.count(state)
        else:   # both families: state | 0x10 for IPv6, one count per (family, state)
            marked = bytes(map(or_, state_bytes, family_bytes.translate(FAMILY_MARK)))
            for state in states.REPORTED:
                per_state[state] += marked.count(state)
                per_state[16 + state] += marked.count(16 + state)

    def _unaccepted_columns(self, data: bytes, columns) -> None:
        """Sockets no fd holds yet, counted per (family .. local port, local address bytes)
        and made Endpoints at the end (the remote port, between them, is left out: request
        sockets would otherwise each be a key of their own)."""
        chosen = list(compress(range(len(columns.states)), unaccepted_mask(data, columns)))
        if chosen:
            starts = gather(chosen, columns.offsets)
            heads = map(data.__getitem__, map(slice, map(FAMILY_AT.__add__, starts), map(HEAD_END.__add__, starts)))
            sources = map(data.__getitem__, map(slice, map(SRC_AT.__add__, starts), map((SRC_AT + 16).__add__, starts)))
            self._unaccepted.update(zip(heads, sources))

    def _close_wait_columns(self, data, offsets, state_bytes: bytes, family_bytes: bytes, inodes) -> None:
        """Every CLOSE_WAIT socket of a chunk as a CloseWaitSocket, built column by column
        (cookies, addresses, ports) with no Python per socket; those still in an accept
        queue (inode 0) also counted as unaccepted."""
        chosen = list(compress(range(len(state_bytes)), state_bytes.translate(CLOSE_WAIT_MARK)))
        at = gather(chosen, offsets)
        low, high = (picked(data, offsets, at, chosen, COOKIE_AT + i, WORD) for i in (0, 4))
        cookies = list(map(or_, low, map((32).__rlshift__, high)))
        families = bytes(gather(chosen, family_bytes))
        lengths = families.translate(ADDR_LEN)
        labels = list(map(FAMILY_NAMES.__getitem__, families))

        def addresses(field_at):
            starts = list(map(field_at.__add__, at))
            return list(map(data.__getitem__, map(slice, starts, map(add, starts, lengths))))

        def ports(field_at):   # big-endian: high byte, then low byte
            high_bytes, low_bytes = (picked(data, offsets, at, chosen, field_at + i, BYTE) for i in (0, 1))
            return list(map(add, map((8).__rlshift__, high_bytes), low_bytes))

        endpoints = list(map(tuple.__new__, repeat(Endpoint), zip(labels, addresses(SRC_AT), ports(SPORT_AT))))
        chosen_inodes = gather(chosen, inodes)
        self.snap.close_wait.extend(map(tuple.__new__, repeat(CloseWaitSocket), zip(
            cookies, chosen_inodes, endpoints, addresses(DST_AT), ports(DPORT_AT))))
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
        unpack_hdr = NLMSGHDR.unpack_from
        unpack_u32 = U32.unpack_from
        end = len(data)
        while offset + NLMSGHDR_LEN <= end and not self.done:
            length, msg_type, _flags = unpack_hdr(data, offset)
            if length < NLMSGHDR_LEN or offset + length > end:
                raise DumpError(f"truncated netlink message ({length} bytes)")
            if msg_type in DIAG_TYPES and length >= MSG_MIN_LEN:
                state = data[offset + STATE_AT]
                per_state[(state & 15) + (16 if data[offset + FAMILY_AT] == socket.AF_INET6 else 0)] += 1
                inode = unpack_u32(data, offset + INODE_AT)[0]
                if self.want_ports:
                    local, remote = PORTS.unpack_from(data, offset + SPORT_AT)
                    self._count_ports(bytes((state,)), [local], [remote])
                if inode_states is not None:
                    inode_states[inode] = state
                if state == states.LISTEN or (inode_states is not None and (
                        state == states.CLOSE_WAIT or (not inode and state in states.ACCEPT_QUEUE_STATES))):
                    self._note_special(data, offset, state, inode)
                elif state == states.TIME_WAIT:
                    self._note_time_wait(unpack_u32(data, offset + EXPIRES_AT)[0])
            elif msg_type == NLMSG_DONE:
                self._finish()
            elif msg_type == NLMSG_ERROR:
                errno = -ERRNO.unpack_from(data, offset + NLMSGHDR_LEN)[0]
                raise DumpError(errno, f"inet_diag dump refused: {errno_names.get(errno, errno)}")
            offset += (length + 3) & ~3

    def _note_special(self, data, offset, state, inode) -> None:
        """Listeners, CLOSE_WAIT sockets and sockets no fd holds: the few that need more fields."""
        snap = self.snap
        v6 = data[offset + FAMILY_AT] == socket.AF_INET6
        addr_len = 16 if v6 else 4
        endpoint = Endpoint(
            "ipv6" if v6 else "ipv4",
            bytes(data[offset + SRC_AT:offset + SRC_AT + addr_len]),
            SPORT.unpack_from(data, offset + SPORT_AT)[0],
        )
        if state == states.LISTEN:
            length, limit = QUEUES.unpack_from(data, offset + QUEUES_AT)
            snap.listeners.append(Listener(endpoint, inode, length, limit))
            return
        if state == states.CLOSE_WAIT:
            cookie = COOKIE.unpack_from(data, offset + COOKIE_AT)[0]
            snap.close_wait.append(CloseWaitSocket(
                cookie, inode, endpoint,
                bytes(data[offset + DST_AT:offset + DST_AT + addr_len]),
                SPORT.unpack_from(data, offset + DPORT_AT)[0]))
        if not inode and self.want_owners:
            snap.unaccepted[(endpoint, state)] += 1

    def _note_time_wait(self, remaining_ms: int) -> None:
        current = self.snap.time_wait_min_remaining_ms
        if current < 0 or remaining_ms < current:
            self.snap.time_wait_min_remaining_ms = remaining_ms

    def _finish(self) -> None:
        self.done = True
        for (head, source), count in self._unaccepted.items():
            v6 = head[0] == socket.AF_INET6
            endpoint = Endpoint("ipv6" if v6 else "ipv4", source[:16 if v6 else 4],
                                SPORT.unpack_from(head, SPORT_AT - FAMILY_AT)[0])
            self.snap.unaccepted[(endpoint, head[STATE_AT - FAMILY_AT])] += count
        self.snap.inode_states.pop(0, None)   # sockets without an fd are not keyed by inode
        if self.want_ports:
            for mine, theirs in ((self._server, self.snap.server_ports), (self._client, self.snap.client_ports)):
                for (swapped, state), count in mine.items():
                    if state != states.LISTEN:
                        theirs[(swap_port(swapped), state)] += count
        for state in states.REPORTED:
            self.snap.counts[("ipv4", state)] += self._per_state[state]
            self.snap.counts[("ipv6", state)] += self._per_state[16 + state]
