"""Counting by the eBPF socket iterator (iter/tcp) against `ss` and against the inet_diag
dump it replaces: the same counts per state, family and namespace (request sockets, FIN_WAIT2
timewait sockets and IPv6 included), the same exposition (ports, listen queues, CLOSE_WAIT
owners and ages), and the inet_diag fallback with one warning when the iterator is not used."""

import re
import subprocess
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from helpers import PYTHON, ROOT, Daemon, in_netns, ss_counts, value, wait_for
from tcpwatch import states
from tcpwatch.collectors import CollectorSettings
from tcpwatch.exporter import Exporter
from tcpwatch.model import DumpWants
from tcpwatch.namespace_dumps import NamespaceDumper
from tcpwatch.snapshot import Sources
from tcpwatch.sources import bpf, ebpf_load, ebpf_plan

pytestmark = pytest.mark.root

# Request sockets must outlive the test: their SYN-ACKs are lost, and retried for long.
MIX_SYSCTLS = ["net.ipv4.tcp_synack_retries=255", "net.ipv4.tcp_syncookies=0", "net.ipv4.tcp_max_syn_backlog=4096"]
FAMILIES = {"ipv4": "4", "ipv6": "6"}


@pytest.fixture(scope="module", params=["tp_btf", "tracepoint"])
def program(request):
    """The iterator is the same in both attach modes, but compiled with each one's program."""
    loaded = bpf.BpfProgram(max_sockets=4096, track_time_wait=False, owner_iterator=True, socket_iterator=True,
                            attach=request.param)
    try:
        assert loaded.socket_iterator is not None, loaded.no_socket_iterator
        yield loaded
    finally:
        loaded.close()


