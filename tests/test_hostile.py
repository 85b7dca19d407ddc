"""Hostile and careless scrapers against a real daemon: it keeps answering within its normal
time, and never accumulates CLOSE_WAIT sockets or threads. Each attack is bounded in count and
time, and runs on loopback inside the test's network namespace (tests/attacker.py)."""

import json
import subprocess
import time

import pytest

from helpers import PYTHON, ROOT, in_netns, series, value, wait_for

pytestmark = pytest.mark.root
ATTACKER = str(ROOT / "tests" / "attacker.py")
NORMAL_SCRAPE_SECONDS = 1.0     # an empty namespace scrapes in a few ms; 1 s is a generous bound


def attack(daemon, kind, background=False, **options):
    host, port = daemon.address.rsplit(":", 1)
    argv = [PYTHON, ATTACKER, kind, host, port]
    for key, val in options.items():
        argv += [f"--{key}", str(val)]
    if background:
        return subprocess.Popen(in_netns(daemon.netns, argv), stdout=subprocess.PIPE, text=True)
    out = subprocess.run(in_netns(daemon.netns, argv), capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def finish(proc):
    out, _ = proc.communicate(timeout=120)
    return json.loads(out)


def tcpwatch_close_wait(daemon):
    """CLOSE_WAIT sockets tcpwatch holds, by ss and by tcpwatch's own metric."""
    ss = subprocess.run(in_netns(daemon.netns, ["ss", "-tanpH", "state", "close-wait"]),
                        capture_output=True, text=True, check=True).stdout
    by_ss = sum('"tcpwatch"' in line for line in ss.splitlines())
    by_metric = value(daemon.scrape(), "tcpwatch_process_sockets", process="tcpwatch", state="close_wait")
    return by_ss, by_metric


def assert_recovered(daemon, baseline_threads):
    """Normal scrapes answer fast again, threads are back to the baseline, no CLOSE_WAIT."""
    timing = attack(daemon, "scrape", count=3)
    assert timing["codes"] == [200] * 3 and timing["slowest"] < NORMAL_SCRAPE_SECONDS, timing
    wait_for(lambda: value(daemon.scrape(), "tcpwatch_threads") <= baseline_threads, timeout=15,
             what="threads back to the baseline")
    wait_for(lambda: tcpwatch_close_wait(daemon) == (0, 0), timeout=15, what="no CLOSE_WAIT held by tcpwatch")
    assert value(daemon.scrape(), "tcpwatch_http_open_connections") == 1   # this scrape


@pytest.fixture
def daemon(netns, daemons):
    d = daemons("--ebpf", "off", netns=netns)
    d.baseline_threads = value(d.scrape(), "tcpwatch_threads")
    return d


def test_fifty_concurrent_scrapes(daemon):
    result = attack(daemon, "concurrent", count=50)
    assert result["ok"] == 50 and result["codes"] == ["200"], result
    assert_recovered(daemon, daemon.baseline_threads)


def test_clients_that_reset_mid_response(daemon):
    before = daemon.scrape()
    attack(daemon, "disconnect", count=50)
    time.sleep(1.0)                                   # the server handles the 50 resets
    after = daemon.scrape()
    # A response counts once written, so `after` sees `before` but not itself.
    answered = value(after, "tcpwatch_http_responses_total", code="200") - \
        (value(before, "tcpwatch_http_responses_total", code="200") or 0) - 1
    gone = value(after, "tcpwatch_http_dropped_connections_total", reason="client_disconnect") - \
        value(before, "tcpwatch_http_dropped_connections_total", reason="client_disconnect")
    assert answered + gone == 50 and gone > 0, (answered, gone)
    assert value(after, "tcpwatch_http_dropped_connections_total", reason="error") == 0
    assert_recovered(daemon, daemon.baseline_threads)


@pytest.mark.parametrize("kind", ["slowloris", "silent"])
def test_idle_connections_beyond_the_limit_do_not_starve_scrapers(daemon, kind):
    proc = attack(daemon, kind, background=True, count=100, seconds=6)
    time.sleep(2)                                    # the 100 connections are open
    during = attack(daemon, "scrape", count=5)
    assert during["codes"] == [200] * 5 and during["slowest"] < NORMAL_SCRAPE_SECONDS, during
    samples = daemon.scrape()
    assert value(samples, "tcpwatch_http_open_connections") <= 64
    assert value(samples, "tcpwatch_threads") <= daemon.baseline_threads + 64
    assert value(samples, "tcpwatch_http_dropped_connections_total", reason="evicted_idle") >= 36
    finish(proc)
    assert_recovered(daemon, daemon.baseline_threads)


def test_oversized_and_malformed_requests(daemon):
    answers = attack(daemon, "malformed", count=0)
    assert answers == {"long_request_line": "414", "too_many_headers": "431", "long_header": "431",
                      "garbage": "400", "bad_version": "505", "post": "501", "binary_path": "404"}, answers
    codes = {dict(labels)["code"] for labels in series(daemon.scrape(), "tcpwatch_http_responses_total")}
    assert {"400", "404", "414", "431", "501", "505"} <= codes
    assert_recovered(daemon, daemon.baseline_threads)


@pytest.mark.slow
def test_slow_drip_is_cut_at_the_deadline(daemon):
    result = attack(daemon, "slowloris", count=5, seconds=36)
    assert result["closed_by_server"] == 5, result
    assert value(daemon.scrape(), "tcpwatch_http_dropped_connections_total", reason="deadline") == 5
    assert_recovered(daemon, daemon.baseline_threads)
