"""What loading the eBPF program will try, decided without bcc and without root.

From the settings and the running kernel (its BTF, /proc/kallsyms, the pid namespace, the
tick) this module makes a ``Plan``: the -D flags (settings, and every kernel struct offset
of ebpf_layout.py, taken from BTF, never from headers), the ordered attach attempts (tp_btf, then the classic
tracepoints) with the reason each would be used for, the tp_btf hooks and their BTF ids,
and whether the socket-owner iterator is compiled in. ``Environment`` carries the kernel
facts so that tests give a fake or saved BTF. The checks of the eBPF flags live here only
(config.py calls them).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from .. import histograms
from . import btf
from .ebpf_layout import (TP_BTF_HOOKS, TP_BTF_TIMER_HOOKS, cookie_layout, kernel_layout, owner_layout,
                          seq_layout, socket_layout)

ATTACH_MODES = ("auto", "tp_btf", "tracepoint")
# Where bcc finds the few headers it includes: tcpwatch's own tree (bpf/headers, 2 KB) where
# the kernel has BTF, since the program takes no layout from headers; the kernel's headers
# (/lib/modules/$(uname -r)/build) on kernels without BTF, as bcc does by default.
BUNDLED, KERNEL_HEADERS = "bundled", "kernel"
MAX_SOCKETS_RANGE = (1, 1 << 24)     # --collector.bpf.max-sockets: LRU map entries
MAX_NETNS_RANGE = (2, 1 << 16)       # --collector.bpf.max-netns: slot 0 is for the unknown
DEFAULT_MAX_NETNS = 128
TCP_TIMEWAIT_LEN_NS = 60 * 10**9     # include/net/tcp.h: TCP_TIMEWAIT_LEN, the timewait timer's span
CLOCK_MONOTONIC_COARSE = 6           # its resolution is the kernel's tick: 1/HZ
PROC_PID_INIT_INO = 0xEFFFFFFC       # include/linux/proc_ns.h: the initial pid namespace's inode

class BpfUnavailable(Exception):
    """The program cannot be loaded here; the message says why in one line."""


class AttachModeUnavailable(BpfUnavailable):
    """The attach mode the operator asked for cannot be used here (bad input: exit 2)."""


def check_attach(attach: str) -> None:
    """ValueError unless ``attach`` is an attach mode."""
    if attach not in ATTACH_MODES:
        raise ValueError(f"{attach!r} must be one of {', '.join(ATTACH_MODES)}")


def check_range(value: int, limits: tuple) -> None:
    """ValueError unless lo <= ``value`` <= hi, for ``limits`` = (lo, hi)."""
    lo, hi = limits
    if isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{value!r} must be from {lo} to {hi}")


def check_limits(max_sockets: int, max_netns: int, attach: str) -> None:
    """The eBPF flags' one check (config.py uses its parts): ValueError naming the flag."""
    check_attach(attach)
    for flag, value, limits in (("--collector.bpf.max-sockets", max_sockets, MAX_SOCKETS_RANGE),
                                ("--collector.bpf.max-netns", max_netns, MAX_NETNS_RANGE)):
        try:
            check_range(value, limits)
        except ValueError as exc:
            raise ValueError(f"{flag} {exc}") from None


def kernel_symbol(name: str, path: str = "/proc/kallsyms"):
    """Address of a kernel function from /proc/kallsyms, or None when hidden (kptr_restrict)."""
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == name:
                    return int(parts[0], 16) or None
    except OSError:
        return None
    return None


def in_initial_pid_namespace() -> bool:
    """The iterator reports pids as the initial pid namespace numbers them: only usable
    where tcpwatch (and so its /proc) numbers them the same way."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino == PROC_PID_INIT_INO
    except OSError:
        return False


def _tick_ns() -> int:
    return round(time.clock_getres(CLOCK_MONOTONIC_COARSE) * 1e9)   # one jiffy


@dataclass
class Environment:
    """The kernel facts a plan depends on; tests replace them."""

    load_btf: Callable = btf.Btf.load              # path -> Btf, or btf.BtfError
    symbol: Callable = kernel_symbol               # name -> address or None
    initial_pid_namespace: Callable = in_initial_pid_namespace
    tick_ns: Callable = _tick_ns


@dataclass(frozen=True)
class AttachChoice:
    """The attach mode in use and why: ``reason`` is one word, for a label."""

    mode: str      # tp_btf or tracepoint
    reason: str    # requested, btf, no_btf, tp_btf_refused
    detail: str = ""


@dataclass(frozen=True)
class Attempt:
    """One way to load the program: its attach mode, why it would be used, and for tp_btf
    the functions to attach with the BTF id of each one's tracepoint."""

    mode: str                 # tp_btf or tracepoint
    reason: str               # requested, btf, no_btf, tp_btf_refused (the attach_info label)
    cflags: tuple
    hooks: tuple = ()         # ((function, BTF id), ...), tp_btf only
    detail: str = ""          # why the preferred mode is not used, for the log


