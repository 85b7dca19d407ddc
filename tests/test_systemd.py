"""The systemd unit: it verifies, its exposure is low, tcpwatch works under exactly its
capabilities, and the daemon speaks sd_notify (readiness, watchdog, stopping)."""

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from helpers import ROOT, value, wait_for
from peers import UNIT, setpriv_with_unit_capabilities, unit_setting

NODE_EXPORTER_UNIT = Path("/lib/systemd/system/prometheus-node-exporter.service")
systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")


def exposure(unit_path):
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit_path)],
                         capture_output=True, text=True, timeout=60).stdout
    return float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out).group(1))


@systemd_analyze
def test_unit_verifies(tmp_path):
    # ExecStart points where deploy/install.sh puts the venv; verify against this checkout's.
    text = UNIT.read_text().replace("/opt/tcpwatch/venv/bin/tcpwatch", str(ROOT / ".venv" / "bin" / "tcpwatch"))
    unit = tmp_path / "tcpwatch.service"
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@systemd_analyze
def test_unit_exposure_is_well_below_node_exporters():
    ours = exposure(UNIT)
    assert ours <= 3.0, ours
    if NODE_EXPORTER_UNIT.exists():
        assert exposure(NODE_EXPORTER_UNIT) - ours >= 5.0


def test_unit_grants_exactly_the_capabilities_it_bounds():
    assert unit_setting("CapabilityBoundingSet") == unit_setting("AmbientCapabilities")
    assert unit_setting("DynamicUser") == ["yes"] and unit_setting("NoNewPrivileges") == ["yes"]
    assert unit_setting("Type") == ["notify"]


@pytest.mark.root
def test_ebpf_and_owners_work_under_exactly_the_unit_capabilities(netns, workloads, daemons):
    workloads("leak", netns=netns, count=5, comm="rootleak")        # owned by root, not by us
    daemon = daemons("--ebpf", "on", netns=netns, wrapper=setpriv_with_unit_capabilities())
    # `ip netns exec`, `sh -c` and setpriv each exec into the next: the pid is tcpwatch's.
    status = open(f"/proc/{daemon.proc.pid}/status").read()
    assert re.search(r"^Uid:\s+65534\b", status, re.M)
    assert "ebpf=True" in daemon.log[-1] and "ebpf_time_wait=True" in daemon.log[-1], daemon.log
    samples = wait_for(lambda: (lambda s: s if value(s, "tcpwatch_process_sockets", process="rootleak",
                                                     state="close_wait") == 5 else None)(daemon.scrape()),
                       what="root's sockets attributed by an unprivileged tcpwatch")
    assert value(samples, "tcpwatch_ebpf_enabled") == 1
    # The test machine's pid 1 (a sandbox agent) refuses its fd links even to CAP_SYS_PTRACE,
    # so tcpwatch_process_unreadable is not 0 here; the workload's sockets are all attributed.
    assert value(samples, "tcpwatch_process_sockets", process="[unknown]", state="close_wait") is None
    assert value(samples, "tcpwatch_scrape_collector_success", collector="ebpf") == 1


@pytest.mark.root
def test_sd_notify_ready_watchdog_and_stopping(netns, daemons, tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")   # pings every 0.2 s
    with listener:
        daemon = daemons("--ebpf", "off", netns=netns)
        ready = listener.recv(4096).decode().split("\n")
        assert ready[0] == "READY=1" and ready[1].startswith(f"STATUS=serving on {daemon.address}")
        pings = [listener.recv(4096).decode() for _ in range(3)]
        assert pings == ["WATCHDOG=1"] * 3
        assert daemon.stop() == 0
        messages = []
        while "STOPPING=1" not in messages:
            messages += listener.recv(4096).decode().split("\n")


# Each capability of the unit, taken away alone: tcpwatch still serves, degrades, and says which.
DEGRADED = {
    # CAP_SYS_ADMIN (for setns) also grants what CAP_BPF and CAP_PERFMON do: either alone
    # gone changes nothing. Both listed anyway: kernels before 5.8 know only CAP_SYS_ADMIN.
    "CAP_BPF": dict(ebpf=True, owners=True, says=None),
    "CAP_PERFMON": dict(ebpf=True, owners=True, says=None),
    "CAP_SYSLOG": dict(ebpf=True, time_wait=False, owners=True, says="CAP_SYSLOG"),
    # With eBPF, owners come from the task_file iterator, which needs neither of these two
    # (tracefs, mode 0700, needs CAP_DAC_READ_SEARCH, but tp_btf, the default here, does
    # not use tracefs); the /proc walk, without eBPF, needs both.
    "CAP_DAC_READ_SEARCH": dict(ebpf=True, owners=True, says=None),
    "CAP_SYS_PTRACE": dict(ebpf=True, owners=True, says=None),
    "CAP_DAC_READ_SEARCH --ebpf off": dict(ebpf=False, owners=False, says="CAP_DAC_READ_SEARCH"),
    "CAP_SYS_PTRACE --ebpf off": dict(ebpf=False, owners=False, says="CAP_SYS_PTRACE"),
}


@pytest.mark.root
@pytest.mark.parametrize("case", sorted(DEGRADED))
def test_each_missing_capability_degrades_cleanly_with_a_warning(case, netns, workloads, daemons):
    expect = DEGRADED[case]
    dropped, _, ebpf = case.partition(" --ebpf ")
    assert dropped in unit_setting("CapabilityBoundingSet")
    workloads("leak", netns=netns, count=3, comm="rootleak")
    daemon = daemons("--ebpf", ebpf or "auto", netns=netns, wrapper=setpriv_with_unit_capabilities(drop=dropped))
    samples = daemon.scrape()
    assert value(samples, "tcpwatch_ebpf_enabled") == (1 if expect["ebpf"] else 0)
    if "time_wait" in expect:
        assert "ebpf_time_wait=False" in daemon.log[-1]
    owned = value(samples, "tcpwatch_process_sockets", process="rootleak", state="close_wait")
    assert owned == (3 if expect["owners"] else None)
    if not expect["owners"]:
        assert value(samples, "tcpwatch_process_sockets", process="[unknown]", state="close_wait") == 3
    daemon.stop()
    log = "".join(daemon.log) + daemon.proc.stderr.read()
    warnings = [line for line in log.splitlines() if "level=warn" in line]
    if expect["says"]:
        assert any(expect["says"] in line for line in warnings), warnings
    assert "Traceback" not in log
