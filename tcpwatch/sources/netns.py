"""Every network namespace on the host, and a way to read each one's sockets and counters.

Discovery: the namespace of every process (``/proc/PID/ns/net``, one stat per process; a
host has thousands of processes and few namespaces) plus the bind-mounted ones that
``ip netns add`` makes (``/run/netns``), deduplicated by inode.

Reading: inet_diag answers for the namespace its netlink socket was created in, and
``/proc/thread-self/net/*`` and ``/proc/sys/net/*`` for the namespace of the thread that
opened them. So for each namespace this module enters it once with ``setns`` (needs
CAP_SYS_ADMIN), opens a netlink socket and the counter files there, and returns at once;
later scrapes reuse those handles, with no setns at all. The handles hold a reference on
the namespace, so they are closed as soon as discovery stops finding it: tcpwatch never
keeps a dead namespace alive.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
from dataclasses import dataclass, field

from . import inet_diag

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
NAMED_NETNS_DIR = "/run/netns"
PIDS_KEPT = 8   # pids remembered per namespace, lowest first: enough to name it

# Counter files read per namespace, opened inside it (see the module docstring).
COUNTER_FILES = {"netstat": "/proc/thread-self/net/netstat", "snmp": "/proc/thread-self/net/snmp"}
PORT_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


@dataclass
class NetnsRef:
    """One namespace found on the host: its inode and how to reach it."""

    inode: int
    pids: list = field(default_factory=list)       # lowest first, at most PIDS_KEPT
    processes: int = 0                             # processes in it
    bind_names: list = field(default_factory=list)  # names under /run/netns

    def paths(self, proc_root: str, named_dir: str) -> list:
        return ([f"{proc_root}/{pid}/ns/net" for pid in self.pids]
                + [f"{named_dir}/{name}" for name in self.bind_names])


@dataclass
class Discovery:
    namespaces: dict = field(default_factory=dict)   # inode -> NetnsRef
    host_inode: int = 0          # PID 1's namespace, or ours when PID 1's cannot be read
    own_inode: int = 0           # the namespace tcpwatch runs in


def discover(proc_root: str = "/proc", named_dir: str = NAMED_NETNS_DIR) -> Discovery:
    """Every namespace a process is in, plus the bind-mounted ones."""
    found = Discovery(own_inode=_inode(f"{proc_root}/thread-self/ns/net") or _inode(f"{proc_root}/self/ns/net"))
    refs = found.namespaces
    stat = os.stat
    names = os.listdir(proc_root)   # no /proc (or no fd left to list it): discovery fails
    pids = sorted(int(name) for name in names if name.isdigit())
    for pid in pids:
        try:
            inode = stat(f"{proc_root}/{pid}/ns/net").st_ino
        except OSError:   # exited, a kernel thread, or not ours to see
            continue
        ref = refs.get(inode)
        if ref is None:
            ref = refs[inode] = NetnsRef(inode)
        ref.processes += 1
        if len(ref.pids) < PIDS_KEPT:
            ref.pids.append(pid)
    try:
        bound = sorted(os.listdir(named_dir))
    except OSError:
        bound = []
    for name in bound:
        inode = _inode(f"{named_dir}/{name}")
        if inode:   # a file there that is not (or no longer) a namespace mount has another fs's inode
            refs.setdefault(inode, NetnsRef(inode)).bind_names.append(name)
    host = _inode(f"{proc_root}/1/ns/net")
    found.host_inode = host if host in refs else found.own_inode
    if found.own_inode and found.own_inode not in refs:
        refs[found.own_inode] = NetnsRef(found.own_inode)
    return found


def _inode(path: str) -> int:
    try:
        st = os.stat(path)
    except OSError:
        return 0
    return st.st_ino if st.st_dev == _nsfs_dev() else 0


_NSFS_DEV = []


def _nsfs_dev() -> int:
    """Device number of nsfs: an inode only names a namespace on that filesystem."""
    if not _NSFS_DEV:
        try:
            _NSFS_DEV.append(os.stat("/proc/self/ns/net").st_dev)
        except OSError:
            _NSFS_DEV.append(-1)
    return _NSFS_DEV[0]


class NamespaceGone(OSError):
    """The namespace ended (or its processes exited) before it could be entered."""


class NoPrivilege(OSError):
    """setns was refused: tcpwatch lacks CAP_SYS_ADMIN."""


@dataclass
class Handles:
    """What tcpwatch keeps open in one namespace, created there once."""

    inode: int
    diag: object                 # a NETLINK_SOCK_DIAG socket
    files: dict                  # name -> fd of a counter file
    port_range: int = -1         # fd of ip_local_port_range, -1 if it could not be opened
    cookie: int = 0              # the namespace's cookie (never reused); 0: unknown (Linux < 5.14)
    ns_fd: int = -1              # the namespace itself, to enter again (-1: tcpwatch's own)

    def close(self) -> None:
        self.diag.close()
        for fd in list(self.files.values()) + [fd for fd in (self.port_range, self.ns_fd) if fd >= 0]:
            os.close(fd)
        self.files = {}
        self.port_range = self.ns_fd = -1

    def read_file(self, name: str) -> str:
        return _pread_all(self.files[name])

    def ephemeral_ports(self) -> int:
        if self.port_range < 0:
            raise OSError(errno.ENOENT, "ip_local_port_range is not readable in this namespace")
        low, high = (int(v) for v in _pread_all(self.port_range).split())
        return max(0, high - low + 1)


def _pread_all(fd: int) -> str:
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 65536, offset)
        if not chunk:
            return b"".join(chunks).decode()
        chunks.append(chunk)
        offset += len(chunk)


class Reader:
    """Opens and keeps the handles of each namespace; closes those of namespaces gone."""

    def __init__(self, proc_root: str = "/proc", named_dir: str = NAMED_NETNS_DIR):
        self._proc_root = proc_root
        self._named_dir = named_dir
        self._handles = {}
        self._own_fd = os.open(f"{proc_root}/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._own_inode = os.fstat(self._own_fd).st_ino
        self._libc = ctypes.CDLL(None, use_errno=True)

    def handles(self, ref: NetnsRef) -> Handles:
        """The handles of ``ref``'s namespace, opening them on first use.

        Raises NoPrivilege when setns is refused, NamespaceGone when no path to the
        namespace still leads to it (its processes exited, its mount went).
        """
        handles = self._handles.get(ref.inode)
        if handles is None:
            handles = self._handles[ref.inode] = self._open(ref)
        return handles

    def _open(self, ref: NetnsRef) -> Handles:
        if ref.inode == self._own_inode:
            return _open_here(ref.inode)
        for path in ref.paths(self._proc_root, self._named_dir):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if os.fstat(fd).st_ino != ref.inode:   # the pid was reused meanwhile
                    continue
                handles = self._open_inside(fd, ref.inode)
                handles.ns_fd, fd = fd, -1   # kept: the socket iterator enters it at each scrape
                return handles
            finally:
                if fd >= 0:
                    os.close(fd)
        raise NamespaceGone(errno.ENOENT, f"network namespace {ref.inode} is gone")

    def _open_inside(self, ns_fd: int, inode: int) -> Handles:
        return self._inside(ns_fd, _open_here, inode)

    def inside(self, handles: Handles, call):
        """``call()`` run by this thread inside the namespace of ``handles``."""
        return call() if handles.ns_fd < 0 else self._inside(handles.ns_fd, call)

    def _inside(self, ns_fd: int, call, *args):
        if self._libc.setns(ns_fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            if err == errno.EPERM:
                raise NoPrivilege(err, "setns into another network namespace was refused (needs CAP_SYS_ADMIN)")
            raise OSError(err, f"setns: {os.strerror(err)}")
        try:
            return call(*args)
        finally:
            if self._libc.setns(self._own_fd, CLONE_NEWNET) != 0:
                # This thread would go on dumping the wrong namespace: never carry on.
                err = ctypes.get_errno()
                log.critical("cannot return to tcpwatch's own network namespace", extra={"error": os.strerror(err)})
                os.abort()

    def retire(self, live_inodes) -> int:
        """Close the handles of namespaces no longer found; returns how many were closed."""
        gone = [inode for inode in self._handles if inode not in live_inodes]
        for inode in gone:
            self._handles.pop(inode).close()
        return len(gone)

    def drop(self, inode: int) -> None:
        """Forget one namespace's handles (its read failed; the next scrape reopens them)."""
        handles = self._handles.pop(inode, None)
        if handles is not None:
            handles.close()

    @property
    def own_inode(self) -> int:
        return self._own_inode

    def close(self) -> None:
        self.retire(())
        os.close(self._own_fd)


