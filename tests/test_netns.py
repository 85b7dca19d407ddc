"""Every network namespace, with real containers: podman (runc) and a containerd CRI pod.

tcpwatch runs in the host's namespace; the sockets live in podman containers, in a pod
sandbox made over CRI, and in an ``ip netns`` namespace. Each is reported under its name,
with counts equal to ``nsenter -t PID -n ss -tan`` there, owners with their container and
pod, and eBPF transitions in the container's own series.
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from containers import Containerd, Podman, ss_in
from helpers import PYTHON, ROOT, series, tcpwatch, value, wait_for

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not (shutil.which("podman") and shutil.which("containerd")),
                                 reason="podman and containerd are installed by `make test`")]

STABLE = ("established", "listen", "close_wait", "fin_wait2", "syn_sent")


@pytest.fixture(scope="module")
def runtimes():
    workdir = Path(tempfile.mkdtemp(prefix="tcpwatch-containers-"))
    podman = Podman(workdir)
    containerd = None
    try:
        containerd = Containerd(workdir, podman)
        yield podman, containerd
    finally:
        if containerd is not None:
            containerd.close()
        podman.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def podman(runtimes):
    return runtimes[0]


@pytest.fixture
def cri(runtimes):
    containerd = runtimes[1]
    before = list(containerd.sandboxes)
    yield containerd
    for sandbox in containerd.sandboxes:
        if sandbox not in before:
            containerd.remove(sandbox)


def host_daemon(daemons, cri, *flags):
    return daemons("--collector.netns.containerd-state", str(cri.state), *flags)


def netns_inode(pid):
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def test_each_namespace_counted_under_its_name_equal_to_ss(podman, cri, netns, workloads, daemons):
    web = podman.workload("tcpw-web", "states", count=3)
    leaky = podman.workload("tcpw-leaky", "leak", count=4, comm="leaker")
    pod = cri.pod("cart", "shop")
    cri.container(pod, "app", "leak", count=5, comm="cartleak")
    workloads("pairs", netns=netns, count=6)
    daemon = host_daemon(daemons, cri, "--ebpf", "off")
    where = {"tcpw-web": podman.pid("tcpw-web"), "tcpw-leaky": podman.pid("tcpw-leaky"),
             "shop/cart": cri.sandbox_pid(pod[0])}

    def agreed():
        samples = daemon.scrape()
        for name, pid in where.items():
            theirs = ss_in(pid)
            ours = {s: value(samples, "tcpwatch_sockets", netns=name, family="ipv4", state=s) for s in STABLE}
            if ours != {s: theirs[s] for s in STABLE}:
                return None
        return samples

    samples = wait_for(agreed, timeout=20, interval=0.3, what="tcpwatch == ss in every container")
    assert value(samples, "tcpwatch_sockets", netns="tcpw-web", family="ipv4", state="established") == 8
    assert value(samples, "tcpwatch_sockets", netns="shop/cart", family="ipv4", state="close_wait") == 5
    assert value(samples, "tcpwatch_sockets", netns=netns, family="ipv4", state="established") == 12
    info = {labels: v for labels, v in series(samples, "tcpwatch_netns_info").items()}
    kinds = {dict(labels)["netns"]: dict(labels) for labels in info}
    assert kinds["tcpw-web"]["kind"] == "container" and kinds["tcpw-web"]["runtime"] == "podman"
    assert kinds["shop/cart"]["kind"] == "pod" and kinds["shop/cart"]["pod_namespace"] == "shop"
    assert kinds["shop/cart"]["pod"] == "cart" and kinds["shop/cart"]["runtime"] == "containerd"
    assert kinds[netns]["kind"] == "named"
    assert kinds["host"]["kind"] == "host"
    assert int(kinds["tcpw-web"]["inode"]) == netns_inode(where["tcpw-web"])
    # None of the containers' sockets is counted in the host's namespace.
    host_pid = os.getpid()
    host_ss = ss_in(host_pid)
    host = {s: value(samples, "tcpwatch_sockets", netns="host", family="ipv4", state=s) for s in ("listen", "close_wait")}
    assert host == {s: host_ss[s] for s in ("listen", "close_wait")}
    # Owners carry their container and pod.
    assert value(samples, "tcpwatch_process_sockets", netns="tcpw-leaky", process="leaker",
                 container="tcpw-leaky", state="close_wait") == 4
    assert value(samples, "tcpwatch_process_sockets", netns="shop/cart", process="cartleak", container="app",
                 pod_namespace="shop", pod="cart", state="close_wait") == 5
    assert value(samples, "tcpwatch_netns_unreadable") == 0
    for w in (web, leaky):
        w.stop()


def test_leak_in_a_container_has_owner_and_growing_exact_age(podman, cri, daemons):
    daemon = host_daemon(daemons, cri, "--ebpf", "on")
    podman.workload("tcpw-leak2", "leak", count=3, comm="leaker2")
    labels = dict(netns="tcpw-leak2", state="close_wait", process="leaker2", container="tcpw-leak2")
    first = wait_for(lambda: value(daemon.scrape(), "tcpwatch_state_oldest_age_seconds", **labels),
                     timeout=15, what="the container's CLOSE_WAIT age")
    time.sleep(1.5)
    second = value(daemon.scrape(), "tcpwatch_state_oldest_age_seconds", **labels)
    assert second >= first + 1.4
    # The eBPF program saw the sockets enter CLOSE_WAIT after it attached: the age is exact,
    # so it is already more than the time between the container start and the first scrape.
    assert first > 0


def test_connections_in_a_container_land_in_its_transitions(podman, cri, daemons):
    port = 23170
    daemon = host_daemon(daemons, cri, "--ebpf", "on", "--collector.bpf.ports", f"{port}-{port}")
    load = podman.workload("tcpw-churn", "churn", count=10, **{"listen-port": port})

    def counted():
        s = daemon.scrape()
        n = value(s, "tcpwatch_state_transitions_total", netns="tcpw-churn", **{"from": "syn_sent", "to": "established"})
        return s if n == 10 else None

    samples = wait_for(counted, timeout=15, what="10 handshakes in the container's series")
    assert value(samples, "tcpwatch_state_transitions_total", netns="host",
                 **{"from": "syn_sent", "to": "established"}) == 0
    assert value(samples, "tcpwatch_state_duration_seconds_count", netns="tcpw-churn", state="syn_sent") == 10
    assert value(samples, "tcpwatch_state_duration_seconds_count", netns="host", state="syn_sent") == 0
    load.stop()


def test_removed_container_leaves_the_exposition_and_the_cap_holds(podman, cri, netns, workloads, daemons):
    daemon = host_daemon(daemons, cri, "--ebpf", "off", "--collector.netns.max-series", "2")
    loads = [podman.workload(f"tcpw-cap{i}", "pairs", count=i + 1) for i in range(4)]
    workloads("pairs", netns=netns, count=10)     # the most sockets: always named

    def capped():
        s = daemon.scrape()
        names = {dict(labels)["netns"] for labels in series(s, "tcpwatch_sockets")}
        return (s, names) if "tcpw-cap3" in names else None

    samples, names = wait_for(capped, timeout=15, what="the biggest namespaces named")
    assert names == {"host", netns, "tcpw-cap3", "other"}
    # other sums the three smaller containers: 2 * (1 + 2 + 3) established sockets
    assert value(samples, "tcpwatch_sockets", netns="other", family="ipv4", state="established") >= 12
    loads[3].stop()
    wait_for(lambda: podman.gone("tcpw-cap3"), timeout=20, what="the container removed")
    names = {dict(labels)["netns"] for labels in series(daemon.scrape(), "tcpwatch_sockets")}
    assert "tcpw-cap3" not in names and "tcpw-cap2" in names


def test_without_cap_sys_admin_only_the_host_namespace_with_one_warning(podman, cri, daemons):
    podman.workload("tcpw-nopriv", "pairs", count=2)
    daemon = daemons("--ebpf", "off", wrapper=["setpriv", "--bounding-set", "-sys_admin", "--"])
    first = daemon.scrape()
    second = daemon.scrape()
    names = {dict(labels)["netns"] for labels in series(second, "tcpwatch_sockets")}
    assert names == {"host"}
    assert value(first, "tcpwatch_netns_unreadable") >= 1
    assert value(second, "tcpwatch_netns_unreadable") == value(first, "tcpwatch_netns_unreadable")
    daemon.stop()
    log = "".join(daemon.log) + daemon.proc.stderr.read()
    assert log.count("cannot enter other network namespaces") == 1


def test_snapshot_and_trace_name_the_namespace(podman, cri):
    podman.workload("tcpw-snap", "leak", count=2, comm="snapper")
    state = ["--collector.netns.containerd-state", str(cri.state)]
    out = tcpwatch(None, "snapshot", "--netns", "tcpw-snap", *state).stdout
    assert out.startswith("== netns tcpw-snap (container")
    assert [line.split() for line in out.splitlines() if "snapper" in line] == [["snapper", "2"]]
    report = json.loads(tcpwatch(None, "snapshot", "--json", *state).stdout)
    assert "tcpw-snap" in {ns["netns"] for ns in report["namespaces"]}
    bad = tcpwatch(None, "snapshot", "--netns", "no-such-namespace", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_leak_alert_for_a_pod_carries_its_namespace_and_pod(cri, daemons):
    """The leak alert's expression, evaluated by a real Prometheus scraping tcpwatch, fires
    for a pod's leaking process with namespace and pod labels (thresholds lowered from 20
    sockets and 600 s to 5 and 1 s: the rule's timing is promtool's job)."""
    from peers import Prometheus

    pod = cri.pod("checkout", "payments")
    cri.container(pod, "api", "leak", count=6, comm="payleak")
    daemon = host_daemon(daemons, cri, "--ebpf", "off")
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    expr = next(r["expr"] for r in rules if r.get("alert") == "TcpwatchCloseWaitLeak")
    assert ">= 20" in expr and "> 600" in expr
    expr = expr.replace(">= 20", ">= 5").replace("> 600", "> 1")
    workdir = tempfile.mkdtemp(prefix="tcpwatch-prom-")
    prom = Prometheus(None, daemon.address, workdir, port=free_port())
    try:
        wait_for(lambda: prom.ready() or prom.proc.poll() is not None, timeout=30, interval=0.3,
                 what="prometheus ready")
        assert prom.proc.poll() is None, prom.log.read_text()[-2000:]
        result = wait_for(lambda: prom.query(expr)[0]["data"]["result"], timeout=30, interval=0.5,
                          what="the leak expression to fire")
    finally:
        prom.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    labels = [r["metric"] for r in result]
    assert len(labels) == 1, labels
    assert {k: labels[0].get(k) for k in ("namespace", "pod", "netns", "process", "container")} == {
        "namespace": "payments", "pod": "checkout", "netns": "payments/checkout",
        "process": "payleak", "container": "api"}


def test_the_unit_capabilities_are_enough_for_every_namespace(podman, cri, daemons):
    """As the systemd unit runs it: an unprivileged user with exactly the unit's capabilities
    enters the container's namespace, reads its owners and names it from podman's state."""
    from peers import setpriv_with_unit_capabilities

    podman.workload("tcpw-unit", "leak", count=3, comm="unitleak")
    daemon = daemons("--ebpf", "off", wrapper=setpriv_with_unit_capabilities())
    samples = wait_for(lambda: (lambda s: s if value(s, "tcpwatch_process_sockets", netns="tcpw-unit",
                                                     process="unitleak", container="tcpw-unit",
                                                     state="close_wait") == 3 else None)(daemon.scrape()),
                       timeout=15, what="the container read by the unprivileged daemon")
    assert value(samples, "tcpwatch_netns_unreadable") == 0


def test_a_host_network_container_is_told_apart_by_its_owner(podman, cri, daemons):
    """--network host: the sockets are the host's, and only their owner names the container."""
    podman.workload("tcpw-hostnet", "leak", network="host", count=3, comm="hostleak")
    daemon = host_daemon(daemons, cri, "--ebpf", "off")
    samples = wait_for(lambda: (lambda s: s if value(s, "tcpwatch_process_sockets", netns="host", process="hostleak",
                                                     container="tcpw-hostnet", state="close_wait") == 3
                                else None)(daemon.scrape()),
                       timeout=15, what="the host-network container's sockets under its name")
    names = {dict(labels)["netns"] for labels in series(samples, "tcpwatch_sockets")}
    assert "tcpw-hostnet" not in names


