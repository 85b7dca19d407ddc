"""The real eBPF program, loaded by the daemon, against real sockets in a private netns.

eBPF sees every network namespace, so the daemon times only ports 21000-21999, which the
tests use and nothing else on the host does (they are below the ephemeral range). Every test
runs in both attach modes: tp_btf and the classic tracepoints.
"""

import os
import shutil
import subprocess
import time

import pytest

from helpers import Daemon, Workload, delayed_pair, series, ss_counts, value, wait_for
from peers import our_programs

pytestmark = pytest.mark.root

PORTS = "21000-21999"


@pytest.fixture(scope="module", params=["tp_btf", "tracepoint"])
def attach(request):
    return request.param


@pytest.fixture(scope="module")
def ns(attach):
    """One namespace per attach mode: the other mode's TIME_WAIT sockets stay out of its counts."""
    name = f"tcpw-ebpf-{attach}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(scope="module")
def daemon(ns, attach):
    d = Daemon("--ebpf", "on", "--collector.bpf.attach", attach, "--collector.bpf.ports", PORTS, netns=ns)
    yield d
    assert d.stop() == 0


def transitions(samples):
    return {(dict(k)["from"], dict(k)["to"]): v for k, v in series(samples, "tcpwatch_state_transitions_total").items()}


def increase(before, after):
    return {pair: after[pair] - before.get(pair, 0) for pair in after if after[pair] != before.get(pair, 0)}


def histogram(samples, state):
    return (value(samples, "tcpwatch_state_duration_seconds_count", state=state),
            value(samples, "tcpwatch_state_duration_seconds_sum", state=state))


def test_ebpf_is_enabled(daemon, attach):
    samples = daemon.scrape()
    assert value(samples, "tcpwatch_ebpf_enabled") == 1
    assert value(samples, "tcpwatch_ebpf_attach_info", mode=attach, reason="requested") == 1
    assert value(samples, "tcpwatch_scrape_collector_success", collector="ebpf") == 1


def test_transitions_equal_what_the_kernel_did(ns, daemon):
    n = 25
    before = transitions(daemon.scrape())
    load = Workload("churn", netns=ns, count=n, **{"listen-port": 21001})
    load.stop()
    expected = {
        ("close", "listen"): 1, ("listen", "close"): 1,
        # client: connect, handshake, active close
        ("close", "syn_sent"): n, ("syn_sent", "established"): n, ("established", "fin_wait1"): n,
        ("fin_wait1", "fin_wait2"): n, ("fin_wait2", "close"): n,
        # server: accepted child, passive close
        ("listen", "syn_recv"): n, ("syn_recv", "established"): n, ("established", "close_wait"): n,
        ("close_wait", "last_ack"): n, ("last_ack", "close"): n,
    }
    got = wait_for(lambda: (lambda d: d if d == expected else None)(increase(before, transitions(daemon.scrape()))),
                   timeout=10, what=f"transition increases == {expected}")
    assert got == expected
    # The kernel agrees: every client went to TIME_WAIT through fin_wait2 -> close.
    assert ss_counts(ns, 4, "dport", "=", ":21001")["time_wait"] == n
    names = {state for pair in transitions(daemon.scrape()) for state in pair}
    assert not names & {"time_wait", "new_syn_recv"}


def test_fin_wait1_self_transition(ns, daemon):
    before = transitions(daemon.scrape())
    load = Workload("fin_wait1_self", netns=ns, **{"listen-port": 21002})
    assert load.info["received"] == load.info["sent"] > 0
    load.stop()
    got = wait_for(lambda: (lambda d: d if d.get(("fin_wait2", "close")) else None)(
        increase(before, transitions(daemon.scrape()))), what="the orphan to finish")
    assert got.get(("fin_wait1", "fin_wait1")) == 1
    assert got.get(("established", "fin_wait1")) == 1