def _open_here(inode: int) -> Handles:
    """Open the handles in the namespace this thread is in now."""
    diag = inet_diag.open_socket()
    files = {}
    port_range = -1
    try:
        for name, path in COUNTER_FILES.items():
            try:
                files[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                log.debug("counter file not readable", extra={"file": path, "error": str(exc)})
        try:
            port_range = os.open(PORT_RANGE_FILE, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass
    except BaseException:
        diag.close()
        for fd in files.values():
            os.close(fd)
        raise
    return Handles(inode, diag, files, port_range, netns_cookie(diag))


SO_NETNS_COOKIE = 71   # include/uapi/asm-generic/socket.h, Linux 5.14+


def netns_cookie(sock) -> int:
    """The cookie of the namespace ``sock`` was made in: unlike its inode, never handed out
    twice. Handles are kept open from a namespace's discovery until it is gone, which pins
    the namespace, so its inode cannot pass to another one while its handles are cached;
    when they are retired and the inode shows up again, new handles read the new cookie."""
    try:
        return struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
    except OSError:
        return 0


def parse_counters(text: str, wanted=None) -> dict:
    """``/proc/net/netstat`` or ``/proc/net/snmp`` as {"TcpExt": {"ListenOverflows": n}, ...}.

    Both files are pairs of lines: a header of names, then a line of values, each starting
    with the same "Group:" word. ``wanted`` ({group: names}): keep only those.
    """
    groups = {}
    lines = text.splitlines()
    for header, values in zip(lines[::2], lines[1::2]):
        names, numbers = header.split(), values.split()
        if not names or names[0] != numbers[0] or not names[0].endswith(":"):
            continue
        keep = wanted.get(names[0][:-1]) if wanted is not None else None
        if wanted is not None and keep is None:
            continue
        group = groups.setdefault(names[0][:-1], {})
        for name, number in zip(names[1:], numbers[1:]):
            if keep is not None and name not in keep:
                continue
            try:
                group[name] = int(number)
            except ValueError:
                continue
    return groups
