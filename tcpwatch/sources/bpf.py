"""TCP state transitions and time in state from the eBPF program in ``bpf/tcpstates.c``.

The facade its callers use (cli, doctor, trace, tests, benches), over three parts:
  ebpf_layout.py what the program reads from the kernel: struct fields and tracepoints (BTF)
  ebpf_plan.py   what will be tried: -D flags, kernel offsets from BTF, attach attempts (no bcc)
  ebpf_load.py   compile with bcc and attach; owns the fds (the only module importing bcc)
  ebpf_compile.py  the same in a short-lived child that passes the fds back (the daemon's way)
  ebpf_maps.py   the maps, read at scrape time (per-CPU values summed, nothing per event)
Two attach modes: tp_btf (BTF-typed raw tracepoints) and the classic tracepoints, the fallback.
"""

from __future__ import annotations

import logging

from . import btf, ebpf_compile, ebpf_iterators, ebpf_load, ebpf_maps
from .ebpf_load import OWNER_ITERATOR, SOCKET_ITERATOR
from .ebpf_load import (TRACEFS, TRACEPOINT, attach_tp_btf, bcc_importable, check_capabilities,  # noqa: F401
                        check_tracefs, effective_capabilities, missing_capabilities, program_text)
from .ebpf_maps import TraceEvent, tuple_key  # noqa: F401
from .ebpf_layout import (COOKIE_FIELDS, FIELDS, OWNER_FIELDS, TP_BTF_HOOKS, TP_BTF_TIMER_HOOKS, kernel_layout,  # noqa: F401
                          owner_layout)
from .ebpf_plan import (ATTACH_MODES, DEFAULT_MAX_NETNS, AttachChoice, AttachModeUnavailable,  # noqa: F401
                        BpfUnavailable, Request, kernel_symbol, make_plan)
from ..model import BpfReading, SocketOwners

log = logging.getLogger(__name__)


class BpfProgram:
    """The loaded program. ``close()`` detaches everything; call it, atexit does not run on signals.

    By default bcc compiles in a short-lived child (ebpf_compile.py) and this process keeps
    only the fds: it never maps LLVM. ``in_process=True`` compiles here instead (trace reads
    its events through bcc's perf buffer; the benches reattach programs)."""

    def __init__(self, max_sockets: int = 65536, port_range=None, track_time_wait: bool = True,
                 emit_events: bool = False, attach: str = "auto", max_netns: int = DEFAULT_MAX_NETNS,
                 btf_path: str = btf.VMLINUX, owner_iterator: bool = False, in_process: bool = False,
                 socket_iterator: bool = False):
        request = Request(max_sockets, port_range, track_time_wait, emit_events, attach, max_netns,
                          btf_path, owner_iterator, socket_iterator)
        plan = make_plan(request)
        for message, extra in plan.notes:
            log.warning(message, extra=extra)
        if in_process:
            self.loaded = ebpf_load.load_here(request, plan)
            ebpf_load.release_compiler_memory()
        else:
            check_capabilities()
            self.loaded = ebpf_compile.load_in_child(request, plan)
        for level, message, extra in self.loaded.notes:
            log.log(logging.WARNING if level == "warning" else logging.INFO, message, extra=extra)
        self.attach: AttachChoice = self.loaded.attach
        self.headers = plan.headers
        self.time_wait_tracked = plan.time_wait_tracked
        self.seq_numbers = plan.seq_numbers   # trace events carry sequence numbers
        self.max_netns = plan.max_netns
        self.socket_slots = plan.socket_slots
        try:
            iterators = self.loaded.iterators
            self._maps = ebpf_maps.ProgramMaps(self.loaded.maps(), self.attach, iterators.get(OWNER_ITERATOR),
                                               plan.socket_slots, plan.max_netns)
            link = iterators.get(SOCKET_ITERATOR)
            self.socket_iterator = ebpf_iterators.SocketIterator(link) if link is not None else None
            self.no_socket_iterator = "" if link is not None else (plan.no_socket_iterator or next(
                (extra.get("reason", "") for _level, message, extra in self.loaded.notes
                 if message == ebpf_load.ITERATOR_FALLBACKS[SOCKET_ITERATOR]), "not requested"))
        except Exception:
            self.loaded.close()
            raise
        self._events_open = False
        self._closed = False

    @property
    def bpf(self):
        """bcc's module when compiled in this process, else None."""
        return self.loaded.bpf

    @property
    def has_owner_iterator(self) -> bool:
        """The socket-owner iterator is attached: ``socket_owners`` works."""
        return not self._closed and self._maps.has_owner_iterator

    def _check_open(self) -> None:
        if self._closed:   # never touch map fds that were closed: they may be reused
            raise BpfUnavailable("the eBPF program is detached")

    def read(self) -> BpfReading:
        self._check_open()
        reading = self._maps.read()
        reading.headers = self.headers
        return reading

    def release_stale_netns(self, live_keys, live_inodes=()) -> int:
        """Give back the slots of namespaces that are gone (ebpf_maps.StaleSlots' rule)."""
        self._check_open()
        return self._maps.release_stale_netns(live_keys, live_inodes)

    def socket_owners(self, wanted_inodes=None) -> SocketOwners:
        if not self.has_owner_iterator:
            raise BpfUnavailable("the socket-owner iterator is not attached")
        return self._maps.socket_owners(wanted_inodes)

    def poll_events(self, callback, timeout_ms: int = 200) -> None:
        """For ``tcpwatch trace`` only (in_process=True): per-event output through bcc's
        perf buffer."""
        import ctypes

        if not self._events_open:
            def decode(cpu, data, size):
                callback(ctypes.cast(data, ctypes.POINTER(TraceEvent)).contents)

            self.bpf[b"events"].open_perf_buffer(decode)
            self._events_open = True
        self.bpf.perf_buffer_poll(timeout=timeout_ms)

    def close(self) -> None:
        self._closed = True
        if self.socket_iterator is not None:
            self.socket_iterator.close()
        self._maps.close()
        self.loaded.close()
