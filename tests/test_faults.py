"""Faults injected for real: each gives a counted, logged, recovered condition, never a crash
and never a wrong number presented as right."""

import os
import shutil
import signal
import subprocess
import threading
import time

import pytest

from helpers import Daemon, series, value, wait_for
from fixtures import OneNamespace
from tcpwatch.collectors import CollectorSettings
from tcpwatch.exporter import Exporter
from tcpwatch.snapshot import Sources
from tcpwatch.sources import inet_diag

pytestmark = pytest.mark.root


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile_limits(pid):
    with open(f"/proc/{pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    return line.split()[3:5]


def test_scan_failure_is_counted_and_recovers(netns, daemons, workloads):
    """Out of fds mid-run: the dump's netlink socket is kept open, so it is the namespace
    discovery (listing /proc) that fails; nothing half-read is exported."""
    workloads("pairs", netns=netns, count=3)
    # Without the owner walk, which runs in a thread beside the scan and would race it for
    # the one fd left.
    daemon = daemons("--ebpf", "off", "--no-collector.process", netns=netns)
    pid = daemon.proc.pid
    assert value(daemon.scrape(), "tcpwatch_scrape_collector_success", collector="inet_diag") == 1
    # Leave room for the scrape's own connection only: listing /proc gets EMFILE.
    soft, hard = nofile_limits(pid)
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={open_fds(pid) + 1}:{hard}"], check=True)
    failed = daemon.scrape()
    assert value(failed, "tcpwatch_scrape_collector_success", collector="inet_diag") == 0
    assert value(failed, "tcpwatch_scrape_collector_errors_total", collector="inet_diag") >= 1
    assert not series(failed, "tcpwatch_sockets"), "no socket counts when the dump failed"
    assert not series(failed, "tcpwatch_process_sockets")
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={soft}:{hard}"], check=True)
    recovered = daemon.scrape()
    assert value(recovered, "tcpwatch_scrape_collector_success", collector="inet_diag") == 1
    # 3 pairs, plus both ends of this scrape's own connection.
    assert value(recovered, "tcpwatch_sockets", family="ipv4", state="established") == 6 + 2
    daemon.stop()
    assert "inet_diag collector failed" in "".join(daemon.log) + daemon.proc.stderr.read()


def test_processes_and_sockets_that_vanish_mid_scrape(netns, daemons, workloads):
    """Connections churn and short-lived processes come and go while scrapes run."""
    daemon = daemons("--ebpf", "off", netns=netns)
    churn = workloads("traffic", netns=netns, rounds=60, count=20, close=2, seconds=0.05)
    stop = threading.Event()

    def spawn():
        for _ in range(300):                     # bounded: 300 processes of a few ms each
            if stop.is_set():
                break
            subprocess.run(["ip", "netns", "exec", daemon.netns, "true"], check=False)

    spawner = threading.Thread(target=spawn)
    spawner.start()
    try:
        for _ in range(15):
            samples = daemon.scrape()
            for collector in ("inet_diag", "process"):
                assert value(samples, "tcpwatch_scrape_collector_success", collector=collector) == 1
    finally:
        stop.set()
        spawner.join(60)
    assert value(samples, "tcpwatch_scrape_collector_errors_total", collector="process") == 0
    churn.stop()


def test_detached_program_reads_as_a_failure_not_as_zeros(netns):
    from tcpwatch.sources.bpf import BpfProgram

    program = BpfProgram(max_sockets=64, port_range=(21980, 21989), track_time_wait=False)
    collector = Exporter(CollectorSettings(process_enabled=False),
                         Sources(OneNamespace(inet_diag.dump), bpf_read=program.read))
    assert {f.name for f in collector.collect()} >= {"tcpwatch_state_transitions"}
    program.close()
    families = {f.name: f for f in collector.collect()}
    assert "tcpwatch_state_transitions" not in families
    success = {s.labels["collector"]: s.value for s in families["tcpwatch_scrape_collector_success"].samples}
    assert success["ebpf"] == 0 and success["inet_diag"] == 1
    errors = {s.labels["collector"]: s.value for s in families["tcpwatch_scrape_collector_errors"].samples}
    assert errors["ebpf"] == 1


def test_lru_map_full_under_churn_is_counted(netns, daemons, workloads):
    daemon = daemons("--ebpf", "on", "--collector.bpf.max-sockets", "16", "--collector.bpf.ports",
                     "21970-21979", netns=netns)
    pairs = workloads("pairs", netns=netns, count=100, **{"listen-port": 21975})
    pairs.stop()                                    # 200 sockets close; most were evicted
    samples = wait_for(lambda: (lambda s: s if value(s, "tcpwatch_ebpf_untracked_total",
                                                     reason="unknown_socket") > 0 else None)(daemon.scrape()),
                       what="evictions counted")
    assert value(samples, "tcpwatch_scrape_collector_success", collector="ebpf") == 1
    assert value(samples, "tcpwatch_state_transitions_total", **{"from": "listen", "to": "syn_recv"}) == 100


@pytest.mark.parametrize("attach", ["tp_btf", "tracepoint"])
def test_tracefs_missing_at_start_and_unmounted_while_running(netns, daemons, attach):
    # No tracefs in the daemon's mount namespace: the classic tracepoints cannot be used, and
    # auto degrades with the reason; tp_btf does not need tracefs.
    argv_prefix = ["sh", "-c", "umount /sys/kernel/tracing 2>/dev/null; exec \"$@\"", "sh"]
    without = daemons("--ebpf", "auto", "--collector.bpf.attach", attach, netns=netns, wrapper=argv_prefix)
    if attach == "tracepoint":
        assert value(without.scrape(), "tcpwatch_ebpf_enabled") == 0
        assert any("tracefs is not mounted" in line for line in without.log), without.log
    else:
        assert value(without.scrape(), "tcpwatch_ebpf_attach_info", mode="tp_btf", reason="requested") == 1
    without.stop()
    # Attached, then tracefs goes away: the attached program keeps counting.
    daemon = daemons("--ebpf", "on", "--collector.bpf.attach", attach, "--collector.bpf.ports", "21960-21969",
                     netns=netns)
    subprocess.run(["nsenter", f"--mount=/proc/{daemon.proc.pid}/ns/mnt", "umount", "/sys/kernel/tracing"],
                   check=True)
    samples = daemon.scrape()
    assert value(samples, "tcpwatch_ebpf_enabled") == 1
    assert value(samples, "tcpwatch_scrape_collector_success", collector="ebpf") == 1


def bcc_programs():
    from peers import our_programs

    return our_programs()


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed")
@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0])
def test_sigterm_during_start_up_exits_cleanly_with_nothing_left_in_the_kernel(netns, delay):
    """SIGTERM while the eBPF program compiles or attaches (start-up takes about 1-3 s)."""
    baseline = bcc_programs()
    proc = subprocess.Popen(["ip", "netns", "exec", netns, "sh", "-c",
                             "mount -t tracefs tracefs /sys/kernel/tracing; exec \"$@\"", "sh",
                             *Daemon.command("--ebpf", "on", "--collector.bpf.ports", "21950-21959")],
                            stderr=subprocess.PIPE, text=True, cwd=Daemon.cwd)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    wait_for(lambda: bcc_programs() == baseline, timeout=5, what="no program of ours left")


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed")
def test_sigterm_mid_scrape(netns, daemons, workloads):
    baseline = bcc_programs()
    workloads("pairs", netns=netns, count=2000)
    daemon = daemons("--ebpf", "on", "--collector.bpf.ports", "21940-21949", netns=netns)
    results = []
    scraper = threading.Thread(target=lambda: results.append(daemon.get()))
    scraper.start()
    time.sleep(0.15)                              # the scrape's process starts and connects
    assert daemon.stop() == 0
    scraper.join(30)
    assert "Traceback" not in "".join(daemon.log) + daemon.proc.stderr.read()
    wait_for(lambda: bcc_programs() == baseline, timeout=5, what="no program of ours left")


def test_namespaces_that_come_and_go_mid_scrape_are_never_an_error(daemons):
    """ip netns add/del in a loop while tcpwatch, reading every namespace, is scraped: a
    namespace gone before its dump is skipped (and counted), never a failed collector."""
    daemon = daemons("--ebpf", "off", "--no-collector.process")
    stop = threading.Event()
    made = []

    def churn():
        for i in range(150):                     # bounded: 150 namespaces, each a few ms
            if stop.is_set():
                break
            name = f"tcpw-vanish-{os.getpid()}-{i}"
            subprocess.run(["ip", "netns", "add", name], check=True)
            made.append(name)
            subprocess.run(["ip", "netns", "del", name], check=True)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        scrapes = []
        deadline = time.monotonic() + 30
        while worker.is_alive() and time.monotonic() < deadline:
            scrapes.append(daemon.scrape())
    finally:
        stop.set()
        worker.join(60)
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    assert len(scrapes) >= 3
    for samples in scrapes:
        assert value(samples, "tcpwatch_scrape_collector_success", collector="inet_diag") == 1
        assert value(samples, "tcpwatch_netns_read_failures_total", reason="error") == 0
    daemon.stop()
    assert "Traceback" not in "".join(daemon.log) + daemon.proc.stderr.read()
