"""Compile the program with bcc and attach it, following a Plan (ebpf_plan.py); the
resulting LoadedProgram owns every fd: bcc's module, tp_btf programs and links, the
socket-owner iterator. The only module that imports bcc (the distribution's python3-bpfcc).
The daemon runs this in a short-lived child (ebpf_compile.py) and keeps only the fds;
``tcpwatch trace`` and the benches run it in their own process.

tp_btf: bcc 0.26 cannot load these itself (it derives a tracing program's attach type from
its name prefix and has none for tp_btf). So bcc compiles them, and each function's
instructions are loaded with one bpf(BPF_PROG_LOAD) (ebpf_syscall.py) on the BTF id of its
tracepoint's btf_trace_ typedef, then attached with BPF_RAW_TRACEPOINT_OPEN. The classic
tracepoints are loaded and attached by bcc itself.
"""

from __future__ import annotations

import ctypes
import os
from importlib import resources

from . import ebpf_syscall as sys_bpf
from .ebpf_plan import BUNDLED, AttachChoice, BpfUnavailable, Plan, Request, after_refusal


TRACEFS = "/sys/kernel/tracing"
# The maps the daemon reads or writes, by name (tcpstates.c); events only with EMIT_EVENTS.
MAP_NAMES = ("netns_stats", "netns_last", "netns_slots", "free_slots", "counters", "socket_table",
             "close_wait_entered", "events")
TRACEPOINT = "sock/inet_sock_set_state"
# The iterator functions of tcpstates.c, and what does their work when one cannot be used.
OWNER_ITERATOR, SOCKET_ITERATOR = "socket_owners", "socket_diag"
ITERATOR_FALLBACKS = {OWNER_ITERATOR: "socket owners come from the /proc walk, not the eBPF iterator",
                      SOCKET_ITERATOR: "sockets are counted with inet_diag, not the eBPF iterator"}
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def program_text() -> str:
    return resources.files("tcpwatch.bpf").joinpath("tcpstates.c").read_text()


def headers_dir() -> str:
    """The bundled include tree, as an absolute path (bcc chdirs into BCC_KERNEL_SOURCE)."""
    return os.path.abspath(str(resources.files("tcpwatch.bpf").joinpath("headers")))


class LoadedProgram:
    """The compiled module and every fd attached from it. ``close()`` detaches all."""

    def __init__(self):
        self.bpf = None          # bcc's BPF module: maps, and the classic tracepoints' attachments
        self.links = []
        self.prog_fds = []
        self.iterators = {}      # iterator function (OWNER_ITERATOR, SOCKET_ITERATOR) -> link fd
        self.attach = None       # AttachChoice
        self.notes = []          # (level, message, extra) for the log of whoever asked

    def maps(self) -> dict:
        """{name: fd} of the maps of MAP_NAMES this program has (the fds stay bcc's)."""
        found = {}
        for name in MAP_NAMES:
            try:
                found[name] = self.bpf[name.encode()].map_fd
            except KeyError:
                continue
        return found

    @property
    def perf_fds(self) -> list:
        """The classic tracepoints' perf events, which hold their programs attached."""
        return list(self.bpf.tracepoint_fds.values()) if self.bpf is not None else []

    def close(self) -> None:
        for fd in self.links + self.prog_fds:   # links first: closing one detaches its program
            os.close(fd)
        self.links, self.prog_fds, self.iterators = [], [], {}
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None


def bcc_importable() -> bool:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False
    return True


def load_here(request: Request, plan: Plan) -> LoadedProgram:
    """Try the plan's attempts in order, in this process; the first that loads is kept.
    BpfUnavailable (or AttachModeUnavailable) with the reason when none does."""
    check_capabilities()
    if not bcc_importable():
        raise BpfUnavailable("bcc is not importable; install python3-bpfcc (Fedora/RHEL: python3-bcc)")
    if plan.headers == BUNDLED:
        os.environ["BCC_KERNEL_SOURCE"] = headers_dir()
    loaded = LoadedProgram()
    attempt = plan.attempts[0]
    while True:
        try:
            if attempt.mode == "tracepoint":
                check_tracefs()
            _compile(loaded, attempt.cflags, plan.headers)
            _attach_hooks(loaded, attempt.hooks)
            break
        except BpfUnavailable as exc:
            loaded.close()
            attempt = after_refusal(request, plan, attempt, str(exc))
    loaded.attach = AttachChoice(attempt.mode, attempt.reason, attempt.detail)
    if attempt.detail:
        lost = ("; without BTF there are no namespace inodes (netns 0), no time_wait timing, and sockets "
                "are counted with inet_diag" if plan.layout_error else "")
        loaded.notes.append(("warning", "ebpf: tp_btf not used, attached to the classic tracepoints" + lost,
                             {"reason": attempt.detail}))
    if plan.owner_iterator_id is not None:
        _attach_iterator(loaded, OWNER_ITERATOR, plan.owner_iterator_id)
    elif plan.no_owner_iterator:
        loaded.notes.append(("info", ITERATOR_FALLBACKS[OWNER_ITERATOR], {"reason": plan.no_owner_iterator}))
    if plan.socket_iterator_id is not None:
        _attach_iterator(loaded, SOCKET_ITERATOR, plan.socket_iterator_id)
    elif plan.no_socket_iterator and not (attempt.detail and plan.layout_error):
        # (without BTF the fallback's warning above says it)
        loaded.notes.append(("warning", ITERATOR_FALLBACKS[SOCKET_ITERATOR], {"reason": plan.no_socket_iterator}))
    return loaded