def test_close_wait_duration_and_exact_age(ns, daemon):
    k, hold = 6, 2.0
    before = histogram(daemon.scrape(), "close_wait")
    load = Workload("close_wait_for", netns=ns, count=k, seconds=hold, comm="cwtimed",
                    **{"listen-port": 21003})
    time.sleep(0.8)
    during = daemon.scrape()
    # First scrape to see these sockets, yet the age is already about 0.8 s: it comes from
    # the program's entry time, not from first-seen.
    age = value(during, "tcpwatch_state_oldest_age_seconds", state="close_wait", process="cwtimed")
    assert age is not None and 0.7 <= age <= hold + 0.5
    assert value(during, "tcpwatch_process_sockets", process="cwtimed", state="close_wait") == k
    released = load.next_info()
    load.stop()
    after = wait_for(lambda: (lambda h: h if h[0] - before[0] == k else None)(histogram(daemon.scrape(), "close_wait")),
                     what=f"{k} close_wait observations")
    mean = (after[1] - before[1]) / k
    assert abs(mean - released["held_seconds"]) <= 0.15 * released["held_seconds"], mean


def test_syn_sent_duration_is_the_handshake(ns, daemon):
    before = histogram(daemon.scrape(), "syn_sent")
    Workload("churn", netns=ns, count=10, **{"listen-port": 21004}).stop()
    after = wait_for(lambda: (lambda h: h if h[0] - before[0] == 10 else None)(histogram(daemon.scrape(), "syn_sent")),
                     what="10 syn_sent observations")
    mean = (after[1] - before[1]) / 10
    assert 0 < mean < 0.01   # loopback: microseconds


def test_syn_sent_duration_matches_a_known_round_trip_time(attach):
    """Two namespaces joined by tun devices and a forwarder that delays each packet 40 ms
    each way: every handshake's SYN_SENT lasts one round trip, 80 ms."""
    one_way_ms, k = 40, 8
    with delayed_pair("tcpw-rtt", one_way_ms) as (a, b):
        daemon = Daemon("--ebpf", "on", "--collector.bpf.attach", attach, "--collector.bpf.ports", "21600-21699",
                        netns=a)
        try:
            before = histogram(daemon.scrape(), "syn_sent")
            server = Workload("listen", netns=b, count=k, host="198.18.0.2", **{"listen-port": 21601})
            Workload("connect", netns=a, count=k, port=21601, host="198.18.0.2").stop()
            server.stop()
            after = wait_for(lambda: (lambda h: h if h[0] - before[0] == k else None)(
                histogram(daemon.scrape(), "syn_sent")), what=f"{k} syn_sent observations")
            mean = (after[1] - before[1]) / k
            rtt = 2 * one_way_ms / 1000
            assert abs(mean - rtt) <= 0.15 * rtt, mean
        finally:
            daemon.stop()


@pytest.mark.slow
def test_time_wait_expires_after_60s_and_reuse_is_shorter(ns, attach):
    # Its own daemon and port range: other tests' TIME_WAIT sockets expire meanwhile.
    daemon = Daemon("--ebpf", "on", "--collector.bpf.attach", attach, "--collector.bpf.ports", "21500-21599",
                    netns=ns)
    try:
        _check_time_wait(ns, daemon)
    finally:
        assert daemon.stop() == 0


