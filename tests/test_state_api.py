"""The /api/v1/state document from hand-built metric families: rates over the kept
readings, recent handshake quantiles, owners joined to ages, piling-up flags."""

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from tcpwatch import histograms, state_api


def families(transitions=0, fast=0, slow=0, close_wait=3, age=42.0, ebpf=True):
    sockets = GaugeMetricFamily("tcpwatch_sockets", "", labels=["netns", "family", "state"])
    for fam in ("ipv4", "ipv6"):
        sockets.add_metric(["host", fam, "close_wait"], close_wait if fam == "ipv4" else 0)
        sockets.add_metric(["host", fam, "time_wait"], 100)
    sockets.add_metric(["pod/a", "ipv4", "established"], 1)
    owners = GaugeMetricFamily("tcpwatch_process_sockets", "",
                               labels=["netns", "process", "container", "pod_namespace", "pod", "state"])
    owners.add_metric(["host", "leaky", "", "", "", "close_wait"], close_wait)
    owners.add_metric(["host", "quiet", "", "", "", "close_wait"], 0)
    oldest = GaugeMetricFamily("tcpwatch_state_oldest_age_seconds", "",
                               labels=["netns", "state", "process", "container", "pod_namespace", "pod"])
    oldest.add_metric(["host", "close_wait", "leaky", "", "", ""], age)
    moved = CounterMetricFamily("tcpwatch_state_transitions", "", labels=["netns", "from", "to"])
    moved.add_metric(["host", "syn_sent", "established"], transitions)
    duration = HistogramMetricFamily("tcpwatch_state_duration_seconds", "", labels=["netns", "state"])
    duration.add_metric(["host", "syn_sent"], [("0.001", fast), ("0.1", fast + slow), ("+Inf", fast + slow)], 0)
    queue = GaugeMetricFamily("tcpwatch_listen_queue_length", "", labels=["netns", "port"])
    limit = GaugeMetricFamily("tcpwatch_listen_queue_limit", "", labels=["netns", "port"])
    for port, n, cap in (("80", 1, 128), ("8080", 7, 8)):
        queue.add_metric(["host", port], n)
        limit.add_metric(["host", port], cap)
    ports = GaugeMetricFamily("tcpwatch_ephemeral_ports", "", labels=["netns"])
    ports.add_metric(["host"], 400)
    enabled = GaugeMetricFamily("tcpwatch_ebpf_enabled", "")
    enabled.add_metric([], 1 if ebpf else 0)
    return [sockets, owners, oldest, moved, duration, queue, limit, ports, enabled]


def test_rates_and_recent_quantiles_come_from_the_reading_a_minute_older():
    history = state_api.History()
    history.add(0.0, state_api.counters_of(families(transitions=10, fast=10)))
    history.add(30.0, state_api.counters_of(families(transitions=40, fast=10)))
    history.add(61.0, state_api.counters_of(families(transitions=70, fast=10, slow=5)))
    now = families(transitions=130, fast=10, slow=5)
    history.add(90.0, state_api.counters_of(now))
    doc = state_api.build(now, history, 90.0, 1e9, "host")
    assert doc["rate_window_seconds"] == 60.0                     # the reading of t=30
    (t,) = doc["netns"]["host"]["transitions"]
    assert (t["total"], t["per_second"]) == (130, 90 / 60)
    shake = doc["netns"]["host"]["handshakes"]["syn_sent"]
    assert shake["count"] == 5 and shake["window_seconds"] == 60.0   # only the 5 slow ones are recent
    assert 0.001 < shake["p50_seconds"] <= 0.1


def test_first_reading_has_no_rate_and_quantiles_since_start():
    history = state_api.History()
    now = families(transitions=5, fast=4)
    history.add(0.0, state_api.counters_of(now))
    doc = state_api.build(now, history, 0.0, 1e9)
    host = doc["netns"]["host"]
    assert doc["rate_window_seconds"] is None and host["transitions"][0]["per_second"] is None
    assert host["handshakes"]["syn_sent"]["window_seconds"] is None
    assert host["handshakes"]["syn_sent"]["count"] == 4


def test_owners_queues_flags_and_namespaces():
    doc = state_api.build(families(close_wait=12, age=50.0), state_api.History(), 0.0, 1e9)
    assert [n["netns"] for n in doc["namespaces"]] == ["host", "pod/a"]
    host = doc["netns"]["host"]
    assert host["states"]["close_wait"] == 12 and host["states"]["time_wait"] == 200
    assert host["close_wait_owners"] == [{"process": "leaky", "container": "", "pod_namespace": "", "pod": "",
                                          "sockets": 12, "oldest_age_seconds": 50.0}]   # "quiet" holds none
    assert [q["port"] for q in host["listen_queues"]] == ["8080", "80"]   # fullest (7 of 8) first
    assert host["piling_up"] == {"close_wait": True, "time_wait": True}    # 12 >= 10; 200 >= 20% of 400
    calm = state_api.build(families(close_wait=2, age=10.0), state_api.History(), 0.0, 1e9)["netns"]["host"]
    assert calm["piling_up"]["close_wait"] is False
    old = state_api.build(families(close_wait=2, age=400.0), state_api.History(), 0.0, 1e9)["netns"]["host"]
    assert old["piling_up"]["close_wait"] is True                           # few, but old


def test_unknown_netns_is_refused():
    with pytest.raises(state_api.UnknownNetns):
        state_api.build(families(), state_api.History(), 0.0, 1e9, "nope")


def test_history_stays_bounded():
    history = state_api.History(max_readings=8)
    for i in range(1000):
        history.add(i * 0.3, {})
    assert len(history) <= 8


def test_quantile_interpolates_like_promql():
    buckets = [(0.1, 0), (0.2, 10), (0.4, 20), (float("inf"), 20)]
    assert histograms.quantile(0.5, buckets) == pytest.approx(0.2)
    assert histograms.quantile(0.75, buckets) == pytest.approx(0.3)
    assert histograms.quantile(0.5, [(1.0, 0), (float("inf"), 0)]) is None
    assert histograms.quantile(0.99, [(1.0, 1), (float("inf"), 10)]) == 1.0   # in +Inf: the last bound


def test_page_refreshes_reuse_a_recent_collection():
    clock = [100.0]
    made = []

    def collect():
        made.append(clock[0])
        fams = families()
        api.observe(fams)
        return fams

    api = state_api.StateApi(collect, clock=lambda: clock[0], wall_clock=lambda: 1e9)
    for _ in range(5):                      # five viewers at once
        assert api.respond({"netns": ["host"]})[0] == 200
    assert made == [100.0]
    clock[0] += state_api.REUSE_SECONDS + 0.1
    api.respond({})
    assert made == [100.0, clock[0]]
    assert api.respond({"netns": ["gone"]})[0] == 404