@dataclass
class Plan:
    attempts: list                      # tried in order until one loads
    socket_slots: int                   # rows of socket_table (tp_btf), a power of two
    max_netns: int
    time_wait_tracked: bool
    owner_iterator_id: Optional[int] = None   # BTF id of bpf_iter_task_file, when compiled in
    no_owner_iterator: str = ""               # why not, when owners were wanted
    socket_iterator_id: Optional[int] = None  # BTF id of bpf_iter_tcp, when compiled in
    no_socket_iterator: str = ""              # why not, when it was wanted
    layout_error: str = ""                    # why BTF could not describe the program
    netns_by_cookie: bool = False             # slots keyed by net_cookie (else by inode)
    seq_numbers: bool = False                 # trace events carry tcp_sock's sequence numbers
    headers: str = BUNDLED                    # what bcc compiles against: bundled, or kernel (no BTF)
    notes: list = field(default_factory=list)   # (message, extra) warnings for the log


@dataclass(frozen=True)
class Request:
    """What the caller asks of the program (the flags, or trace's and doctor's needs)."""

    max_sockets: int = 65536
    port_range: Optional[tuple] = None     # (lo, hi): time only these ports
    track_time_wait: bool = True
    emit_events: bool = False              # tcpwatch trace: every event through a perf buffer
    attach: str = "auto"
    max_netns: int = DEFAULT_MAX_NETNS
    btf_path: str = btf.VMLINUX
    owner_iterator: bool = False
    socket_iterator: bool = False          # count sockets with iter/tcp (else inet_diag)


def make_plan(request: Request, env: Environment = Environment()) -> Plan:
    """The Plan for ``request`` on this kernel. AttachModeUnavailable for an attach mode that
    cannot work here, BpfUnavailable for a flag out of range."""
    try:
        check_attach(request.attach)
    except ValueError as exc:
        raise AttachModeUnavailable(f"unknown attach mode: {exc}") from None
    try:
        check_limits(request.max_sockets, request.max_netns, request.attach)
    except ValueError as exc:
        raise BpfUnavailable(str(exc)) from None
    slots = 1 << (request.max_sockets - 1).bit_length()
    cflags = [f"-DMAX_SOCKETS={request.max_sockets}", f"-DMAX_NETNS={request.max_netns}",
              "-Wno-macro-redefined", f"-DSOCKET_SLOTS={slots}",
              f"-DHIST_FIRST={histograms.FIRST_SLOT}", f"-DHIST_LAST={histograms.LAST_SLOT}"]
    if request.port_range:
        cflags += [f"-DPORT_MIN={request.port_range[0]}", f"-DPORT_MAX={request.port_range[1]}"]
    offsets, ids, layout_error = {}, {}, ""
    try:
        offsets, ids = kernel_layout(request.btf_path, load=env.load_btf)
    except btf.BtfError as exc:
        layout_error = str(exc)
    plan = Plan([], slots, request.max_netns, False, layout_error=layout_error,
                headers=KERNEL_HEADERS if layout_error else BUNDLED)
    cflags += _time_wait_flags(request, env, plan)
    if request.emit_events:
        cflags += ["-DEMIT_EVENTS"] + _seq_flags(request, env, plan)
    if request.owner_iterator:
        cflags += _owner_iterator_flags(request, env, plan)
    if request.socket_iterator:
        cflags += _socket_iterator_flags(request, env, plan)
    if offsets:
        cflags += _cookie_flags(request, env, plan)
    cflags += [f"-D{name}={value}" for name, value in offsets.items()]
    plan.attempts = _attempts(request, plan, cflags, ids)
    return plan


def _time_wait_flags(request: Request, env: Environment, plan: Plan) -> list:
    """TIME_WAIT timing needs the timewait timer's handler address and BTF offsets."""
    if not request.track_time_wait:
        return []
    handler = env.symbol("tw_timer_handler")
    if not handler:
        plan.notes.append(("time_wait timing disabled: /proc/kallsyms hides tw_timer_handler's "
                           "address (tcpwatch needs CAP_SYSLOG to read it)", {}))
        return []
    if plan.layout_error:
        if request.attach == "tracepoint":   # otherwise the fallback's warning says it
            plan.notes.append(("time_wait timing disabled: it reads timewait sockets at offsets "
                               "from the kernel's BTF", {"reason": plan.layout_error}))
        return []
    tick_ns = env.tick_ns()
    plan.time_wait_tracked = True
    return ["-DTRACK_TIME_WAIT", f"-DTW_TIMER_HANDLER={handler:#x}ULL", f"-DTICK_NS={tick_ns}ULL",
            f"-DTW_LEN_JIFFIES={TCP_TIMEWAIT_LEN_NS // tick_ns}LL"]


