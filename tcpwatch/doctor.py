"""``tcpwatch doctor``: what eBPF needs on this host, each check with its fix."""

from __future__ import annotations

import os
import platform
import sys

from .sources import bpf


def _checks():
    release = platform.release()
    major, minor = (int(x) for x in release.split(".")[:2]) if release[0].isdigit() else (0, 0)
    yield ("kernel 4.16 or later (the tracepoint)", (major, minor) >= (4, 16),
           f"running {release}; upgrade the kernel")
    yield ("running as root or with CAP_BPF and CAP_PERFMON", _has_bpf_privilege(),
           "run as root, or grant CAP_BPF, CAP_PERFMON (and CAP_SYS_RESOURCE on kernels before 5.11)")
    mounted = os.path.ismount(bpf.TRACEFS)
    yield (f"tracefs mounted on {bpf.TRACEFS}", mounted,
           f"mount -t tracefs tracefs {bpf.TRACEFS}")
    yield (f"tracepoint {bpf.TRACEPOINT} present",
           os.path.exists(f"{bpf.TRACEFS}/events/{bpf.TRACEPOINT}"),
           "needs Linux 4.16+ with CONFIG_TRACEPOINTS (and tracefs mounted)")
    try:
        import bcc  # noqa: F401
        importable = True
    except ImportError:
        importable = False
    yield ("bcc Python bindings importable", importable,
           "apt-get install python3-bpfcc (Fedora/RHEL: python3-bcc); never pip install bcc")
    build = f"/lib/modules/{release}/build"
    yield (f"kernel headers at {build}",
           os.path.exists(f"{build}/include/generated/autoconf.h"),
           f"apt-get install linux-headers-{release} (or run `make run`, which links the "
           "distribution's headers: safe here, only tracepoint arguments are read)")
    yield ("tw_timer_handler in /proc/kallsyms (TIME_WAIT durations)",
           bpf.kernel_symbol("tw_timer_handler") is not None,
           "set kernel.kptr_restrict=0 or run as root; without it TIME_WAIT is not timed")


def _has_bpf_privilege() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration):
        return False
    return bool(caps & (1 << 39)) and bool(caps & (1 << 38))


def doctor() -> int:
    ok_all = True
    for name, ok, fix in _checks():
        print(f"[{'pass' if ok else 'FAIL'}] {name}" + ("" if ok else f"\n       fix: {fix}"))
        ok_all = ok_all and ok
    if ok_all:
        try:
            program = bpf.BpfProgram(max_sockets=1024)
            program.close()
            print("[pass] the eBPF program compiles, loads and detaches")
        except bpf.BpfUnavailable as exc:
            print(f"[FAIL] the eBPF program compiles, loads and detaches\n       {exc}")
            ok_all = False
    print("eBPF can be used" if ok_all else "eBPF cannot be used here yet")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(doctor())
