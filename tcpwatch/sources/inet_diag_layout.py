"""Where each field sits in an inet_diag reply (a netlink header, then struct
inet_diag_msg), and the C-speed gathers the decoder reads whole columns of a chunk with."""

from __future__ import annotations

import socket
import struct
import sys
from itertools import accumulate
from operator import and_, itemgetter, sub
from typing import NamedTuple

from .. import states

# Kernel ABI numbers (include/uapi/linux/netlink.h, sock_diag.h, inet_diag.h).
NLMSG_ERROR, NLMSG_DONE = 2, 3
SOCK_DIAG_BY_FAMILY = 20
TCPDIAG_GETSOCK = 18                      # the v1 request type
DIAG_TYPES = (TCPDIAG_GETSOCK, SOCK_DIAG_BY_FAMILY)   # replies carry the request's type
FAMILY_MARK = bytes(0x10 if i == socket.AF_INET6 else 0 for i in range(256))  # v6 -> bit 4

NLMSGHDR = struct.Struct("=IHH")        # nlmsg_len, nlmsg_type, nlmsg_flags (seq, pid skipped)
NLMSGHDR_LEN = 16
ERRNO = struct.Struct("=i")
# Offsets inside inet_diag_msg, counted from the netlink header's start.
FAMILY_AT = NLMSGHDR_LEN
STATE_AT = NLMSGHDR_LEN + 1
U32 = struct.Struct("=I")
INODE_AT = NLMSGHDR_LEN + 68
SPORT = struct.Struct(">H")
PORTS = struct.Struct("=HH")             # local, remote port as the native u16 view reads them
SPORT_AT = NLMSGHDR_LEN + 4
DPORT_AT = NLMSGHDR_LEN + 6
SRC_AT = NLMSGHDR_LEN + 8
DST_AT = NLMSGHDR_LEN + 24
EXPIRES_AT = NLMSGHDR_LEN + 52          # idiag_expires: ms left on the socket's timer
COOKIE = struct.Struct("=Q")
COOKIE_AT = NLMSGHDR_LEN + 44
QUEUES = struct.Struct("=II")            # idiag_rqueue, idiag_wqueue
QUEUES_AT = NLMSGHDR_LEN + 56
MSG_MIN_LEN = NLMSGHDR_LEN + 72
DONE_LEN = NLMSGHDR_LEN + 4                 # NLMSG_DONE carries one int

LITTLE_ENDIAN = sys.byteorder == "little"
FAMILY_NAMES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
ADDR_LEN = bytes(16 if i == socket.AF_INET6 else 4 for i in range(256))          # by family byte
ACCEPT_QUEUE_MARK = bytes(1 if i in (states.ESTABLISHED, states.SYN_RECV) else 0 for i in range(256))


def message_offsets(data: bytes, words) -> list:
    """Where each diag message of a chunk starts, found in C: every message header after its
    length word is the same 12 bytes (type, flags, sequence number, port id), so splitting
    on them gives the messages' spans. The offsets are then checked against the length
    words (a payload that happened to contain those 12 bytes fails the check); [] if the
    chunk does not parse this way."""
    marker = data[4:NLMSGHDR_LEN]
    pieces = data.split(marker)
    if len(pieces) < 2 or len(pieces[0]) != 4:
        return []
    # marker k starts at sum(len(pieces[:k+1])) + 12 k; its message 4 bytes before.
    ends = list(accumulate(map((len(marker)).__add__, map(len, pieces))))
    offsets = list(map((-len(marker) - 4).__add__, ends[:-1]))
    if any(map((3).__and__, offsets)):            # netlink messages are 4-byte aligned
        return []
    lengths = gather(list(map((2).__rrshift__, offsets)), words)
    if list(map(sub, offsets[1:], offsets[:-1])) != lengths[:-1] or min(lengths) < MSG_MIN_LEN:
        return []
    if lengths[-1] % 4 or offsets[-1] + lengths[-1] > len(data):
        return []
    return offsets


def swap_port(port: int) -> int:
    """A port read as a native u16 from its big-endian bytes, back to its number (and back)."""
    return int.from_bytes(port.to_bytes(2, "big"), "little") if LITTLE_ENDIAN else port


class InodesAt:
    """Inodes read only where asked: without owners only listeners need theirs."""

    def __init__(self, offsets, words):
        self._offsets, self._words = offsets, words

    def __getitem__(self, i):
        return self._words[(self._offsets[i] + INODE_AT) >> 2]


def gather(indices: list, sequence) -> list:
    """``[sequence[i] for i in indices]`` at C speed (itemgetter), as a list."""
    if not indices:
        return []
    if len(indices) == 1:
        return [sequence[indices[0]]]
    return list(itemgetter(*indices)(sequence))


class Columns(NamedTuple):
    """One chunk's messages read column-wise: an entry per message in each column."""

    offsets: object           # where each message starts (a range when they share a length)
    end: int                  # where the last one ends
    msg_type: int
    states: bytes
    families: bytes
    inodes: object            # a list, or InodesAt when only listeners need theirs
    local_ports: object       # native u16 views of the big-endian ports; None without ports
    remote_ports: object
    done: bool = False        # NLMSG_DONE follows the last message


# The decoder's column-wise reads (inet_diag_decoder.py).
TIME_WAIT_MARK = bytes(i == states.TIME_WAIT for i in range(256))
CLOSE_WAIT_MARK = bytes(i == states.CLOSE_WAIT for i in range(256))
ZERO_MARK = bytes(i == 0 for i in range(256))
HEAD_END = SPORT_AT + 2   # family, state, timer, retrans, local port


def column_of(data: bytes, offsets, field_at: int):
    """The u32 ``field_at`` of every message: a strided view when they share a length."""
    words = memoryview(data).cast("I")
    if isinstance(offsets, range):
        return words[(offsets.start + field_at) // 4:(offsets.stop + field_at) // 4:offsets.step // 4]
    return gather(list(map((field_at // 4).__add__, map((2).__rrshift__, offsets))), words)


WORD, BYTE = "word", "byte"


def picked(data: bytes, offsets, at: list, chosen: list, field_at: int, kind: str) -> list:
    """The u32 (``WORD``) or the byte at ``field_at`` of the chosen messages, which start at
    ``at``: picked from a strided column when the messages share a length."""
    if isinstance(offsets, range):
        column = (column_of(data, offsets, field_at) if kind == WORD
                  else data[offsets.start + field_at:offsets.stop:offsets.step])
        return gather(chosen, column)
    if kind == WORD:
        return gather(list(map((field_at // 4).__add__, map((2).__rrshift__, at))), memoryview(data).cast("I"))
    return gather(list(map(field_at.__add__, at)), data)


def unaccepted_mask(data: bytes, columns) -> bytes:
    """1 for each message of a socket with no inode in a state of an accept queue, else 0.
    When the messages share a length, computed on whole columns as big integers (no Python
    per socket): the OR of the inode's four byte columns is 0 exactly where the inode is."""
    queue = columns.states.translate(ACCEPT_QUEUE_MARK)
    count = len(queue)
    offsets = columns.offsets
    if not isinstance(offsets, range):
        return bytes(map(and_, map((0).__eq__, columns.inodes), queue))
    any_byte = 0
    for i in range(4):
        any_byte |= int.from_bytes(data[offsets.start + INODE_AT + i:offsets.stop:offsets.step], "little")
    no_inode = any_byte.to_bytes(count, "little").translate(ZERO_MARK)
    return (int.from_bytes(no_inode, "little") & int.from_bytes(queue, "little")).to_bytes(count, "little")
