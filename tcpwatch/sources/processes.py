"""Which process holds each socket: socket inode -> process name, from /proc/<pid>/fd.

psutil lists the processes; the fd links are read directly because psutil has no call that
returns a process's socket inodes without parsing /proc/net/tcp for the whole host, the very
cost the inet_diag dump avoids. A socket shared by several processes (a listener inherited
across fork) is given to the lowest pid, usually the parent.
"""

from __future__ import annotations

import os

import psutil

from ..model import SocketOwners

__all__ = ["SocketOwners", "walk_owners"]

_SOCKET_PREFIX = "socket:["


def walk_owners(wanted_inodes, proc_root: str = "/proc") -> SocketOwners:
    """Map each inode in ``wanted_inodes`` (None: every socket) to the comm of the lowest
    pid holding it.

    A process that exits mid-walk is skipped silently (its sockets go with it); one whose fds
    cannot be read for lack of privilege is counted in ``unreadable``.
    """
    result = SocketOwners()
    owners = result.owners
    readlink = os.readlink
    for pid in sorted(psutil.pids()):
        try:
            # Links are read relative to an open fd directory: no path walk per fd.
            fd_dir = os.open(f"{proc_root}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
        except PermissionError:
            result.unreadable += 1
            continue
        except OSError:  # gone, or a kernel thread with no fd table
            continue
        try:
            found = _socket_inodes(fd_dir, wanted_inodes, owners, readlink)
        except PermissionError:   # listing allowed, links not (no CAP_SYS_PTRACE)
            result.unreadable += 1
            continue
        finally:
            os.close(fd_dir)
        if found:
            comm = _comm(proc_root, pid)
            if comm is not None:
                for inode in found:
                    owners[inode] = comm
                    result.pids[inode] = pid
    return result


def _socket_inodes(fd_dir: int, wanted_inodes, owners, readlink) -> list:
    """Inodes of the wanted sockets this fd table holds that no lower pid holds already."""
    found = []
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return found
    for name in names:
        try:
            link = readlink(name, dir_fd=fd_dir)
        except PermissionError:
            raise
        except OSError:   # closed meanwhile
            continue
        if link.startswith(_SOCKET_PREFIX):
            inode = int(link[8:-1])
            if (wanted_inodes is None or inode in wanted_inodes) and inode not in owners:
                found.append(inode)
    return found


def _comm(proc_root: str, pid: int):
    """The kernel's 15-byte task name; bytes that are not UTF-8 are replaced, never dropped."""
    try:
        with open(f"{proc_root}/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", errors="replace")
    except OSError:
        return None
