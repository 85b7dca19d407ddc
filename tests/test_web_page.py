"""The page at / in a real browser (Debian's chromium, headless, through chromedriver): the
numbers it draws equal /metrics, it logs no console errors, and it works behind TLS and
basic auth. A screenshot of each run is kept under build/test-artifacts/."""

import json
import os
import shutil
import ssl
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest

from helpers import ROOT, Workload, delayed_pair, parse_metrics, tls_and_auth_config, value, wait_for

pytestmark = pytest.mark.root

ARTIFACTS = Path(os.environ.get("TCPWATCH_ARTIFACTS", ROOT / "build" / "test-artifacts"))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PASSWORD = "page pass"

# Everything the page drew, read from the DOM: numbers from the data-value attributes the
# script sets beside the text it shows.
READ_PAGE = """
const value = (el) => el && el.dataset.value !== undefined ? Number(el.dataset.value) : null;
const rows = (id) => [...document.querySelectorAll('#' + id + ' tbody tr')];
const field = (tr, name) => tr.querySelector('[data-field=' + name + ']');
return JSON.stringify({
  loaded: document.body.dataset.loaded || null,
  netns: document.getElementById('netns').value,
  counts: Object.fromEntries([...document.querySelectorAll('[id^=count-]')]
                             .map((el) => [el.id.slice(6), value(el)])),
  owners: rows('owners').filter((tr) => field(tr, 'process')).map((tr) => ({
      process: field(tr, 'process').textContent, sockets: value(field(tr, 'sockets')),
      age: value(field(tr, 'age'))})),
  queues: rows('queues').filter((tr) => field(tr, 'port')).map((tr) => ({
      port: field(tr, 'port').textContent, length: value(field(tr, 'length')),
      limit: value(field(tr, 'limit'))})),
  handshakes: rows('handshakes').filter((tr) => field(tr, 'state')).map((tr) => ({
      state: field(tr, 'state').textContent, p50: value(tr.cells[1]), p90: value(tr.cells[2]),
      count: value(tr.cells[4])})),
  edges: Object.fromEntries([...document.querySelectorAll('g.edge')]
                            .map((g) => [g.id, {total: g.dataset.total, rate: g.querySelector('text').textContent}])),
  transitions: rows('transitions').filter((tr) => field(tr, 'from')).map((tr) => ({
      from: field(tr, 'from').textContent, to: field(tr, 'to').textContent, total: value(field(tr, 'total'))})),
  hot: [...document.querySelectorAll('g.node.hot')].map((g) => g.id),
  ebpfNote: !document.getElementById('ebpf-note').hidden,
  status: document.getElementById('status').textContent,
  protocol: location.protocol,
});
"""


