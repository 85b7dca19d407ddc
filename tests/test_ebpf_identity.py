"""What the eBPF program records of each socket in the kernel: its network namespace and its
cookie, in both attach modes, against namespaces and sockets these tests make.

The program is loaded in this process (tcpwatch.sources.bpf), so its maps can be read per
namespace. The test namespaces hold only the tests' sockets, so counts per namespace are exact
without a port filter, whatever else the host does.
"""

import json
import os
import re
import subprocess
import time

import pytest

from helpers import PYTHON, ROOT, Daemon, Workload, in_netns, value, wait_for
from tcpwatch import states
from tcpwatch.model import NetnsActivity

pytestmark = pytest.mark.root


@pytest.fixture(params=["tp_btf", "tracepoint"])
def attach(request):
    return request.param


@pytest.fixture
def two_netns():
    names = [f"tcpw-id-{os.getpid()}-{side}" for side in "ab"]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield names
    for name in names:
        subprocess.run(["ip", "netns", "del", name], check=False)


def netns_inode(pid):
    """The inode the kernel gives the network namespace of a process."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def per_inode(reading):
    """{netns inode: NetnsActivity} of a reading keyed by namespace cookie."""
    result = {}
    for key, activity in reading.netns.items():
        result.setdefault(reading.netns_inodes.get(key, 0), NetnsActivity()).add(activity)
    return result


def test_per_namespace_counts_are_exact_and_carry_the_namespace_inode(attach, two_netns):
    from tcpwatch.sources.bpf import BpfProgram

    a, b = two_netns
    program = BpfProgram(max_sockets=4096, track_time_wait=False, attach=attach)
    try:
        assert program.attach.mode == attach
        loads = {a: Workload("churn", netns=a, count=7), b: Workload("churn", netns=b, count=3)}
        inodes = {name: netns_inode(load.proc.pid) for name, load in loads.items()}
        for load in loads.values():
            load.stop()
        assert inodes[a] != inodes[b]

        def per_netns():
            reading = program.read()
            by_inode = per_inode(reading)
            got = {name: by_inode.get(inode) for name, inode in inodes.items()}
            done = all(g and g.transitions[(states.LAST_ACK, states.CLOSE)] for g in got.values())
            return got if done else None

        got = wait_for(per_netns, what="both namespaces' connections to close")
        for name, n in ((a, 7), (b, 3)):
            t = got[name].transitions
            assert t[(states.CLOSE, states.SYN_SENT)] == n and t[(states.LISTEN, states.SYN_RECV)] == n
            assert t[(states.ESTABLISHED, states.CLOSE_WAIT)] == n and t[(states.LAST_ACK, states.CLOSE)] == n
            assert t[(states.CLOSE, states.LISTEN)] == 1
            assert sum(got[name].duration_slots[states.SYN_SENT]) == n
        assert program.read().counters["netns_tracked"] >= 2
    finally:
        program.close()


def test_resets_are_counted_in_the_namespace_that_sent_and_received_them(attach, two_netns):
    """A connect to a closed port: the RST is sent with no socket (its namespace comes from
    the receiving device) and received by the connecting socket."""
    from tcpwatch.sources.bpf import BpfProgram

    a, _ = two_netns
    program = BpfProgram(max_sockets=4096, track_time_wait=False, attach=attach)
    try:
        code = ("import socket\nfor _ in range(4):\n s = socket.socket()\n"
                " try: s.connect(('127.0.0.1', 1))\n except ConnectionRefusedError: pass\n"
                "import os; print(os.stat('/proc/self/ns/net').st_ino)")
        inode = int(subprocess.run(in_netns(a, [PYTHON, "-c", code]), capture_output=True, text=True,
                                   check=True).stdout)
        counters = wait_for(lambda: (lambda c: c if c and c["resets_received"] == 4 else None)(
            getattr(per_inode(program.read()).get(inode), "counters", None)), what="4 resets in the namespace")
        assert counters["resets_sent"] == 4
    finally:
        program.close()


def ss_cookies(netns, *filters):
    """{(local port, remote port): cookie} of `ss -tane` in a namespace (ss prints sk:HEX)."""
    out = subprocess.run(in_netns(netns, ["ss", "-tanHe", *filters]), capture_output=True, text=True,
                         check=True).stdout
    cookies = {}
    for line in out.splitlines():
        local, remote = [field.rpartition(":")[2] for field in line.split() if re.search(r":\d+$", field)][:2]
        match = re.search(r"\bsk:([0-9a-f]+)", line)
        cookies[(int(local), int(remote))] = int(match.group(1), 16)
    return cookies


def test_trace_json_shows_each_sockets_namespace_inode_and_cookie(two_netns):
    """The default mode (tp_btf here): every line carries the socket's namespace inode, as
    /proc/PID/ns/net gives it, and its cookie, as inet_diag (ss -e) gives it."""
    a, b = two_netns
    port = 21801
    trace = subprocess.Popen([PYTHON, "-m", "tcpwatch", "trace", "--json", "--port", str(port), "--duration", "30"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    loads = {}
    try:
        time.sleep(4)   # compiling; events before the attach would be missed, not misread
        loads = {name: Workload("leak", netns=name, count=2, **{"listen-port": port}) for name in (a, b)}
        inodes = {name: netns_inode(load.proc.pid) for name, load in loads.items()}
        cookies = {name: ss_cookies(name, "state", "close-wait") for name in (a, b)}
        time.sleep(1)
    finally:
        trace.terminate()
        out, err = trace.communicate(timeout=20)
        for load in loads.values():
            load.stop()
    events = [json.loads(line) for line in out.splitlines()]
    assert events, err
    seen = {}
    for event in events:
        assert event["netns"] in inodes.values(), event
        if event["to"] == "close_wait":
            name = next(n for n, inode in inodes.items() if inode == event["netns"])
            ports = (int(event["local"].rpartition(":")[2]), int(event["remote"].rpartition(":")[2]))
            seen[(name, ports)] = event["cookie"]
    expected = {(name, ports): cookie for name in (a, b) for ports, cookie in cookies[name].items()}
    assert len(expected) == 4 and seen == expected


def close_wait_age(daemon, comm):
    return value(daemon.scrape(), "tcpwatch_state_oldest_age_seconds", state="close_wait", process=comm)


@pytest.mark.parametrize("family", [4, 6])
def test_close_wait_age_is_exact_when_another_namespace_holds_the_same_4_tuple(attach, two_netns, family):
    """Namespaces a and b each hold a CLOSE_WAIT socket on the same 4-tuple, b's 2 s younger.
    Joined by cookie (or by tuple and namespace), a's age is a's own."""
    a, b = two_netns
    ports = {"listen-port": 21811, "client-port": 21812}
    daemon = Daemon("--ebpf", "on", "--collector.bpf.attach", attach, "--collector.bpf.ports", "21810-21819",
                    netns=a)
    loads = []
    try:
        loads.append(Workload("leak", netns=a, comm="cw_a", family=family, **ports))
        time.sleep(2.0)
        loads.append(Workload("leak", netns=b, comm="cw_b", family=family, **ports))
        age = close_wait_age(daemon, "cw_a")   # the first scrape to see it: first-seen would say 0
        assert 2.0 <= age <= 4.0, age
    finally:
        for load in loads:
            load.stop()
        assert daemon.stop() == 0


def test_close_wait_age_follows_a_4_tuple_reused_by_a_new_socket(attach, two_netns):
    """One 4-tuple, two sockets in turn: the second's age starts when it entered CLOSE_WAIT."""
    a, _ = two_netns
    ports = {"listen-port": 21821, "client-port": 21822}
    daemon = Daemon("--ebpf", "on", "--collector.bpf.attach", attach, "--collector.bpf.ports", "21820-21829",
                    netns=a)
    try:
        first = Workload("leak", netns=a, comm="cw_first", **ports)
        time.sleep(1.0)
        assert close_wait_age(daemon, "cw_first") >= 1.0
        first.stop()
        time.sleep(1.0)
        second = Workload("leak", netns=a, comm="cw_second", **ports)
        time.sleep(0.5)
        age = close_wait_age(daemon, "cw_second")
        assert 0.4 <= age <= 1.5, age
        second.stop()
    finally:
        assert daemon.stop() == 0


