"""The daemon end to end: real sockets in a private netns, scraped over HTTP, stopped by signal."""

import json
import signal
import subprocess
import time

import pytest

from helpers import parse_metrics, series, value, wait_for

pytestmark = pytest.mark.root


def test_close_wait_owner_count_and_growing_age(netns, workloads, daemons):
    workloads("leak", netns=netns, count=50, comm="cwleaker")
    daemon = daemons(netns=netns)
    first = wait_for(lambda: (lambda s: s if value(s, "tcpwatch_process_sockets", process="cwleaker",
                                                   state="close_wait") == 50 else None)(daemon.scrape()),
                     what="50 close_wait sockets owned by cwleaker")
    age1 = value(first, "tcpwatch_state_oldest_age_seconds", state="close_wait", process="cwleaker")
    time.sleep(1.2)
    second = daemon.scrape()
    age2 = value(second, "tcpwatch_state_oldest_age_seconds", state="close_wait", process="cwleaker")
    assert value(second, "tcpwatch_process_sockets", process="cwleaker", state="close_wait") == 50
    assert age1 is not None and age2 >= age1 + 1.0
    # The peers closed their ends: orphaned FIN_WAIT2 sockets belong to the kernel alone.
    assert value(second, "tcpwatch_process_sockets", process="[kernel]", state="fin_wait2") == 50
    assert value(second, "tcpwatch_sockets", family="ipv4", state="close_wait") == 50
    assert value(second, "tcpwatch_scrape_collector_success", collector="process") == 1


def test_unaccepted_connections_belong_to_the_listener_process(netns, workloads, daemons):
    owner = workloads("listen", netns=netns, count=16, comm="qowner")
    workloads("connect", netns=netns, port=owner.info["port"], count=6, close=2, comm="qclient")
    daemon = daemons(netns=netns)
    samples = wait_for(lambda: (lambda s: s if value(s, "tcpwatch_process_sockets", process="qowner",
                                                     state="close_wait") == 2 else None)(daemon.scrape()),
                       what="unaccepted close_wait attributed to the listener")
    assert value(samples, "tcpwatch_process_sockets", process="qowner", state="established") == 4
    assert value(samples, "tcpwatch_process_sockets", process="qowner", state="listen") == 1
    assert value(samples, "tcpwatch_process_sockets", process="qclient", state="established") == 4
    port = str(owner.info["port"])
    assert value(samples, "tcpwatch_listen_queue_length", port=port) == 6
    assert value(samples, "tcpwatch_listen_queue_limit", port=port) == 16
    assert value(samples, "tcpwatch_state_oldest_age_seconds", state="close_wait", process="qowner") >= 0


def test_process_names_are_capped_with_the_rest_under_other(netns, workloads, daemons):
    for i in range(6):
        workloads("pairs", netns=netns, count=i + 1, comm=f"holder{i}")
    daemon = daemons("--collector.process.max-series", "3", "--collector.listen.max-ports", "2",
                     netns=netns)
    samples = daemon.scrape()
    established = {dict(labels)["process"]: v for labels, v in
                   series(samples, "tcpwatch_process_sockets").items()
                   if dict(labels)["state"] == "established"}
    # Each holderI holds 2*(I+1) established sockets: the top three are named, the rest summed,
    # and the rest includes this scrape's own connection (one end in tcpwatch, one in python).
    assert established == {"holder5": 12, "holder4": 10, "holder3": 8, "other": 2 + 4 + 6 + 2}
    ports = {dict(labels)["port"] for labels in series(samples, "tcpwatch_listen_queue_limit")}
    assert len(ports) == 3 and "other" in ports


def test_every_state_is_exported_and_labels_carry_no_addresses(netns, daemons):
    daemon = daemons(netns=netns)
    samples = daemon.scrape()
    sockets = series(samples, "tcpwatch_sockets")
    assert len(sockets) == 22
    assert value(samples, "tcpwatch_sockets", family="ipv6", state="closing") == 0
    assert value(samples, "tcpwatch_build_info", version=__import__("tcpwatch").__version__) == 1
    for (name, labels) in samples:
        for _key, text in labels:
            assert "127.0.0.1" not in text and "::1" not in text, (name, labels)


