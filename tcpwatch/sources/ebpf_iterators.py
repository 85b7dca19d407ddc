"""The program's BPF iterators, read at scrape time: one fresh fd per pass, read to its end.

Two iterators (tcpstates.c): ``socket_owners`` (iter/task_file: who holds each socket) and
``socket_diag`` (iter/tcp: every TCP socket of one namespace, as inet_diag would report it).
An iterator fd walks the network namespace of the thread that creates it; it can then be
read from any thread, so only ``open`` needs to run inside the namespace.
"""

from __future__ import annotations

import os
import struct

from ..model import DiagSnapshot, DumpWants
from . import ebpf_syscall as sys_bpf
from .inet_diag_decoder import Decoder
from .inet_diag_layout import DONE_LEN, NLMSG_DONE

READ_BYTES = 1 << 20
# What ends an inet_diag dump: NLMSG_DONE (multi-part flag set), carrying one int.
_DONE = struct.pack("=IHHIIi", DONE_LEN, NLMSG_DONE, 2, 0, 0, 0)


def start(link: int, what: str) -> int:
    """A new pass of the iterator linked at ``link``; OSError when the kernel refuses it."""
    try:
        return sys_bpf.iter_create(link)
    except sys_bpf.BpfCallFailed as exc:
        raise OSError(exc.errno, f"cannot start the {what} iterator: {exc.strerror}") from None


def read_to_end(fd: int) -> bytes:
    """Everything one pass writes; closes ``fd``."""
    chunks = []
    try:
        while True:
            chunk = os.read(fd, READ_BYTES)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


class SocketIterator:
    """Counting by iter/tcp: the same DiagSnapshot as an inet_diag dump (sources/inet_diag.py),
    decoded by the same Decoder, from records the program writes in inet_diag's layout."""

    source = "ebpf_iterator"

    def __init__(self, link: int):
        self._link = link

    def open(self) -> int:
        """Call from a thread inside the namespace to walk."""
        if self._link is None:   # never touch a link fd that was closed: it may be reused
            raise OSError("the socket iterator is detached")
        return start(self._link, "socket")

    def close(self) -> None:
        self._link = None

    def dump(self, fd: int, wants: DumpWants, netns_inode: int = 0) -> DiagSnapshot:
        """Read the pass ``open`` started (from any thread) into a DiagSnapshot."""
        return decode(read_to_end(fd), wants, netns_inode)


def decode(records: bytes, wants: DumpWants, netns_inode: int = 0) -> DiagSnapshot:
    """One pass's records (inet_diag's layout, without the dump's end) as a DiagSnapshot."""
    snap = DiagSnapshot(netns_inode=netns_inode)
    Decoder(snap, wants).feed(records + _DONE)
    return snap