def test_default_mode_is_tp_btf_where_the_kernel_has_btf(two_netns):
    daemon = Daemon("--ebpf", "on", netns=two_netns[0])
    try:
        assert value(daemon.scrape(), "tcpwatch_ebpf_attach_info", mode="tp_btf", reason="btf", headers="bundled") == 1
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("ebpf", ["on", "auto"])
def test_tp_btf_asked_for_without_btf_exits_2_with_one_line(ebpf):
    result = subprocess.run([PYTHON, "-m", "tcpwatch", "run", "--web.listen-address", "127.0.0.1:0",
                             "--ebpf", ebpf, "--collector.bpf.attach", "tp_btf",
                             "--collector.bpf.btf", "/nonexistent/vmlinux"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "tp_btf" in lines[0] and "/nonexistent/vmlinux" in lines[0], lines


def test_auto_without_btf_falls_back_to_tracepoints_with_one_warning(two_netns):
    """No BTF: the classic tracepoints, no namespace inodes (0), CLOSE_WAIT joined by 4-tuple."""
    a, _ = two_netns
    daemon = Daemon("--ebpf", "on", "--collector.bpf.btf", "/nonexistent/vmlinux",
                    "--collector.bpf.ports", "21830-21839", netns=a)
    try:
        leak = Workload("leak", netns=a, comm="cw_nobtf", **{"listen-port": 21831})
        time.sleep(1.0)
        samples = daemon.scrape()
        assert value(samples, "tcpwatch_ebpf_attach_info", mode="tracepoint", reason="no_btf", headers="kernel") == 1
        assert value(samples, "tcpwatch_state_transitions_total", **{"from": "established", "to": "close_wait"}) == 1
        assert 0.9 <= value(samples, "tcpwatch_state_oldest_age_seconds", state="close_wait",
                            process="cw_nobtf") <= 2.5
        leak.stop()
    finally:
        assert daemon.stop() == 0
    warnings = [line for line in daemon.log if "level=warn" in line]
    assert len(warnings) == 1 and "tp_btf not used" in warnings[0], warnings


def test_a_leaked_close_wait_keeps_its_row_while_churn_wraps_the_socket_table(two_netns):
    """tp_btf with a 64-row socket table: 300 connections cycle through the rows many times,
    a leaked CLOSE_WAIT socket's row is never taken over, so its age stays exact; new sockets
    that land on a held row are counted as slot_taken."""
    a, _ = two_netns
    daemon = Daemon("--ebpf", "on", "--collector.bpf.attach", "tp_btf", "--collector.bpf.max-sockets", "64",
                    "--collector.bpf.ports", "21840-21849", netns=a)
    try:
        leak = Workload("leak", netns=a, comm="cw_wrap", count=3, **{"listen-port": 21841})
        time.sleep(1.0)
        Workload("churn", netns=a, count=300, **{"listen-port": 21842}).stop()
        samples = daemon.scrape()
        assert value(samples, "tcpwatch_state_transitions_total", **{"from": "last_ack", "to": "close"}) == 300
        assert 1.0 <= value(samples, "tcpwatch_state_oldest_age_seconds", state="close_wait", process="cw_wrap") <= 5
        assert value(samples, "tcpwatch_ebpf_untracked_total", reason="slot_taken") > 0
        leak.stop()
    finally:
        assert daemon.stop() == 0


def test_doctor_names_the_attach_mode_and_why_it_falls_back():
    ok = subprocess.run([PYTHON, "-m", "tcpwatch", "doctor"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout
    assert "attach mode tp_btf" in ok.stdout
    assert "[pass] sockets are counted with the eBPF socket iterator" in ok.stdout
    fallback = subprocess.run([PYTHON, "-m", "tcpwatch", "doctor", "--collector.bpf.btf", "/nonexistent/vmlinux"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert fallback.returncode == 0, fallback.stdout + fallback.stderr
    assert "attach mode tracepoint" in fallback.stdout and "no_btf" in fallback.stdout, fallback.stdout
    assert "[warn] sockets are counted with inet_diag" in fallback.stdout and "/nonexistent" in fallback.stdout


def test_a_gone_namespace_gives_its_slot_back(daemons, workloads):
    """Two usable namespace slots, three namespaces one after another: the first one's slot
    is released once it is gone, so the third is still counted under its own name."""
    port = 21960
    daemon = daemons("--ebpf", "on", "--collector.bpf.max-netns", "3", "--no-collector.bpf.time-wait",
                     "--collector.bpf.ports", f"{port}-{port}", "--no-collector.process")
    names = [f"tcpw-slot-{os.getpid()}-{i}" for i in range(3)]

    def churn_in(name):
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        workloads("churn", netns=name, count=5, **{"listen-port": port}).wait()
        return wait_for(lambda: (lambda s: s if value(s, "tcpwatch_state_transitions_total", netns=name,
                                                      **{"from": "syn_sent", "to": "established"}) == 5
                                 else None)(daemon.scrape()), what=f"5 handshakes counted in {name}")

    try:
        churn_in(names[0])
        subprocess.run(["ip", "netns", "del", names[0]], check=True)
        # Released at the second scrape that misses it with no new events.
        wait_for(lambda: value(daemon.scrape(), "tcpwatch_ebpf_netns_tracked") == 0, timeout=15,
                 what="the gone namespace's slot released")
        churn_in(names[1])
        samples = churn_in(names[2])
        assert value(samples, "tcpwatch_ebpf_untracked_total", reason="netns_full") == 0
        assert value(samples, "tcpwatch_ebpf_netns_tracked") == 2
        assert value(samples, "tcpwatch_state_transitions_total", netns=names[0],
                     **{"from": "syn_sent", "to": "established"}) is None
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