@pytest.fixture
def mixes():
    """``mixes(netns, n)``: bench/mix_worker.py holding about n sockets in the realistic mix
    in ``netns`` (with the default tcp_fin_timeout its FIN_WAIT2 orphans are timewait
    sockets in substate FIN_WAIT2); all stopped at teardown."""
    started = []

    def start(netns, n):
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", *MIX_SYSCTLS], check=True)
        proc = subprocess.Popen(in_netns(netns, [PYTHON, str(ROOT / "bench" / "mix_worker.py"), str(n)]),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in started:
        proc.stdin.close()
        proc.wait(30)


def dumps_by_name(dumper):
    try:
        read = dumper.dump_all(dumper.discover())
        return {dump.info.name: dump for dump in read.dumps}, read
    finally:
        dumper.close()


def iterator_counts(program, *names):
    dumps, read = dumps_by_name(NamespaceDumper(DumpWants(owners=True, ports=True),
                                                socket_iterator=program.socket_iterator))
    assert read.source == "ebpf_iterator" and read.reason == ""
    return [dumps[name].snap.counts for name in names]


def settled(netns):
    """No FIN in flight: a FIN_WAIT1 socket of a workload's half-closed pair waits for its ACK."""
    wait_for(lambda: not subprocess.run(in_netns(netns, ["ss", "-tanH", "state", "fin-wait-1"]), capture_output=True,
                                        text=True, check=True).stdout, what="the FINs to be acknowledged")


def per_family(counts, family):
    return {states.name(state): counts.get((family, state), 0) for state in states.REPORTED}


def test_iterator_counts_equal_ss_per_state_family_and_namespace(program, netns, mixes, workloads):
    second = f"{netns}-b"
    subprocess.run(["ip", "netns", "add", second], check=True)
    try:
        subprocess.run(["ip", "-n", second, "link", "set", "lo", "up"], check=True)
        mixes(netns, 400)
        workloads("states", netns=netns, count=3, family=6)
        mixes(second, 200)
        settled(netns)
        first_counts, second_counts = iterator_counts(program, netns, second)
        for name, counts in ((netns, first_counts), (second, second_counts)):
            for family, flag in FAMILIES.items():
                assert per_family(counts, family) == ss_counts(name, flag, "state", "all"), (name, family)
        assert first_counts != second_counts
        v4 = per_family(first_counts, "ipv4")
        assert v4["syn_recv"] == 40 and v4["fin_wait2"] >= 60 and v4["time_wait"] >= 80
        assert per_family(first_counts, "ipv6")["close_wait"] == 3
        # The FIN_WAIT2 orphans are timewait sockets: only their substate makes them fin_wait2.
        timers = subprocess.run(in_netns(netns, ["ss", "-tanoH", "state", "fin-wait-2"]), capture_output=True,
                                text=True, check=True).stdout
        assert timers.count("timer:(timewait") >= 60
    finally:
        subprocess.run(["ip", "netns", "del", second], check=False)


def exposition(program, netns, socket_iterator, clock):
    """The metrics of ``netns`` from an exporter counting with the iterator or inet_diag."""
    dumper = NamespaceDumper(DumpWants(owners=True, ports=True),
                             socket_iterator=program.socket_iterator if socket_iterator else None)
    exporter = Exporter(CollectorSettings(port_include=frozenset({1})),
                        Sources(dumper, owner_walk=program.socket_owners, bpf_read=program.read), clock=clock)
    registry = CollectorRegistry()
    registry.register(exporter)
    try:
        text = generate_latest(registry).decode()
    finally:
        dumper.close()
    wanted = re.compile(r"^tcpwatch_(sockets|listen_queue_\w+|port_sockets|process_sockets|state_oldest_age_seconds)\{")
    return sorted(line for line in text.splitlines() if wanted.match(line) and f'netns="{netns}"' in line), text


def test_iterator_and_inet_diag_give_the_same_exposition(program, netns, mixes, workloads):
    leak = workloads("leak", netns=netns, count=4, comm="iterleak")
    queue = workloads("listen", netns=netns, count=8, comm="iterqueue")
    workloads("connect", netns=netns, port=queue.info["port"], count=3)
    mixes(netns, 200)
    time.sleep(0.3)   # the leak's CLOSE_WAIT sockets have an age
    now = time.monotonic()
    by_iterator, text = exposition(program, netns, True, lambda: now)
    by_diag, diag_text = exposition(program, netns, False, lambda: now)
    # The oldest TIME_WAIT comes from the kernel's timers, which run on between the two reads.
    timewait = re.compile(r'^tcpwatch_state_oldest_age_seconds\{.*state="time_wait"\} (\S+)$')
    ages = [[float(m.group(1)) for m in map(timewait.match, lines) if m] for lines in (by_iterator, by_diag)]
    assert len(ages[0]) == len(ages[1]) == 1 and abs(ages[0][0] - ages[1][0]) < 1.0
    assert [line for line in by_iterator if not timewait.match(line)] == [
        line for line in by_diag if not timewait.match(line)]
    assert 'tcpwatch_sockets_source_info{reason="",source="ebpf_iterator"} 1.0' in text
    assert 'tcpwatch_sockets_source_info{reason="ebpf_off",source="inet_diag"} 1.0' in diag_text
    joined = "\n".join(by_iterator)
    assert re.search(rf'tcpwatch_listen_queue_length\{{netns="{netns}",port="{queue.info["port"]}"\}} 3\.0', joined)
    assert re.search(r'tcpwatch_process_sockets\{[^}]*process="iterqueue"[^}]*state="established"\} 3\.0', joined)
    ages = re.findall(r'tcpwatch_state_oldest_age_seconds\{[^}]*process="iterleak"[^}]*state="close_wait"\} (\S+)',
                      joined)
    assert ages and 0.3 <= float(ages[0]) < 30   # joined to the eBPF entry time by cookie
    assert re.search(rf'tcpwatch_port_sockets\{{[^}}]*port="{leak.info["port"]}"[^}}]*state="close_wait"\}} 4\.0',
                     joined)


def test_a_refused_iterator_leaves_counting_to_inet_diag_with_one_warning():
    request = ebpf_plan.Request(max_sockets=1024, track_time_wait=False, socket_iterator=True)
    plan = ebpf_plan.make_plan(request)
    plan.socket_iterator_id = 1   # not an iterator: the kernel refuses to load socket_diag on it
    loaded = ebpf_load.load_here(request, plan)
    try:
        assert ebpf_load.SOCKET_ITERATOR not in loaded.iterators and loaded.links
        warnings = [note for note in loaded.notes if note[0] == "warning"]
        assert len(warnings) == 1 and "counted with inet_diag" in warnings[0][1]
        assert "refused" in warnings[0][2]["reason"]
    finally:
        loaded.close()


class FailingIterator:
    """An iterator whose every pass the kernel refuses (as after a detach)."""

    source = "ebpf_iterator"

    def open(self):
        raise OSError(9, "cannot start the socket iterator: Bad file descriptor")


def test_an_iterator_failing_at_a_scrape_falls_back_for_that_scrape(netns, workloads, caplog):
    workloads("states", netns=netns, count=2)
    settled(netns)
    dumps, read = dumps_by_name(NamespaceDumper(socket_iterator=FailingIterator()))
    assert (read.source, read.reason) == ("inet_diag", "iterator_failed")
    assert per_family(dumps[netns].snap.counts, "ipv4") == ss_counts(netns, "4", "state", "all")
    assert len([r for r in caplog.records if r.levelname == "WARNING" and "socket iterator failed" in r.msg]) == 1


def test_the_flag_forces_inet_diag_with_one_warning_and_sigterm_leaves_no_iterator(netns, workloads):
    workloads("states", netns=netns, count=2)
    settled(netns)
    before = iterator_links()
    forced = Daemon("--ebpf", "on", "--no-collector.bpf.socket-iterator", netns=netns)
    try:
        samples = forced.scrape()
        assert value(samples, "tcpwatch_sockets_source_info", source="inet_diag", reason="flag") == 1
        assert value(samples, "tcpwatch_sockets", family="ipv4", state="close_wait") == 2
        assert len([line for line in forced.log if "level=warn" in line and "inet_diag" in line]) == 1
    finally:
        assert forced.stop() == 0
    counting = Daemon("--ebpf", "on", netns=netns)
    try:
        assert iterator_links() == before + 2   # socket owners and socket counting
        samples = counting.scrape()
        assert value(samples, "tcpwatch_sockets_source_info", source="ebpf_iterator", reason="") == 1
        assert value(samples, "tcpwatch_sockets", family="ipv4", state="close_wait") == 2
        assert "sockets=ebpf_iterator" in counting.log[-1]
    finally:
        assert counting.stop() == 0
    wait_for(lambda: iterator_links() == before, timeout=5, what="the iterator links to go")


def iterator_links():
    out = subprocess.run(["bpftool", "link", "show"], capture_output=True, text=True, check=True).stdout
    return len(re.findall(r"^\d+: iter ", out, re.M))
