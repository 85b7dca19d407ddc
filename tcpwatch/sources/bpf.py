"""TCP state transitions and time in state from the eBPF program in ``bpf/tcpstates.c``.

The facade its callers use (cli, doctor, trace, tests, benches), over three parts:
  ebpf_layout.py what the program reads from the kernel: struct fields and tracepoints (BTF)
  ebpf_plan.py   what will be tried: -D flags, kernel offsets from BTF, attach attempts (no bcc)
  ebpf_load.py   compile with bcc and attach; owns the fds (the only module importing bcc)
  ebpf_maps.py   the maps, read at scrape time (per-CPU values summed, nothing per event)
Two attach modes: tp_btf (BTF-typed raw tracepoints) and the classic tracepoints, the fallback.
"""

from __future__ import annotations

import logging

from . import btf, ebpf_load, ebpf_maps
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
    """The loaded program. ``close()`` detaches everything; call it, atexit does not run on signals."""

    def __init__(self, max_sockets: int = 65536, port_range=None, track_time_wait: bool = True,
                 emit_events: bool = False, attach: str = "auto", max_netns: int = DEFAULT_MAX_NETNS,
                 btf_path: str = btf.VMLINUX, owner_iterator: bool = False):
        request = Request(max_sockets, port_range, track_time_wait, emit_events, attach, max_netns,
                          btf_path, owner_iterator)
        plan = make_plan(request)
        for message, extra in plan.notes:
            log.warning(message, extra=extra)
        self.loaded = ebpf_load.load(request, plan)
        self.attach: AttachChoice = self.loaded.attach
        self.time_wait_tracked = plan.time_wait_tracked
        self.max_netns = plan.max_netns
        self.socket_slots = plan.socket_slots
        try:
            self._maps = ebpf_maps.ProgramMaps(self.loaded, self.attach.mode, plan.socket_slots, plan.max_netns)
        except Exception:
            self.loaded.close()
            raise
        self._events_open = False

    @property
    def bpf(self):
        """bcc's module, or None once closed."""
        return self.loaded.bpf

    @property
    def has_owner_iterator(self) -> bool:
        """The socket-owner iterator is attached: ``socket_owners`` works."""
        return self.bpf is not None and self._maps.has_owner_iterator

    def _check_open(self) -> None:
        if self.bpf is None:   # never touch map fds that were closed: they may be reused
            raise BpfUnavailable("the eBPF program is detached")

    def read(self) -> BpfReading:
        self._check_open()
        return self._maps.read()

    def release_stale_netns(self, live_keys, live_inodes=()) -> int:
        """Give back the slots of namespaces that are gone (ebpf_maps.StaleSlots' rule)."""
        self._check_open()
        return self._maps.release_stale_netns(live_keys, live_inodes)

    def socket_owners(self, wanted_inodes=None) -> SocketOwners:
        if not self.has_owner_iterator:
            raise BpfUnavailable("the socket-owner iterator is not attached")
        return self._maps.socket_owners(wanted_inodes)

    def poll_events(self, callback, timeout_ms: int = 200) -> None:
        """For ``tcpwatch trace`` only: per-event output through the perf buffer."""
        import ctypes

        if not self._events_open:
            def decode(cpu, data, size):
                callback(ctypes.cast(data, ctypes.POINTER(TraceEvent)).contents)

            self.bpf[b"events"].open_perf_buffer(decode)
            self._events_open = True
        self.bpf.perf_buffer_poll(timeout=timeout_ms)

    def close(self) -> None:
        self._maps.close()
        self.loaded.close()
