"""tcpwatch's text-format encoder writes exactly what prometheus_client's generate_latest
writes: on the golden registry, on hostile label values, and where it must hand over."""

from hypothesis import given, settings, strategies as st
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from tcpwatch import exposition
from fixtures import Clock, exporter_for, hand_built_reading, hand_built_snapshot, owners


class Families:
    def __init__(self, *families):
        self.families = families

    def collect(self):
        return list(self.families)


def both(*families):
    registry = Families(*families)
    return exposition.text_format(registry), generate_latest(registry)


def test_golden_registry_is_byte_identical():
    registry, _ = exporter_for(hand_built_snapshot, owners, Clock(), bpf_read=hand_built_reading)
    ours, theirs = both(*registry.collect())
    assert ours == theirs and b"tcpwatch_state_duration_seconds_bucket" in ours


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=20), min_size=1, max_size=8))
def test_any_label_value_is_escaped_like_prometheus_client(values):
    gauge = GaugeMetricFamily("tcpwatch_x", "help with \\ and \n", labels=["process", "netns"])
    counter = CounterMetricFamily("tcpwatch_y", "a counter", labels=["b", "a"])
    for i, v in enumerate(values):
        gauge.add_metric([v, "host"], i * 1.5)
        counter.add_metric([v, v + '"'], float("inf") if i == 0 else i)
    ours, theirs = both(gauge, counter)
    assert ours == theirs


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=20), min_size=1, max_size=8))
def test_labels_rendered_once_write_what_prometheus_client_writes(values):
    from prometheus_client.samples import Sample

    gauge = GaugeMetricFamily("tcpwatch_x", "x", labels=["state", "netns"])
    for i, v in enumerate(values):
        gauge.samples.append(Sample("tcpwatch_x", exposition.RenderedLabels({"state": v, "netns": v + "\\"}), i,
                                    None, None))
    illegal = GaugeMetricFamily("tcpwatch_z", "z")
    illegal.samples.append(Sample("tcpwatch_z", exposition.RenderedLabels({"not-legal": "x"}), 1, None, None))
    ours, theirs = both(gauge)
    assert ours == theirs
    ours, theirs = both(illegal)
    assert ours == theirs and exposition.RenderedLabels({"not-legal": "x"}).text is None


def test_histograms_infos_and_unlabelled_samples():
    histogram = HistogramMetricFamily("tcpwatch_h", "h", labels=["state"])
    histogram.add_metric(["syn_sent"], [("0.001", 1), ("+Inf", 3)], 0.5)
    info = InfoMetricFamily("tcpwatch_build", "b", value={"version": "1"})
    plain = GaugeMetricFamily("tcpwatch_up", "u")
    plain.add_metric([], 1)
    ours, theirs = both(histogram, info, plain)
    assert ours == theirs


def test_hands_over_what_it_does_not_write_itself():
    created = CounterMetricFamily("tcpwatch_c", "c", labels=["a"], created=123.0)
    created.add_metric(["x"], 1, created=123.0)
    odd = GaugeMetricFamily("tcpwatch.dotted", "d")
    odd.add_metric([], 2)
    for family in (created, odd):
        ours, theirs = both(family)
        assert ours == theirs


def test_negotiation_keeps_prometheus_clients_formats():
    encoder, content_type = exposition.encoder_for(None)
    assert encoder is exposition.text_format and content_type == CONTENT_TYPE_PLAIN_0_0_4
    encoder, content_type = exposition.encoder_for("application/openmetrics-text; version=1.0.0")
    assert encoder is not exposition.text_format and content_type.startswith("application/openmetrics-text")
