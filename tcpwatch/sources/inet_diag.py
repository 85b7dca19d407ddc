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
import socket
import struct

from pyroute2.netlink import NETLINK_SOCK_DIAG, NLM_F_DUMP, NLM_F_REQUEST

from .. import states
from ..model import DiagSnapshot, DumpWants
from .inet_diag_decoder import Decoder, DumpError  # noqa: F401 (DumpError: callers')
from .inet_diag_layout import TCPDIAG_GETSOCK

_RECV_BYTES = 64 * 1024                   # the kernel fills at most ~32 KiB per dump chunk
# Random first number: the chunk splitter's marker holds it, so a peer cannot predict it.
_sequence = itertools.count(random.randrange(1, 1 << 30))
# struct inet_diag_req: family, src_len, dst_len, ext, inet_diag_sockid (48 bytes), states, dbs
_V1_REQUEST = struct.Struct("=IHHIIBBBB48sII")


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
