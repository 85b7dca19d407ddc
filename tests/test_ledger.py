"""The ledger that keeps per-namespace counters monotone while namespaces come, go and move
between named series, "other" and "gone"."""

import random

from hypothesis import given, settings, strategies as st

from tcpwatch.ledger import Ledger


def sums(exports):
    return sum(v for flat in exports.values() for v in flat.values())


def test_a_gone_namespace_is_folded_into_gone_and_its_label_vanishes():
    ledger = Ledger()
    assert ledger.update({"a": {"x": 5}, "b": {"x": 1}}, {"a": "pod-a", "b": "pod-b"}) == {
        "pod-a": {"x": 5}, "pod-b": {"x": 1}}
    out = ledger.update({"b": {"x": 2}}, {"b": "pod-b"})   # a ended at 5
    assert out == {"pod-b": {"x": 2}, "gone": {"x": 5}}
    out = ledger.update({}, {})
    assert out == {"gone": {"x": 7}}
    assert len(ledger) == 1   # only "gone" is remembered


def test_moving_in_and_out_of_other_never_lowers_a_series():
    ledger = Ledger()
    assert ledger.update({"a": {"x": 10}, "b": {"x": 1}}, {"a": "A", "b": "other"}) == {
        "A": {"x": 10}, "other": {"x": 1}}
    out = ledger.update({"a": {"x": 11}, "b": {"x": 50}}, {"a": "other", "b": "B"})   # they swap
    assert out == {"other": {"x": 50 + 11}, "B": {}}   # A folded into other; B counts from here
    out = ledger.update({"a": {"x": 12}, "b": {"x": 53}}, {"a": "other", "b": "B"})
    assert out == {"other": {"x": 62}, "B": {"x": 3}}
    out = ledger.update({"a": {"x": 12}, "b": {"x": 60}}, {"a": "A", "b": "other"})   # and back
    assert out == {"other": {"x": 62 + 10}, "A": {}}   # b brought B's 3 and its 7 since
    assert sums(out) == 12 + 60


def test_a_new_name_for_the_same_namespace_continues_its_counts():
    ledger = Ledger()
    ledger.update({"a": {"x": 4}}, {"a": "netns-9"})
    out = ledger.update({"a": {"x": 6}}, {"a": "shop/web-0"})   # its pod became known
    assert out == {"shop/web-0": {"x": 6}}


def test_an_identity_whose_total_goes_down_is_a_new_member():
    """An inode reused under the same label (where no cookie tells them apart): the label
    keeps the old namespace's counts and adds the new one's, never 180 -> 30."""
    ledger = Ledger()
    ledger.update({9: {"x": 180}}, {9: "netns-9"})
    assert ledger.update({9: {"x": 30}}, {9: "netns-9"}) == {"netns-9": {"x": 210}}
    assert ledger.update({9: {"x": 31}}, {9: "netns-9"}) == {"netns-9": {"x": 211}}
    assert ledger.update({}, {}) == {"gone": {"x": 211}}


def test_an_identity_seen_only_once_still_counts():
    ledger = Ledger()
    ledger.update({"short": {"x": 7, "y": 1}}, {})          # never named: gone at once
    assert ledger.update({}, {}) == {"gone": {"x": 7, "y": 1}}


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_churn_keeps_every_series_and_the_sum_monotone(seed):
    rng = random.Random(seed)
    ledger, live, ended, previous = Ledger(), {}, 0, {}
    for step in range(40):
        for ident in list(live):
            if rng.random() < 0.2:
                ended += live.pop(ident)["x"]
        if rng.random() < 0.5:
            live[f"n{step}"] = {"x": 0}
        for ident in live:
            live[ident]["x"] += rng.randrange(0, 5)
        buckets = {i: rng.choice(["other", f"L-{i}", f"L-{i}"]) for i in live}
        out = ledger.update({i: dict(t) for i, t in live.items()}, buckets)
        for label, flat in out.items():
            if label in previous:
                assert flat.get("x", 0) >= previous[label].get("x", 0), (label, step)
        assert sums(out) == ended + sum(t["x"] for t in live.values())
        previous = out