def test_kernel_counters_are_the_namespace_own(podman, cri, daemons):
    podman.workload("tcpw-snmp", "pairs", count=7)
    pid = podman.pid("tcpw-snmp")
    daemon = host_daemon(daemons, cri, "--ebpf", "off")
    samples = daemon.scrape()

    def snmp(group, field):
        lines = Path(f"/proc/{pid}/net/{'snmp' if group == 'Tcp' else 'netstat'}").read_text().splitlines()
        header, values = next((a, b) for a, b in zip(lines[::2], lines[1::2]) if a.startswith(group + ":"))
        return int(dict(zip(header.split(), values.split()))[field])

    assert value(samples, "tcpwatch_connections_opened_total", netns="tcpw-snmp", direction="active") == 7
    assert value(samples, "tcpwatch_connections_opened_total", netns="tcpw-snmp", direction="passive") == 7
    assert snmp("Tcp", "ActiveOpens") == 7
    assert value(samples, "tcpwatch_listen_overflows_total", netns="tcpw-snmp") == snmp("TcpExt", "ListenOverflows")
    assert value(samples, "tcpwatch_aborts_total", netns="tcpw-snmp", reason="close") == 0
    assert value(samples, "tcpwatch_ephemeral_ports", netns="tcpw-snmp") > 0


def test_trace_names_the_namespace_of_each_transition(podman, cri):
    port = 23180
    trace = subprocess.Popen([PYTHON, "-m", "tcpwatch", "trace", "--json", "--port", str(port), "--duration", "40",
                              "--collector.netns.containerd-state", str(cri.state)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        # The program compiles in a few seconds: keep making connections until one is seen.
        load = podman.workload("tcpw-trace", "traffic", rounds=60, count=1, seconds=0.5,
                               **{"listen-port": port})
        inode = netns_inode(podman.pid("tcpw-trace"))
        line = json.loads(wait_for(trace.stdout.readline, timeout=60, what="a traced transition"))
        load.stop()
    finally:
        trace.terminate()
        trace.wait(10)
    assert line["netns"] == inode
    assert line["netns_name"] == "tcpw-trace"
