"""bpf(2) for the calls bcc 0.26 cannot make for us, and for reading maps without bcc.

Loading tp_btf and iterator programs (bcc derives a tracing program's attach type from its
name prefix and has none for these), attaching them, making an iterator's readable fd, and
looking up or updating one map element by its fd. ctypes only: no bcc here.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct

log = logging.getLogger("tcpwatch.sources.bpf")

SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_LINK_CREATE = 28
BPF_ITER_CREATE = 33
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_RAW_TP = 23
BPF_TRACE_ITER = 28

_libc = ctypes.CDLL(None, use_errno=True)


class BpfCallFailed(OSError):
    """A bpf(2) call failed; errno and its text say why."""


def bpf(command: int, attr, size: int) -> int:
    """One bpf(2) call: its result, or BpfCallFailed with errno."""
    result = _libc.syscall(SYS_BPF, command, attr, size)
    if result < 0:
        error = ctypes.get_errno()
        raise BpfCallFailed(error, os.strerror(error))
    return result


def map_lookup(map_fd: int, key, value) -> None:
    """Copy the element at ``key`` (a ctypes object) into ``value`` (a ctypes buffer)."""
    attr = ctypes.create_string_buffer(struct.pack("IIQQQ", map_fd, 0, ctypes.addressof(key),
                                                   ctypes.addressof(value), 0), 32)
    bpf(BPF_MAP_LOOKUP_ELEM, attr, 32)


def map_update(map_fd: int, key, value) -> None:
    """Write ``value`` at ``key`` (BPF_ANY)."""
    attr = ctypes.create_string_buffer(struct.pack("IIQQQ", map_fd, 0, ctypes.addressof(key),
                                                   ctypes.addressof(value), 0), 32)
    bpf(BPF_MAP_UPDATE_ELEM, attr, 32)


def map_delete(map_fd: int, key) -> None:
    attr = ctypes.create_string_buffer(struct.pack("IIQQQ", map_fd, 0, ctypes.addressof(key), 0, 0), 32)
    bpf(BPF_MAP_DELETE_ELEM, attr, 32)


def map_push(map_fd: int, value) -> None:
    """Push ``value`` on a queue map (an update with no key)."""
    attr = ctypes.create_string_buffer(struct.pack("IIQQQ", map_fd, 0, 0, ctypes.addressof(value), 0), 32)
    bpf(BPF_MAP_UPDATE_ELEM, attr, 32)


def map_keys(map_fd: int, key_size: int) -> list:
    """Every key of a hash map, as bytes. A key deleted meanwhile makes the kernel start
    over; keys already seen end the walk, so it is bounded by the map's size."""
    keys, seen = [], set()
    key, following = None, ctypes.create_string_buffer(key_size)
    while True:
        attr = ctypes.create_string_buffer(struct.pack(
            "IIQQQ", map_fd, 0, ctypes.addressof(key) if key is not None else 0, ctypes.addressof(following), 0), 32)
        try:
            bpf(BPF_MAP_GET_NEXT_KEY, attr, 32)
        except BpfCallFailed as exc:
            if exc.errno == errno.ENOENT:
                return keys
            raise
        if following.raw in seen:
            return keys
        seen.add(following.raw)
        keys.append(following.raw)
        key = ctypes.create_string_buffer(following.raw, key_size)


def raw_tracepoint_open(prog_fd: int) -> int:
    """Attach a tp_btf program (its tracepoint is in the program): the link fd."""
    attr = ctypes.create_string_buffer(struct.pack("QI", 0, prog_fd), 16)
    return bpf(BPF_RAW_TRACEPOINT_OPEN, attr, 16)


def link_create_iterator(prog_fd: int) -> int:
    """Attach an iterator program: the link fd that BPF_ITER_CREATE reads from."""
    attr = ctypes.create_string_buffer(struct.pack("IIII", prog_fd, 0, BPF_TRACE_ITER, 0), 64)
    return bpf(BPF_LINK_CREATE, attr, 64)


def iter_create(link_fd: int) -> int:
    """A new readable fd: one pass of the iterator, read to its end."""
    attr = ctypes.create_string_buffer(struct.pack("II", link_fd, 0), 8)
    return bpf(BPF_ITER_CREATE, attr, 8)


class ProgramRefused(Exception):
    """The kernel refused a program; the message says why in one line."""


def load_tracing(instructions: bytes, name: str, attach_type: int, btf_id: int) -> int:
    """Load compiled instructions as a BTF-typed tracing program (tp_btf: BPF_TRACE_RAW_TP on
    a btf_trace_ typedef; an iterator: BPF_TRACE_ITER on a bpf_iter_ function); its fd, or
    ProgramRefused with the verifier's last words."""
    kind = "tp_btf" if attach_type == BPF_TRACE_RAW_TP else "an iterator"
    code = ctypes.create_string_buffer(instructions, len(instructions))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)   # union bpf_attr, BPF_PROG_LOAD part (Linux 5.5+)

    def attempt(log_buffer=None) -> int:
        struct.pack_into("IIQQ", attr, 0, BPF_PROG_TYPE_TRACING, len(instructions) // 8,
                         ctypes.addressof(code), ctypes.addressof(license_))
        if log_buffer is not None:
            struct.pack_into("IIQ", attr, 24, 1, len(log_buffer), ctypes.addressof(log_buffer))
        attr[48:64] = name[:15].encode().ljust(16, b"\0")       # prog_name, for bpftool
        struct.pack_into("I", attr, 68, attach_type)              # expected_attach_type
        struct.pack_into("I", attr, 108, btf_id)                 # attach_btf_id
        return _libc.syscall(SYS_BPF, BPF_PROG_LOAD, attr, len(attr))

    fd = attempt()
    if fd >= 0:
        return fd
    error = ctypes.get_errno()
    if error == errno.EPERM:   # no privilege; EACCES and EINVAL come with a verifier log
        raise ProgramRefused(f"the kernel refused to load {name} as {kind}: {os.strerror(error)}")
    verifier = ctypes.create_string_buffer(1 << 20)
    retry = attempt(verifier)
    if retry >= 0:
        return retry
    lines = [line for line in verifier.value.decode(errors="replace").splitlines() if line.strip()]
    log.debug("verifier log", extra={"program": name, "log": "\n".join(lines[-60:])})
    last = next((line for line in reversed(lines) if "processed" not in line), os.strerror(error))
    raise ProgramRefused(f"the verifier refused {name} as {kind}: {last.strip()}")


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """How many CPUs per-CPU maps hold a value for ("0-3,8" lists 5)."""
    with open(path) as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count
