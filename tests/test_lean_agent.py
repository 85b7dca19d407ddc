"""The daemon as a lean node agent: bcc compiles in a short-lived child and the daemon keeps
only fds (no LLVM mapped), with tcpwatch's bundled include tree instead of kernel headers;
a child that fails or hangs leaves one clear reason and nothing attached."""

import os
import re
import shutil
from pathlib import Path

import pytest

from helpers import Daemon, value, wait_for
from peers import our_programs
from tcpwatch.sources import bpf, ebpf_compile, ebpf_load, ebpf_plan

pytestmark = pytest.mark.root
KERNEL_HEADERS = Path(f"/lib/modules/{os.uname().release}/build/include/generated/autoconf.h")
needs_bpftool = pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed")


@pytest.mark.parametrize("attach", ["tp_btf", "tracepoint"])
def test_the_daemon_maps_no_llvm_and_keeps_no_compiler_child(netns, attach):
    daemon = Daemon("--ebpf", "on", "--collector.bpf.attach", attach, netns=netns)
    try:
        samples = daemon.scrape()
        assert value(samples, "tcpwatch_ebpf_enabled") == 1
        assert value(samples, "tcpwatch_ebpf_attach_info", mode=attach, headers="bundled") == 1
        pid = daemon.proc.pid
        tcpwatch = next(p for p in [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
                        if "tcpwatch" in Path(f"/proc/{p}/cmdline").read_text() and
                        "run" in Path(f"/proc/{p}/cmdline").read_text())
        maps = Path(f"/proc/{tcpwatch}/maps").read_text()
        assert not re.search(r"libLLVM|libclang|libbcc", maps)
        assert Path(f"/proc/{tcpwatch}/task/{tcpwatch}/children").read_text().split() == []
    finally:
        assert daemon.stop() == 0


def instructions(cflags, bundled):
    """{function: instructions} of the program compiled with ``cflags``."""
    from bcc import BPF

    if bundled:
        os.environ["BCC_KERNEL_SOURCE"] = ebpf_load.headers_dir()
    else:
        os.environ.pop("BCC_KERNEL_SOURCE", None)
    module = BPF(text=ebpf_load.program_text().encode(), cflags=list(cflags))
    try:
        names = re.findall(r"^int (\w+)\(", ebpf_load.program_text(), re.M) + [
            f"tracepoint__{c}__{n}" for c, n in re.findall(r"TRACEPOINT_PROBE\((\w+), (\w+)\)", ebpf_load.program_text())]
        found = {}
        for name in names:
            try:
                found[name] = module.dump_func(name.encode())
            except Exception:
                continue   # not compiled in this variant
        return found
    finally:
        module.cleanup()
        os.environ.pop("BCC_KERNEL_SOURCE", None)


@pytest.mark.skipif(not KERNEL_HEADERS.exists(), reason="no kernel headers to compare with")
@pytest.mark.parametrize("everything", [True, False])
def test_the_bundled_headers_compile_what_the_kernel_headers_compile(everything):
    request = ebpf_plan.Request(track_time_wait=everything, emit_events=everything, owner_iterator=everything,
                                port_range=(80, 90) if everything else None)
    for attempt in ebpf_plan.make_plan(request).attempts:
        ours = instructions(attempt.cflags, bundled=True)
        assert ours and ours == instructions(attempt.cflags, bundled=False), attempt.mode


@needs_bpftool
def test_a_child_that_fails_or_hangs_gives_one_reason_and_leaves_nothing_attached():
    baseline = our_programs()
    request = ebpf_plan.Request()
    plan = ebpf_plan.make_plan(request)
    broken = ebpf_plan.Plan([ebpf_plan.Attempt("tp_btf", "btf", plan.attempts[0].cflags + ("-DMAX_NETNS=nonsense",),
                                               plan.attempts[0].hooks)],
                            plan.socket_slots, plan.max_netns, False)
    with pytest.raises(bpf.BpfUnavailable) as failed:
        ebpf_compile.load_in_child(request, broken)
    assert "\n" not in str(failed.value) and "did not compile against tcpwatch's bundled" in str(failed.value)
    with pytest.raises(bpf.BpfUnavailable, match="did not finish within 0.2 s"):
        ebpf_compile.load_in_child(request, plan, timeout=0.2)
    wait_for(lambda: our_programs() == baseline, timeout=10, what="nothing of ours attached")


@needs_bpftool
def test_the_childs_programs_stay_attached_until_the_daemon_closes_them():
    baseline = our_programs()
    program = bpf.BpfProgram(max_sockets=1024, owner_iterator=True)
    try:
        assert program.bpf is None and our_programs() == baseline + 7   # 4 tracepoint hooks, 2 timer hooks, the owner iterator
        assert program.read().counters["netns_full"] == 0
    finally:
        program.close()
    wait_for(lambda: our_programs() == baseline, timeout=10, what="the programs detached")
