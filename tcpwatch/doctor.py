"""``tcpwatch doctor``: what eBPF needs on this host, each check with its fix, and the attach
mode tcpwatch will use (with the reason when it is the fallback)."""

from __future__ import annotations

import os
import platform
import sys

from .sources import bpf, btf


def _checks(btf_path: str):
    release = platform.release()
    major, minor = (int(x) for x in release.split(".")[:2]) if release[0].isdigit() else (0, 0)
    yield ("kernel 4.16 or later (the tracepoint)", (major, minor) >= (4, 16),
           f"running {release}; upgrade the kernel")
    yield ("running as root or with CAP_BPF and CAP_PERFMON", _has_bpf_privilege(),
           "run as root, or grant CAP_BPF, CAP_PERFMON (and CAP_SYS_RESOURCE on kernels before 5.11)")
    yield ("bcc Python bindings importable", bpf.bcc_importable(),
           "apt-get install python3-bpfcc (Fedora/RHEL: python3-bcc); never pip install bcc")
    yield _headers_check(release, btf_path)
    yield ("tw_timer_handler in /proc/kallsyms (TIME_WAIT durations)",
           bpf.kernel_symbol("tw_timer_handler") is not None,
           "set kernel.kptr_restrict=0 or run as root; without it TIME_WAIT is not timed")


def _headers_check(release: str, btf_path: str) -> tuple:
    """Kernel headers are needed only where the kernel has no BTF (the classic tracepoints
    then compile against them); elsewhere tcpwatch's bundled include tree is used."""
    try:
        bpf.kernel_layout(btf_path)
        return ("kernel headers not needed: the kernel's BTF describes the program (bundled headers)", True, "")
    except btf.BtfError:
        build = f"/lib/modules/{release}/build"
        return (f"kernel headers at {build} (no usable BTF: the classic tracepoints compile against them)",
                os.path.exists(f"{build}/include/generated/autoconf.h"),
                f"apt-get install linux-headers-{release} (or run `make run`, which links the "
                "distribution's headers: safe, no struct offset is taken from them)")


def _optional_checks(btf_path: str):
    """What only one attach mode needs: a failure here picks the other mode, not 'no eBPF'."""
    try:
        bpf.kernel_layout(btf_path)
        yield (f"kernel BTF at {btf_path} describes what the program reads (tp_btf mode)", True, "")
    except btf.BtfError as exc:
        yield (f"kernel BTF at {btf_path} (tp_btf mode, namespace inodes, TIME_WAIT timing)", False,
               f"{exc}; needs CONFIG_DEBUG_INFO_BTF=y (tcpwatch falls back to the classic tracepoints)")
    mounted = os.path.ismount(bpf.TRACEFS)
    yield (f"tracefs mounted on {bpf.TRACEFS} (tracepoint mode)", mounted,
           f"mount -t tracefs tracefs {bpf.TRACEFS}")


def _has_bpf_privilege() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        return not bpf.missing_capabilities(bpf.effective_capabilities())
    except OSError:
        return False


def doctor(btf_path: str = btf.VMLINUX) -> int:
    ok_all = True
    for name, ok, fix in _checks(btf_path):
        print(f"[{'pass' if ok else 'FAIL'}] {name}" + ("" if ok else f"\n       fix: {fix}"))
        ok_all = ok_all and ok
    for name, ok, fix in _optional_checks(btf_path):
        print(f"[{'pass' if ok else 'warn'}] {name}" + ("" if ok else f"\n       fix: {fix}"))
    if ok_all:
        try:
            program = bpf.BpfProgram(max_sockets=1024, btf_path=btf_path, socket_iterator=True)
            choice, headers = program.attach, program.headers
            counting = "the eBPF socket iterator" if program.socket_iterator else "inet_diag"
            why_not = program.no_socket_iterator
            program.close()
            print(f"[pass] the eBPF program compiles, loads and detaches: attach mode {choice.mode}, "
                  f"{headers} headers")
            if choice.detail:
                print(f"       {choice.mode} is the fallback ({choice.reason}): {choice.detail}")
            print(f"[{'pass' if not why_not else 'warn'}] sockets are counted with {counting}"
                  + (f"\n       why not the iterator: {why_not}" if why_not else ""))
        except bpf.BpfUnavailable as exc:
            print(f"[FAIL] the eBPF program compiles, loads and detaches\n       {exc}")
            ok_all = False
    print("eBPF can be used" if ok_all else "eBPF cannot be used here yet")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(doctor())
