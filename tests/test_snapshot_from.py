"""``tcpwatch snapshot --from URL`` reads a running daemon: the same CLOSE_WAIT ages as its
/metrics, through TLS and basic auth configured like a scraper; every way of failing is one
line and exit 2."""

import json
import socket

import pytest

from helpers import tcpwatch, tls_and_auth_config, value, wait_for
from peers import assert_rejected, run

pytestmark = pytest.mark.root

PASSWORD = "snap pass"


def test_ages_equal_metrics_and_ebpf_adds_handshakes_and_rates(netns, workloads, daemons):
    daemon = daemons("--ebpf", "on", netns=netns)
    daemon.scrape()
    workloads("leak", netns=netns, count=5, comm="snapfrom")
    samples = wait_for(lambda: (lambda s: s if value(s, "tcpwatch_process_sockets", process="snapfrom",
                                                     state="close_wait") == 5 else None)(daemon.scrape()),
                       what="the leak in /metrics")
    scraped_age = value(samples, "tcpwatch_state_oldest_age_seconds", process="snapfrom", state="close_wait")
    document = json.loads(tcpwatch(netns, "snapshot", "--from", daemon.url(""), "--json").stdout)
    scraped_after = value(daemon.scrape(), "tcpwatch_state_oldest_age_seconds", process="snapfrom",
                          state="close_wait")
    (owner,) = [o for o in document["netns"]["host"]["close_wait_owners"] if o["process"] == "snapfrom"]
    assert owner["sockets"] == 5
    # eBPF saw the sockets enter CLOSE_WAIT: the exact age, between the two scrapes around it
    assert scraped_age <= owner["oldest_age_seconds"] <= scraped_after
    assert document["ebpf"] and document["rate_window_seconds"] > 0
    assert document["netns"]["host"]["handshakes"]["syn_sent"]["count"] >= 5   # and the scrapes
    text = tcpwatch(netns, "snapshot", "--from", daemon.url("")).stdout
    row = next(line for line in text.splitlines() if "snapfrom" in line)
    assert row.split()[:2] == ["snapfrom", "5"] and row.split()[2].endswith("s")
    assert "syn_sent" in text and "Transitions per second" in text


@pytest.fixture
def secured(pki, daemons):
    config = tls_and_auth_config(pki, "viewer", PASSWORD)
    (pki / "viewer.password").write_text(PASSWORD + "\n")
    daemon = daemons("--ebpf", "off", "--web.config.file", str(config))
    return daemon, f"https://{daemon.address}"


def client_config(pki, name, body):
    path = pki / name
    path.write_text(body)
    return str(path)


def test_tls_and_basic_auth_like_a_scraper(pki, secured):
    _daemon, url = secured
    good = client_config(pki, "good.yml", "basic_auth:\n  username: viewer\n  password_file: viewer.password\n"
                                          "tls_config:\n  ca_file: ca.crt\n")
    result = run("snapshot", "--from", url, "--from.config", good, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["netns"]["host"]["states"]["listen"] >= 1
    wrong = client_config(pki, "wrong.yml", "basic_auth:\n  username: viewer\n  password: nope\n"
                                            "tls_config:\n  ca_file: ca.crt\n")
    assert_rejected(run("snapshot", "--from", url, "--from.config", wrong), "401", "credentials")
    no_ca = client_config(pki, "no-ca.yml", "basic_auth:\n  username: viewer\n  password: x\n")
    assert_rejected(run("snapshot", "--from", url, "--from.config", no_ca), "not trusted", "ca_file")
    assert_rejected(run("snapshot", "--from", url), "not trusted")
    bad_key = client_config(pki, "bad.yml", "tls_config:\n  ca_fil: ca.crt\n")
    assert_rejected(run("snapshot", "--from", url, "--from.config", bad_key), "ca_fil")


def test_bad_url_and_refused_connection():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert_rejected(run("snapshot", "--from", f"http://127.0.0.1:{free}"), "connection refused")
    assert_rejected(run("snapshot", "--from", "127.0.0.1:9787"), "http://HOST:PORT")
    assert_rejected(run("snapshot", "--from", "http://127.0.0.1:99999"), "port")
    assert_rejected(run("snapshot", "--from", "http://user:pw@127.0.0.1:9787"), "--from.config")
    assert_rejected(run("snapshot", "--from.config", "x.yml"), "--from URL")