@pytest.fixture
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("chromium and chromium-driver are not installed (scripts/setup-host.sh --test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-extensions", "--no-first-run",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    options.accept_insecure_certs = True          # the test's own CA is not in chromium's store
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def read_page(driver):
    return json.loads(driver.execute_script(READ_PAGE))


def wait_for_refreshes(driver, times=2, timeout=30):
    """Wait until the page has drawn ``times`` fresh answers of the daemon."""
    seen = []

    def fresh():
        loaded = read_page(driver)["loaded"]
        if loaded and loaded not in seen:
            seen.append(loaded)
        return len(seen) >= times

    wait_for(fresh, timeout=timeout, interval=0.3, what=f"{times} page refreshes")


def console_errors(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(driver, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


def drawn_equals_metrics(page, samples, netns):
    """The differences between what the page drew and /metrics (empty when they agree)."""
    wrong = []
    for state, drawn in page["counts"].items():
        if state == "closed_end":
            continue
        scraped = value(samples, "tcpwatch_sockets", netns=netns, state=state)
        if drawn != scraped:
            wrong.append(f"{state}: page {drawn}, metrics {scraped}")
    for owner in page["owners"]:
        scraped = value(samples, "tcpwatch_process_sockets", netns=netns, process=owner["process"],
                        state="close_wait")
        if owner["sockets"] != scraped:
            wrong.append(f"owner {owner['process']}: page {owner['sockets']}, metrics {scraped}")
    for queue in page["queues"]:
        for key, name in (("length", "tcpwatch_listen_queue_length"), ("limit", "tcpwatch_listen_queue_limit")):
            scraped = value(samples, name, netns=netns, port=queue["port"])
            if queue[key] != scraped:
                wrong.append(f"queue {queue['port']} {key}: page {queue[key]}, metrics {scraped}")
    for row in page.get("transitions", []):
        scraped = value(samples, "tcpwatch_state_transitions_total", netns=netns, **{"from": row["from"], "to": row["to"]})
        if row["total"] != scraped:
            wrong.append(f"transition {row['from']}->{row['to']}: page {row['total']}, metrics {scraped}")
    for edge_id, edge in page["edges"].items():
        if not edge.get("total"):
            continue
        old, new = edge_id[len("edge-"):].split("-")
        scraped = value(samples, "tcpwatch_state_transitions_total", netns=netns, **{"from": old, "to": new})
        if float(edge["total"]) != scraped:
            wrong.append(f"{edge_id}: page {edge['total']}, metrics {scraped}")
    return wrong


def test_page_draws_what_metrics_say_for_a_known_workload(browser, workloads, daemons):
    """A namespace holding a CLOSE_WAIT leak (12 sockets: piling up), a listen queue of 4 and
    8 handshakes through an 80 ms round trip (beside the 16 on loopback of the other two);
    the daemon reads every namespace, on the host."""
    with delayed_pair("tcpw-page", 40) as (a, b):
        daemon = daemons("--ebpf", "on")
        daemon.scrape()   # the first reading: the page's rates and quantiles start from here
        leak = workloads("leak", netns=a, count=12, comm="pageleak")
        queue = workloads("listen", netns=a, count=8)
        workloads("connect", netns=a, count=4, port=queue.info["port"])
        server = Workload("listen", netns=b, count=8, host="198.18.0.2", **{"listen-port": 21701})
        Workload("connect", netns=a, count=8, port=21701, host="198.18.0.2").stop()
        server.stop()
        wait_for(lambda: value(daemon.scrape(), "tcpwatch_state_duration_seconds_count",
                               netns=a, state="syn_sent") == 24, what="24 handshakes counted")

        browser.get(f"http://{daemon.address}/?netns={a}")
        wait_for_refreshes(browser)

        def agreed():
            page = read_page(browser)
            samples = daemon.scrape()
            wrong = drawn_equals_metrics(page, samples, a)
            return (page, samples) if not wrong else None

        page, samples = wait_for(agreed, timeout=20, interval=0.5, what="page == /metrics")
        path = screenshot(browser, "web-state-machine.png")
        assert page["netns"] == a and page["protocol"] == "http:"
        # What the workload built is what is drawn:
        assert page["counts"]["close_wait"] == 12 and page["counts"]["listen"] == 2
        assert page["owners"][0]["process"] == "pageleak" and page["owners"][0]["sockets"] == 12
        scraped_age = value(samples, "tcpwatch_state_oldest_age_seconds", netns=a, process="pageleak",
                            state="close_wait")
        assert abs(page["owners"][0]["age"] - scraped_age) < 10      # ages grow between the two readings
        assert {"port": str(queue.info["port"]), "length": 4, "limit": 8} in page["queues"]
        assert page["queues"][0]["length"] == 4                          # fullest first
        assert "node-close_wait" in page["hot"] and "node-time_wait" not in page["hot"]
        syn_sent = next(h for h in page["handshakes"] if h["state"].startswith("syn_sent"))
        assert syn_sent["count"] == 24
        assert syn_sent["p50"] < 0.01, syn_sent                        # most on loopback
        assert 0.06 < syn_sent["p90"] <= 0.135, syn_sent                # the slowest: one 80 ms round trip
        assert page["edges"]["edge-syn_sent-established"]["total"] == "24"
        assert page["edges"]["edge-syn_sent-established"]["rate"].endswith("/s")
        assert {"from": "syn_sent", "to": "established", "total": 24} in page["transitions"]
        assert not page["ebpfNote"]
        assert console_errors(browser) == []
        assert path.exists()
        leak.stop()


def test_page_works_behind_tls_and_basic_auth_and_without_ebpf(browser, pki, daemons, workloads):
    config = tls_and_auth_config(pki, "viewer", PASSWORD)
    daemon = daemons("--ebpf", "off", "--web.config.file", str(config))
    workloads("leak", count=3, comm="tlsleak")
    port = daemon.address.rsplit(":", 1)[1]
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"https://127.0.0.1:{port}/api/v1/state", context=context, timeout=10)
    assert refused.value.code == 401

    browser.get(f"https://viewer:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{port}/")
    wait_for_refreshes(browser)
    page = read_page(browser)
    auth = {"Authorization": "Basic " + b64encode(f"viewer:{PASSWORD}".encode()).decode()}
    request = urllib.request.Request(f"https://127.0.0.1:{port}/metrics", headers=auth)
    samples = parse_metrics(urllib.request.urlopen(request, context=context, timeout=20).read().decode())
    screenshot(browser, "web-state-machine-tls-no-ebpf.png")
    assert page["protocol"] == "https:" and not page["status"].startswith("cannot")
    assert page["counts"]["listen"] == value(samples, "tcpwatch_sockets", netns="host", state="listen")
    assert any(o["process"] == "tlsleak" and o["sockets"] == 3 for o in page["owners"])
    assert page["ebpfNote"]                                             # says transitions need eBPF
    assert all(edge["rate"] == "" for edge in page["edges"].values())
    assert console_errors(browser) == []