def _compile(loaded: LoadedProgram, cflags, headers: str) -> None:
    """bcc compiles (and, for the classic tracepoints, attaches) the program."""
    from bcc import BPF

    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(2)
    try:
        os.dup2(devnull, 2)   # clang's and libbpf's chatter; the exception says what failed
        loaded.bpf = BPF(text=program_text().encode(), cflags=list(cflags))
    except Exception as exc:
        raise BpfUnavailable(_why(exc, headers)) from None
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _attach_hooks(loaded: LoadedProgram, hooks) -> None:
    """Load and attach each tp_btf function on its tracepoint's BTF id."""
    for function, btf_id in hooks:
        prog_fd, link = attach_tp_btf(loaded.bpf, function, btf_id)
        loaded.prog_fds.append(prog_fd)
        loaded.links.append(link)


def attach_tp_btf(compiled, function: str, btf_id: int) -> tuple:
    """Load ``function`` of a bcc-compiled module as a tp_btf program on the tracepoint whose
    ``btf_trace_`` typedef has ``btf_id``, then attach it: (program fd, link fd).
    BpfUnavailable when the kernel refuses either."""
    try:
        prog_fd = sys_bpf.load_tracing(compiled.dump_func(function.encode()), function,
                                       sys_bpf.BPF_TRACE_RAW_TP, btf_id)
    except sys_bpf.ProgramRefused as exc:
        raise BpfUnavailable(str(exc)) from None
    try:
        return prog_fd, sys_bpf.raw_tracepoint_open(prog_fd)
    except sys_bpf.BpfCallFailed as exc:
        os.close(prog_fd)
        raise BpfUnavailable(f"cannot attach {function} to its tracepoint: {exc.strerror}") from None


def _attach_iterator(loaded: LoadedProgram, function: str, btf_id: int) -> None:
    """Load ``function`` as a BPF iterator on the kernel iterator ``btf_id`` and link it.
    Iterators are optional: a failure is one warning, and the fallback does their work."""
    try:
        prog_fd = sys_bpf.load_tracing(loaded.bpf.dump_func(function.encode()), function,
                                       sys_bpf.BPF_TRACE_ITER, btf_id)
    except sys_bpf.ProgramRefused as exc:
        loaded.notes.append(("warning", ITERATOR_FALLBACKS[function], {"reason": f"refused: {exc}"}))
        return
    loaded.prog_fds.append(prog_fd)
    try:
        link = sys_bpf.link_create_iterator(prog_fd)
    except sys_bpf.BpfCallFailed as exc:
        loaded.notes.append(("warning", ITERATOR_FALLBACKS[function], {"reason": f"not attached: {exc.strerror}"}))
        return
    loaded.links.append(link)
    loaded.iterators[function] = link


def release_compiler_memory() -> None:
    """LLVM leaves tens of MB of freed heap behind after compiling; give it back."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _why(exc: Exception, headers: str) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "super-user" in text or isinstance(exc, PermissionError):
        return "not allowed to load eBPF programs (needs root or CAP_BPF and CAP_PERFMON)"
    if "compile" in text.lower() and headers == BUNDLED:
        return "the eBPF program did not compile against tcpwatch's bundled headers (run tcpwatch doctor)"
    if "compile" in text.lower():
        return ("the eBPF program did not compile: kernel headers missing or unusable "
                "under /lib/modules/$(uname -r)/build (run tcpwatch doctor)")
    return f"the eBPF program could not be loaded: {text}"


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    """The CapEff bit mask of this process."""
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing_capabilities(effective: int) -> list:
    """What loading and attaching the program lacks: CAP_BPF and CAP_PERFMON (Linux 5.8+),
    or CAP_SYS_ADMIN, which covers both."""
    if effective >> CAP_SYS_ADMIN & 1:
        return []
    return [name for bit, name in ((CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")) if not effective >> bit & 1]


def check_capabilities() -> None:
    """Fail early, with the reason, on what bcc would report obscurely."""
    missing = missing_capabilities(effective_capabilities())
    if missing:
        raise BpfUnavailable(f"not allowed to load eBPF programs: missing {' and '.join(missing)} "
                             "(needs root, or CAP_BPF and CAP_PERFMON)")


def check_tracefs() -> None:
    """The classic tracepoints need tracefs (tp_btf does not)."""
    try:
        os.listdir(TRACEFS)
    except PermissionError:
        raise BpfUnavailable(f"cannot read tracefs on {TRACEFS} (mode 0700: needs root or "
                             "CAP_DAC_READ_SEARCH)") from None
    except OSError:
        pass
    if not os.path.exists(f"{TRACEFS}/events/{TRACEPOINT}") and not os.path.exists(
            f"/sys/kernel/debug/tracing/events/{TRACEPOINT}"):
        if not os.path.ismount(TRACEFS):
            raise BpfUnavailable(f"tracefs is not mounted on {TRACEFS} (mount -t tracefs tracefs {TRACEFS})")
        raise BpfUnavailable(f"the tracepoint {TRACEPOINT} does not exist (Linux 4.16 or later needed)")