def _cookie_flags(request: Request, env: Environment, plan: Plan) -> list:
    """Key namespaces by net_cookie where the kernel has one (else by inode, which it reuses)."""
    try:
        offsets = cookie_layout(request.btf_path, load=env.load_btf)
    except btf.BtfError as exc:
        plan.notes.append(("ebpf: namespaces are told apart by inode, which the kernel reuses "
                           "(no net_cookie in its BTF)", {"reason": str(exc)}))
        return []
    plan.netns_by_cookie = True
    return [f"-D{name}={value}" for name, value in offsets.items()]


def _owner_iterator_flags(request: Request, env: Environment, plan: Plan) -> list:
    """Compile the socket-owner iterator in, when it can work here."""
    if not env.initial_pid_namespace():
        plan.no_owner_iterator = "tcpwatch runs in a pid namespace of its own"
        return []
    flags, plan.owner_iterator_id, plan.no_owner_iterator = _iterator_flags(owner_layout, request, env)
    return ["-DOWNER_ITER"] + flags if flags else []


def _seq_flags(request: Request, env: Environment, plan: Plan) -> list:
    """trace's sequence numbers, read at offsets from BTF: none without it."""
    if plan.layout_error:
        return []
    try:
        offsets = seq_layout(request.btf_path, load=env.load_btf)
    except btf.BtfError as exc:
        plan.notes.append(("trace: no sequence numbers (the kernel's BTF does not describe them)",
                           {"reason": str(exc)}))
        return []
    plan.seq_numbers = True
    return ["-DSEQ_NUMBERS"] + [f"-D{name}={value}" for name, value in offsets.items()]


def _socket_iterator_flags(request: Request, env: Environment, plan: Plan) -> list:
    """Compile the socket iterator in, when this kernel's BTF describes what it reads."""
    if plan.layout_error:
        plan.no_socket_iterator = plan.layout_error
        return []
    flags, plan.socket_iterator_id, plan.no_socket_iterator = _iterator_flags(socket_layout, request, env)
    return ["-DSOCKET_ITER", f"-DDIAG_TICK_NS={env.tick_ns()}ULL"] + flags if flags else []


def _iterator_flags(layout: Callable, request: Request, env: Environment) -> tuple:
    """(-D offsets, BTF id of the kernel iterator, "") from ``layout``, or ([], None, why not)."""
    try:
        offsets, btf_id = layout(request.btf_path, load=env.load_btf)
    except btf.BtfError as exc:
        return [], None, str(exc)
    return [f"-D{name}={value}" for name, value in offsets.items()], btf_id, ""


def _attempts(request: Request, plan: Plan, cflags: list, ids: dict) -> list:
    """tp_btf where BTF allows, the classic tracepoints after it (auto) or alone."""
    if request.attach == "tracepoint":
        return [Attempt("tracepoint", "requested", tuple(cflags))]
    if plan.layout_error:
        if request.attach == "tp_btf":
            raise AttachModeUnavailable(f"--collector.bpf.attach tp_btf: {plan.layout_error}")
        return [Attempt("tracepoint", "no_btf", tuple(cflags), detail=plan.layout_error)]
    hooks = TP_BTF_HOOKS + (TP_BTF_TIMER_HOOKS if plan.time_wait_tracked else ())
    tp_btf = Attempt("tp_btf", "requested" if request.attach == "tp_btf" else "btf",
                     tuple(cflags + ["-DATTACH_TP_BTF"]), tuple((fn, ids[tp]) for fn, tp in hooks))
    if request.attach == "tp_btf":
        return [tp_btf]
    return [tp_btf, Attempt("tracepoint", "tp_btf_refused", tuple(cflags))]


def after_refusal(request: Request, plan: Plan, refused: Attempt, why: str) -> Attempt:
    """The attempt to make after the kernel refused ``refused``, its detail the refusal;
    AttachModeUnavailable when the operator asked for that mode, BpfUnavailable when none is left."""
    if refused.mode == "tp_btf" and request.attach == "tp_btf":   # a promise, even with --ebpf auto
        raise AttachModeUnavailable(f"--collector.bpf.attach {refused.mode}: {why}")
    later = plan.attempts[plan.attempts.index(refused) + 1:]
    if not later:
        raise BpfUnavailable(why)
    nxt = later[0]
    return Attempt(nxt.mode, nxt.reason, nxt.cflags, nxt.hooks, why)
