"""Namespaces over time without a kernel: labels never pass to another namespace, an inode
reused by a new namespace starts series of its own, counts of gone namespaces move to
"gone", and a namespace crossing the --collector.netns.max-series cap lowers no series."""

from collections import Counter

from tcpwatch import states
from tcpwatch.model import BpfReading, DiagSnapshot, NamespaceDumps, NetnsActivity, NetnsDump, NetnsInfo
from tcpwatch.namespace_book import LabelHistory, NamespaceBook
from tcpwatch.snapshot import NamespaceGroups

HOST = NetnsInfo(1, "host", "host")


def test_a_label_is_never_passed_to_another_namespace():
    history = LabelHistory()
    assert history.labels({"c1": "netns-9"}) == {"c1": "netns-9"}
    assert history.labels({"c1": "netns-9"}) == {"c1": "netns-9"}
    assert history.labels({"c2": "netns-9"}) == {"c2": "netns-9~2"}    # inode 9 reused by cookie c2
    assert history.labels({"c3": "netns-9"}) == {"c3": "netns-9~3"}
    assert history.labels({"c1": "shop/web-0"}) == {"c1": "shop/web-0"}   # c1 renamed: its own name
    assert history.labels({"c4": "shop/web-0", "c1": "netns-9"}) == {"c4": "shop/web-0~2", "c1": "netns-9"}


def test_the_memory_of_labels_is_bounded():
    history = LabelHistory(remembered=3)
    for i in range(10):
        history.labels({f"c{i}": f"pod-{i}"})
    assert len(history._carrier) == 3


def namespace(inode, cookie, name, sockets=1, kernel=None):
    snap = DiagSnapshot(netns_inode=inode)
    snap.counts[("ipv4", states.ESTABLISHED)] = sockets
    return NetnsDump(NetnsInfo(inode, name, "unnamed"), snap, kernel or {}, -1, cookie)


def reading_of(**handshakes):
    """A reading with N syn_sent -> established per cookie (``c<cookie>=N``), inode = cookie * 10."""
    reading = BpfReading()
    for key, n in handshakes.items():
        cookie = int(key[1:])
        reading.netns[cookie] = NetnsActivity(transitions=Counter({(states.SYN_SENT, states.ESTABLISHED): n}))
        reading.netns_inodes[cookie] = cookie * 10
    return reading


def scrape(book, dumps, reading, max_series=128):
    infos = {d.info.inode: d.info for d in dumps}
    groups = NamespaceGroups.build(infos, NamespaceDumps(dumps=dumps, infos=infos), reading, max_series, book)
    return {label: t.activity.transitions[(states.SYN_SENT, states.ESTABLISHED)]
            for label, t in groups.by_label.items() if t.has_activity}


def test_an_inode_reused_by_a_new_namespace_starts_its_own_series():
    book = NamespaceBook()
    assert scrape(book, [namespace(90, 9, "netns-90")], reading_of(c9=180)) == {"netns-90": 180}
    # namespace 9 ends; a new one (cookie 12) gets inode 90
    assert scrape(book, [namespace(90, 12, "netns-90")], reading_of(c9=180, c12=30)) == {
        "netns-90~2": 30, "gone": 180}
    assert scrape(book, [namespace(90, 12, "netns-90")], reading_of(c12=31)) == {"netns-90~2": 31, "gone": 180}


def test_a_namespace_that_lived_between_two_scrapes_is_counted_under_gone():
    book = NamespaceBook()
    scrape(book, [], reading_of())
    assert scrape(book, [], reading_of(c5=7)) == {"gone": 7}
    assert scrape(book, [], reading_of()) == {"gone": 7}    # its slot released: still counted


def test_crossing_the_cap_both_ways_lowers_no_series():
    book = NamespaceBook()
    history = []
    for busy_a, busy_b, a, b in ((5, 1, 10, 1), (1, 5, 11, 50), (1, 5, 12, 53), (5, 1, 12, 60)):
        dumps = [namespace(10, 1, "a", busy_a, {"Tcp": {"ActiveOpens": a}}),
                 namespace(20, 2, "b", busy_b, {"Tcp": {"ActiveOpens": b}})]
        infos = {d.info.inode: d.info for d in dumps}
        groups = NamespaceGroups.build(infos, NamespaceDumps(dumps=dumps, infos=infos), reading_of(c1=a, c2=b), 1, book)
        history.append({(label, kind): value for label, t in groups.by_label.items()
                        for kind, value in (("ebpf", t.activity.transitions[(states.SYN_SENT, states.ESTABLISHED)]),
                                            ("opens", t.kernel.get("Tcp", {}).get("ActiveOpens", 0)))})
    for before, after in zip(history, history[1:]):
        for key, value in after.items():
            assert value >= before.get(key, 0), (key, before, after)
        assert sum(v for (_l, k), v in after.items() if k == "ebpf") >= sum(
            v for (_l, k), v in before.items() if k == "ebpf")
    assert sum(v for (_l, k), v in history[-1].items() if k == "ebpf") == 12 + 60
    assert sum(v for (_l, k), v in history[-1].items() if k == "opens") == 12 + 60