def _check_time_wait(ns, daemon):
    def buckets(samples):
        return {float(dict(k)["le"]): v for k, v in series(samples, "tcpwatch_state_duration_seconds_bucket").items()
                if dict(k)["state"] == "time_wait"}

    start = daemon.scrape()
    count0, sum0 = histogram(start, "time_wait")
    load = Workload("time_wait", netns=ns, seconds=1.5, **{"listen-port": 21505, "client-port": 21550})
    assert load.next_info()["state"] == "reused"
    reused = wait_for(lambda: (lambda s: s if histogram(s, "time_wait")[0] == count0 + 1 else None)(daemon.scrape()),
                      what="the reused TIME_WAIT to be observed")
    early = histogram(reused, "time_wait")[1] - sum0
    assert 1.0 <= early <= 3.0, early
    expired = wait_for(lambda: (lambda s: s if histogram(s, "time_wait")[0] == count0 + 2 else None)(daemon.scrape()),
                       timeout=80, interval=1.0, what="the other TIME_WAIT to expire")
    normal = histogram(expired, "time_wait")[1] - sum0 - early
    assert 58.0 <= normal <= 70.0, normal
    grew = {le: v - buckets(start).get(le, 0) for le, v in buckets(expired).items()}
    assert grew[2 ** 31 / 1e9] == 1 and grew[2 ** 35 / 1e9] == 1 and grew[2 ** 36 / 1e9] == 2
    load.stop()


@pytest.mark.skipif(shutil.which("iptables") is None, reason="iptables not installed")
def test_a_time_wait_restarted_by_a_repeated_fin_is_timed_from_its_restart(ns, attach):
    """The peer's FIN comes again while its ACK is lost: each time 2MSL restarts (the timer is
    cancelled and started again), which is no death; the socket dies once, when its 4-tuple is
    reused 4 s after it entered TIME_WAIT, aged from its last restart (about 1.4 s in)."""
    daemon = Daemon("--ebpf", "on", "--collector.bpf.attach", attach, "--collector.bpf.ports", "21600-21699",
                    netns=ns)
    try:
        count0, sum0 = histogram(daemon.scrape(), "time_wait")
        load = Workload("time_wait_restart", netns=ns, seconds=3.0, **{"client-port": 21650})
        try:
            assert load.info["state"] == "restarted" and load.next_info()["state"] == "reused"
            died = wait_for(lambda: (lambda s: s if histogram(s, "time_wait")[0] > count0 else None)(daemon.scrape()),
                            what="the reused TIME_WAIT to be observed")
            time.sleep(0.5)
            count, total = histogram(daemon.scrape(), "time_wait")
            assert count == count0 + 1 and histogram(died, "time_wait")[0] == count0 + 1
            assert 1.5 <= total - sum0 <= 3.4, total - sum0   # from birth it would be 4 s
        finally:
            load.stop()
    finally:
        assert daemon.stop() == 0


def test_ebpf_on_without_privilege_exits_2_and_auto_degrades(ns):
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) not installed")
    drop = ["setpriv", "--bounding-set", "-bpf,-perfmon,-sys_admin", "--inh-caps", "-bpf,-perfmon,-sys_admin"]
    from helpers import PYTHON, ROOT

    result = subprocess.run([*drop, PYTHON, "-m", "tcpwatch", "run", "--ebpf", "on",
                             "--web.listen-address", "127.0.0.1:0"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--ebpf on" in result.stderr
    assert "Traceback" not in result.stderr

    auto = Daemon("--ebpf", "auto", netns=ns, wrapper=drop)
    try:
        samples = auto.scrape()
        assert value(samples, "tcpwatch_ebpf_enabled") == 0
        assert value(samples, "tcpwatch_sockets", family="ipv4", state="listen") >= 1
        assert any("ebpf disabled" in line for line in auto.log)
    finally:
        assert auto.stop() == 0


def test_sigterm_leaves_no_program_attached(ns, attach):
    if not shutil.which("bpftool"):
        pytest.skip("bpftool not installed")
    baseline = our_programs()
    d = Daemon("--ebpf", "on", "--collector.bpf.attach", attach, "--collector.bpf.ports", "21990-21999", netns=ns)
    try:
        # state changes, retransmits, resets sent and received, two timer hooks for TIME_WAIT
        # (expiry, cancel), the socket-owner and the socket-counting iterators
        assert our_programs() == baseline + 8
    finally:
        assert d.stop() == 0
    wait_for(lambda: our_programs() == baseline, timeout=5, what="the programs to be unloaded")
