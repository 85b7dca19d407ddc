"""Each collector on a hand-built snapshot (no root), and the one rule for all of them: a
collector that fails shows success 0 and errors + 1, logs one line, and every other
collector still answers in the same scrape (the page's JSON too)."""

import json
import logging

import pytest
from prometheus_client import generate_latest

from fixtures import Clock, exporter_for, hand_built_reading, hand_built_snapshot, owners, scrape_snapshot
from helpers import parse_metrics, value
from tcpwatch import collectors
from tcpwatch.collectors import CollectorSettings
from tcpwatch.state_api import StateApi

SETTINGS = CollectorSettings()


def collect(name, snap, clock=None, settings=SETTINGS):
    collector = collectors.REGISTRY[name](settings, clock or Clock())
    return {family.name: family for family in collector.collect(snap)}


def rows(metric_family, **labels):
    return {tuple(s.labels.values()): s.value for s in metric_family.samples
            if all(s.labels.get(k) == v for k, v in labels.items())}


def test_every_collector_is_registered_in_export_order():
    assert set(collectors.REGISTRY) == set(collectors.ORDER)
    assert [c.name for c in collectors.build(SETTINGS, ebpf_loaded=True)] == list(collectors.ORDER)
    off = CollectorSettings(process_enabled=False, port_enabled=False)
    assert [c.name for c in collectors.build(off, ebpf_loaded=False)] == ["inet_diag", "netns", "age"]


def test_ebpf_families_per_namespace_and_program_wide():
    families = collect("ebpf", scrape_snapshot())
    assert list(families) == ["tcpwatch_state_transitions", "tcpwatch_state_duration_seconds",
                              "tcpwatch_ebpf_untracked", "tcpwatch_retransmits", "tcpwatch_resets",
                              "tcpwatch_ebpf_attach_info", "tcpwatch_ebpf_netns_tracked"]
    transitions = families["tcpwatch_state_transitions"]
    assert rows(transitions, netns="host", **{"from": "syn_sent", "to": "established"}) == {
        ("host", "syn_sent", "established"): 4}
    assert rows(families["tcpwatch_resets"], netns="other", direction="received") == {("other", "received"): 3}
    assert rows(families["tcpwatch_ebpf_untracked"], reason="unknown_socket") == {("unknown_socket",): 2}


def test_socket_counts_listen_queues_and_port_range():
    families = collect("inet_diag", scrape_snapshot(reading=None, owner_walk=None))
    assert rows(families["tcpwatch_sockets"], family="ipv4", state="established") == {("host", "ipv4", "established"): 2}
    assert sum(s.value for s in families["tcpwatch_sockets"].samples) == 9
    assert rows(families["tcpwatch_listen_queue_length"]) == {("host", "8080"): 1}
    assert rows(families["tcpwatch_listen_queue_limit"]) == {("host", "8080"): 128}
    assert rows(families["tcpwatch_ephemeral_ports"]) == {("host",): 28232}


def test_netns_names_and_kernel_counters():
    families = collect("netns", scrape_snapshot(reading=None))
    assert rows(families["tcpwatch_netns_info"]) == {("host", "4026531840", "host", "", "", "", ""): 1.0}
    assert rows(families["tcpwatch_netns_discovered"]) == {(): 1}
    assert rows(families["tcpwatch_listen_overflows"]) == {("host",): 3}
    assert rows(families["tcpwatch_aborts"], reason="data") == {("host", "data"): 2}
    assert rows(families["tcpwatch_connections_opened"]) == {("host", "active"): 5, ("host", "passive"): 6}
    assert rows(families["tcpwatch_netns_read_failures"]) == {("error",): 0, ("runtime_state",): 0, ("vanished",): 0}


def test_ports_on_both_sides():
    family = collect("port", scrape_snapshot())["tcpwatch_port_sockets"]
    assert rows(family, port="8080", state="close_wait") == {("host", "8080", "server", "close_wait"): 2}
    assert rows(family, side="client", state="established") == {("host", "5432", "client", "established"): 2,
                                                                ("host", "443", "client", "established"): 0}


