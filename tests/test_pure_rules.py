"""Rules that were reached only as root before: namespace naming, the kernel's counter
files, container ids from cgroup paths, the eBPF program's words, slot release."""

from tcpwatch import histograms, namespaces, states
from tcpwatch.sources import ebpf_maps, netns, runtime
from tcpwatch.sources.runtime import Container

POD_SANDBOX = Container("a" * 64, "containerd", "pause", "shop", "web-0", sandbox=True)
POD_APP = Container("b" * 64, "containerd", "app", "shop", "web-0")
PODMAN = Container("c" * 64, "podman", "db")


def test_host_first_then_pod_then_container_then_ip_netns_name_then_inode():
    assert namespaces.name_one(1, 1, [PODMAN], ["blue"]).name == "host"
    pod = namespaces.name_one(2, 1, [None, POD_APP, POD_SANDBOX], ["blue"])
    assert (pod.name, pod.kind, pod.pod_namespace, pod.pod, pod.container_id) == (
        "shop/web-0", "pod", "shop", "web-0", "a" * 64)   # the sandbox's id names the pod's namespace
    container = namespaces.name_one(3, 1, [PODMAN], ["blue"])
    assert (container.name, container.kind, container.runtime) == ("db", "container", "podman")
    assert namespaces.name_one(4, 1, [None], ["blue", "green"]).name == "blue"
    assert namespaces.name_one(5, 1, [], []).name == "netns-5"


def test_clashing_names_get_their_inode_but_host_keeps_its_name():
    infos = namespaces.unique([namespaces.name_one(7, 1, [PODMAN], []), namespaces.name_one(6, 1, [PODMAN], []),
                               namespaces.name_one(1, 1, [], [])])
    assert {inode: info.name for inode, info in infos.items()} == {1: "host", 6: "db@6", 7: "db@7"}


def test_the_cap_keeps_host_and_the_busiest_names():
    kept = namespaces.kept_names({"host": 1, "a": 5, "b": 9, "c": 5}, 2)
    assert kept == {"host", "b", "a"}                 # ties broken by name
    assert namespaces.label_of("c", kept) == "other"


SNMP = """Ip: Forwarding DefaultTTL
Ip: 1 64
Tcp: RtoAlgorithm ActiveOpens PassiveOpens
Tcp: 1 12 7
Udp: InDatagrams
Udp: 3
"""
NETSTAT = """TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPAbortOnClose
TcpExt: 0 4 5 x
IpExt: InNoRoutes
IpExt: 0
"""


def test_proc_net_snmp_and_netstat_parse_into_groups():
    assert netns.parse_counters(SNMP)["Tcp"] == {"RtoAlgorithm": 1, "ActiveOpens": 12, "PassiveOpens": 7}
    ext = netns.parse_counters(NETSTAT)["TcpExt"]
    assert ext == {"SyncookiesSent": 0, "ListenOverflows": 4, "ListenDrops": 5}   # "x" is skipped
    assert netns.parse_counters("Tcp: A\nUdp: 1\n") == {}                         # mismatched pair
    assert netns.parse_counters("") == {}
    wanted = netns.parse_counters(SNMP + NETSTAT, {"Tcp": {"ActiveOpens"}})
    assert wanted == {"Tcp": {"ActiveOpens": 12}}                                   # only what is exported


def test_every_exported_kernel_counter_is_parsed():
    from tcpwatch.collectors import netns as collector
    from tcpwatch.model import KERNEL_FIELDS

    exported = {(group, name) for _metric, group, name, _help in collector._KERNEL_COUNTERS}
    exported |= {("TcpExt", name) for _reason, name in collector._ABORTS} | {("Tcp", "ActiveOpens"), ("Tcp", "PassiveOpens")}
    assert exported == {(group, name) for group, names in KERNEL_FIELDS.items() for name in names}


def test_container_id_is_the_last_64_hex_digits_of_the_cgroup_path():
    pod, ctr = "1" * 64, "2" * 64
    kubepods = f"0::/kubepods.slice/kubepods-pod{pod}.slice/cri-containerd-{ctr}.scope\n"
    assert runtime.container_id_of_cgroup(kubepods) == ctr
    hybrid = f"12:pids:/machine.slice/libpod-{ctr}.scope\n1:name=systemd:/user.slice\n0::/\n"
    assert runtime.container_id_of_cgroup(hybrid) == ctr
    assert runtime.container_id_of_cgroup("0::/user.slice/user-0.slice/session-1.scope\n") == ""
    assert runtime.container_id_of_cgroup(f"0::/docker/{ctr[:63]}\n") == ""       # too short


def stats_words(transitions=(), slots=(), sums=(), counters=()):
    words = [0] * ebpf_maps.STATS_WORDS
    for (old, new), n in transitions:
        words[old * ebpf_maps.NSTATES + new] = n
    at = ebpf_maps.NSTATES * ebpf_maps.NSTATES
    for (state, slot), n in slots:
        words[at + state * ebpf_maps.HIST_SLOTS + slot] = n
    at += ebpf_maps.NSTATES * ebpf_maps.HIST_SLOTS
    for state, ns in sums:
        words[at + state] = ns
    at += ebpf_maps.NSTATES
    for index, n in counters:
        words[at + index] = n
    return words


def test_the_program_words_decode_into_transitions_histograms_and_counters():
    words = stats_words(transitions=[((states.SYN_SENT, states.ESTABLISHED), 3), ((states.LISTEN, states.SYN_RECV), 2)],
                        slots=[((states.SYN_SENT, 4), 3)], sums=[(states.SYN_SENT, 900)],
                        counters=[(0, 7), (2, 1)])
    activity = ebpf_maps.decode_activity(words)
    assert activity.transitions == {(states.SYN_SENT, states.ESTABLISHED): 3, (states.LISTEN, states.SYN_RECV): 2}
    assert list(activity.duration_slots) == [states.SYN_SENT]
    assert activity.duration_slots[states.SYN_SENT][4] == 3 and len(activity.duration_slots[states.SYN_SENT]) == histograms.SLOTS
    assert activity.duration_sum_ns == {states.SYN_SENT: 900}
    assert activity.counters == {"retransmits": 7, "resets_received": 1}
    assert ebpf_maps.decode_activity([0] * ebpf_maps.STATS_WORDS).transitions == {}


def test_a_slot_is_released_after_two_strikes_with_no_movement():
    stale = ebpf_maps.StaleSlots()
    counts = {1: [5], 2: [9], 3: [1]}
    slots = {1: 100, 2: 200, 3: 300}          # slot -> inode
    assert stale.to_release(slots, {100}, counts.get) == []        # 2 and 3 missing once
    counts[3] = [2]                                                # 3 moved: still alive somewhere
    assert stale.to_release(slots, {100}, counts.get) == [2]
    assert stale.to_release(slots, {100}, counts.get) == [3]       # 3 quiet since the last call
    assert stale.to_release(slots, {100, 200, 300}, counts.get) == []


def test_a_namespace_seen_again_starts_its_two_strikes_over():
    stale = ebpf_maps.StaleSlots()
    slots, counts = {1: 100}, {1: [0]}
    assert stale.to_release(slots, set(), counts.get) == []
    assert stale.to_release(slots, {100}, counts.get) == []        # found again
    assert stale.to_release(slots, set(), counts.get) == []        # first strike again
    assert stale.to_release({1: 101}, set(), counts.get) == []     # the slot now holds another inode