def test_ephemeral_ports_come_from_the_namespace_sysctl(netns, daemons):
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                    "net.ipv4.ip_local_port_range=40000 40999"], check=True)
    daemon = daemons(netns=netns)
    assert value(daemon.scrape(), "tcpwatch_ephemeral_ports") == 1000


def test_paths_and_sigterm(netns, daemons):
    daemon = daemons("--web.telemetry-path", "/tcp", netns=netns)
    status, page = daemon.get("/")
    assert status == 200 and 'href="/tcp"' in page and "static/tcpwatch.js" in page
    assert daemon.get("/static/tcpwatch.js")[0] == daemon.get("/static/tcpwatch.css")[0] == 200
    status, body = daemon.get("/api/v1/state?netns=host")
    assert status == 200 and json.loads(body)["netns"]["host"]["states"]["listen"] >= 1
    assert daemon.get("/api/v1/state?netns=nowhere")[0] == 404
    assert daemon.get("/metrics")[0] == 404
    assert daemon.get("/-/healthy") == (200, "ok\n")
    assert daemon.get("/-/ready") == (200, "ready\n")
    status, body = daemon.get("/tcp")
    assert status == 200 and "tcpwatch_sockets" in body
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 2.0


def test_daemon_names_itself_tcpwatch(netns, daemons):
    samples = daemons(netns=netns).scrape()
    assert value(samples, "tcpwatch_process_sockets", process="tcpwatch", state="listen") == 1


def test_sigint_exits_zero(daemons):
    daemon = daemons("--no-collector.process")
    samples = daemon.scrape()
    assert value(samples, "tcpwatch_scrape_collector_success", collector="inet_diag") == 1
    assert not series(samples, "tcpwatch_process_sockets")
    assert daemon.stop(signal.SIGINT) == 0


# Process names are untrusted text: anything but NUL, up to 15 bytes, and not always UTF-8.
HOSTILE_COMMS = {
    "lint me": "lint me",                                       # a space
    'say "hi"\\': 'say "hi"\\',                                   # quotes and a backslash
    "two\nlines": "two\nlines",                                  # a newline
    "hex:" + (b"bad\xff\xfeutf8").hex(): "bad\ufffd\ufffdutf8",         # not UTF-8
    "a-very-long-process-name": "a-very-long-pro",              # the kernel keeps 15 bytes
    "{x=\"}\",y=1}": "{x=\"}\",y=1}",                                  # label syntax
}


@pytest.mark.parametrize("comm", sorted(HOSTILE_COMMS))
def test_live_exposition_stays_valid_with_hostile_process_names(netns, workloads, daemons, comm):
    import shutil
    import subprocess

    if not shutil.which("promtool"):
        pytest.skip("promtool (Debian's prometheus) not installed")
    workloads("leak", netns=netns, count=3, comm=comm)
    daemon = daemons("--ebpf", "off", netns=netns)
    status, body = daemon.get()
    result = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    samples = parse_metrics(body)
    assert value(samples, "tcpwatch_process_sockets", process=HOSTILE_COMMS[comm], state="close_wait") == 3
    assert value(samples, "tcpwatch_state_oldest_age_seconds", process=HOSTILE_COMMS[comm],
                 state="close_wait") is not None


def test_time_wait_oldest_age_comes_from_the_kernel_timers(netns, workloads, daemons):
    workloads("states", netns=netns, count=3)
    daemon = daemons("--ebpf", "off", netns=netns)

    def age():
        return value(daemon.scrape(), "tcpwatch_state_oldest_age_seconds", state="time_wait",
                     process="[kernel]")

    first = wait_for(lambda: age() is not None, what="a time_wait age") and age()
    time.sleep(1.2)
    second = age()
    # 60 s less the timewait timer left: a few seconds at most here, and it advances.
    assert 0 <= first < 10 and second >= first + 1.0