def test_owners_hold_sockets_and_the_kernel_the_rest():
    families = collect("process", scrape_snapshot())
    sockets = families["tcpwatch_process_sockets"]
    assert rows(sockets, process="web", state="close_wait") == {("host", "web", "", "", "", "close_wait"): 2}
    assert rows(sockets, process="client", state="established") == {("host", "client", "", "", "", "established"): 1}
    assert rows(sockets, process="[kernel]", state="time_wait") == {("host", "[kernel]", "", "", "", "time_wait"): 4}
    assert rows(families["tcpwatch_process_unreadable"]) == {(): 0}


def test_ages_of_time_wait_and_of_each_owners_oldest_close_wait():
    clock = Clock()
    age = collect("age", scrape_snapshot(), clock)["tcpwatch_state_oldest_age_seconds"]
    assert rows(age, state="time_wait") == {("host", "time_wait", "[kernel]", "", "", ""): 15.0}
    assert rows(age, state="close_wait") == {("host", "close_wait", "web", "", "", ""): 100.0}   # eBPF: 900 s
    without_owners = collect("age", scrape_snapshot(owner_walk=None))["tcpwatch_state_oldest_age_seconds"]
    assert not rows(without_owners, state="close_wait") and rows(without_owners, state="time_wait")


class Raising:
    """A registered collector whose collect() raises."""

    def __init__(self, real):
        self.name, self.owns, self.needs = real.name, real.owns, real.needs

    def collect(self, snapshot):
        raise RuntimeError(f"{self.name} is broken")


def scrape(exporter_and_registry):
    registry, exporter = exporter_and_registry
    return parse_metrics(generate_latest(registry).decode())


def exported_families(exporter):
    """Names of the families with samples of one fresh collection."""
    return {family.name for family in exporter._collect_now() if family.samples}


@pytest.mark.parametrize("broken", collectors.ORDER)
def test_a_failing_collector_fails_alone(broken, caplog):
    clock = Clock()
    real = collectors.build(SETTINGS, ebpf_loaded=True, clock=clock)
    own = {f.name for c in real if c.name == broken for f in c.collect(scrape_snapshot())}
    baseline = exported_families(exporter_for(hand_built_snapshot, owners, Clock(), bpf_read=hand_built_reading)[1])
    assert own & baseline
    chosen = [Raising(c) if c.name == broken else c for c in real]
    registry, exporter = exporter_for(hand_built_snapshot, owners, clock, bpf_read=hand_built_reading,
                                      collectors=chosen)
    with caplog.at_level(logging.ERROR, logger="tcpwatch"):
        scrape((registry, exporter))
        clock.now += 1
        samples = scrape((registry, exporter))
    for name in collectors.ORDER:
        ok = 0 if name == broken else 1
        assert value(samples, "tcpwatch_scrape_collector_success", collector=name) == ok
        assert value(samples, "tcpwatch_scrape_collector_errors_total", collector=name) == 2 * (1 - ok)
        assert value(samples, "tcpwatch_scrape_collector_duration_seconds", collector=name) >= 0
    lines = [r.getMessage() for r in caplog.records if "collector failed" in r.getMessage()]
    assert lines == [f"{broken} collector failed"] * 2   # one line per failed scrape
    assert exported_families(exporter) == baseline - own   # every other family is there
    status, body = StateApi(exporter.collect, clock=clock).respond({})
    assert status == 200 and json.loads(body)["version"] == 1


def test_a_failing_source_fails_its_owner_and_what_needs_it():
    def walk_fails(inodes):
        raise PermissionError("no /proc")

    def read_fails():
        raise OSError("map gone")

    samples = scrape(exporter_for(hand_built_snapshot, walk_fails, bpf_read=read_fails))
    success = {name: value(samples, "tcpwatch_scrape_collector_success", collector=name) for name in collectors.ORDER}
    assert success == {"ebpf": 0, "inet_diag": 1, "netns": 1, "port": 1, "process": 0, "age": 1}
    assert value(samples, "tcpwatch_state_oldest_age_seconds", state="time_wait") == 15.0
    assert not [k for k in samples if k[0] == "tcpwatch_state_oldest_age_seconds" and ("state", "close_wait") in k[1]]
