"""The pure top-N rule of tcpwatch_port_sockets."""

from collections import Counter

from tcpwatch import ports, states

E, CW, TW, SR = states.ESTABLISHED, states.CLOSE_WAIT, states.TIME_WAIT, states.SYN_RECV


def test_top_ports_keeps_the_busiest_the_allow_list_and_sums_the_rest():
    counts = Counter({(5432, CW): 7, (6379, E): 5, (443, E): 2, (443, TW): 2, (53, E): 1, (9000, SR): 1})
    top = ports.top_ports(counts, 2, always=frozenset({9000, 11211}))
    assert list(top) == ["5432", "6379", "9000", "11211", "other"]
    assert top["5432"] == {CW: 7} and top["9000"] == {SR: 1}
    assert top["11211"] == Counter()                       # allow-listed, empty: still exported
    assert top["other"] == {E: 3, TW: 2}                   # 443 and 53
    assert sum(sum(c.values()) for c in top.values()) == sum(counts.values())


def test_no_other_when_nothing_is_left_and_zero_means_only_the_allow_list():
    counts = Counter({(80, E): 3})
    assert list(ports.top_ports(counts, 5)) == ["80"]
    assert list(ports.top_ports(counts, 0, frozenset({22}))) == ["22", "other"]


def test_exported_states_always_hold_the_baseline():
    assert ports.exported_states(Counter()) == [E, TW, CW]
    assert ports.exported_states(Counter({SR: 1})) == [E, SR, TW, CW]
