"""The eBPF plan without bcc and without root: which attempts, which -D flags, and which
fallback for a missing field, a missing BTF file or a refused tp_btf, against a fake BTF."""

import os

import pytest

from tcpwatch import config
from tcpwatch.sources import btf, ebpf_layout, ebpf_plan
from tcpwatch.sources.ebpf_plan import (AttachModeUnavailable, BpfUnavailable, Environment, Request,
                                        after_refusal, make_plan)

HANDLER = 0xFFFFFFFF81234560
TICK_NS = 4_000_000   # HZ=250


class FakeBtf:
    """Answers like btf.Btf for the fields and names it is given, BtfError for the rest."""

    def __init__(self, drop=(), sizes=None):
        fields = {**ebpf_layout.FIELDS, **ebpf_layout.OWNER_FIELDS, **ebpf_layout.COOKIE_FIELDS,
                  **ebpf_layout.SOCKET_FIELDS}
        self.layout = {(s, path): (8 * i, (sizes or {}).get(path, size or 8))
                       for i, (s, path, size) in enumerate(fields.values()) if path not in drop}
        hooks = ebpf_layout.TP_BTF_HOOKS + ebpf_layout.TP_BTF_TIMER_HOOKS
        self.ids = {(btf.TYPEDEF, f"btf_trace_{tp}"): 1000 + i for i, (_fn, tp) in enumerate(hooks)}
        self.ids[(btf.FUNC, ebpf_layout.OWNER_ITERATOR)] = 77
        self.ids[(btf.FUNC, ebpf_layout.SOCKET_ITERATOR)] = 78

    def offset(self, struct_name, path):
        if (struct_name, path) not in self.layout:
            raise btf.BtfError(f"struct {struct_name} has no member {path}")
        return self.layout[(struct_name, path)]

    def type_id(self, kind, name):
        if (kind, name) not in self.ids:
            raise btf.BtfError(f"the kernel's BTF has no typedef {name}")
        return self.ids[(kind, name)]


def environment(types=None, symbol=HANDLER, initial_pidns=True, missing_file=False):
    def load(path):
        if missing_file:
            raise btf.BtfError(f"cannot read {path}: No such file or directory")
        return types or FakeBtf()
    return Environment(load_btf=load, symbol=lambda name: symbol, initial_pid_namespace=lambda: initial_pidns,
                       tick_ns=lambda: TICK_NS)


def test_auto_with_btf_tries_tp_btf_then_the_classic_tracepoints():
    plan = make_plan(Request(max_sockets=1000, port_range=(80, 90)), environment())
    assert [(a.mode, a.reason) for a in plan.attempts] == [("tp_btf", "btf"), ("tracepoint", "tp_btf_refused")]
    tp_btf, classic = plan.attempts
    assert plan.socket_slots == 1024 and plan.time_wait_tracked and not plan.notes
    for flag in ("-DMAX_SOCKETS=1000", "-DSOCKET_SLOTS=1024", "-DMAX_NETNS=128", "-DPORT_MIN=80", "-DPORT_MAX=90",
                 "-DTRACK_TIME_WAIT", f"-DTW_TIMER_HANDLER={HANDLER:#x}ULL", f"-DTICK_NS={TICK_NS}ULL",
                 "-DTW_LEN_JIFFIES=15000LL", "-DOFF_SKC_COOKIE=80"):
        assert flag in tp_btf.cflags and flag in classic.cflags
    assert "-DATTACH_TP_BTF" in tp_btf.cflags and "-DATTACH_TP_BTF" not in classic.cflags
    assert sum(f.startswith("-DOFF_") for f in tp_btf.cflags) == len(ebpf_layout.FIELDS) + len(ebpf_layout.COOKIE_FIELDS)
    assert dict(tp_btf.hooks) == {fn: 1000 + i for i, (fn, _tp) in
                                  enumerate(ebpf_layout.TP_BTF_HOOKS + ebpf_layout.TP_BTF_TIMER_HOOKS)}
    assert classic.hooks == () and "-DEMIT_EVENTS" not in tp_btf.cflags and "-DOWNER_ITER" not in tp_btf.cflags


def test_namespaces_are_keyed_by_cookie_where_the_kernel_has_one():
    plan = make_plan(Request(), environment())
    assert plan.netns_by_cookie and "-DOFF_NET_COOKIE=" + str(8 * len(ebpf_layout.FIELDS) + 8 * len(
        ebpf_layout.OWNER_FIELDS)) in plan.attempts[0].cflags
    old = make_plan(Request(), environment(FakeBtf(drop={"net_cookie"})))
    assert not old.netns_by_cookie and "by inode" in old.notes[0][0]
    assert not any(f.startswith("-DOFF_NET_COOKIE") for a in old.attempts for f in a.cflags)
    assert [a.mode for a in old.attempts] == ["tp_btf", "tracepoint"]


def test_requested_modes_are_the_only_attempt():
    assert [(a.mode, a.reason) for a in make_plan(Request(attach="tp_btf"), environment()).attempts] == [
        ("tp_btf", "requested")]
    assert [(a.mode, a.reason) for a in make_plan(Request(attach="tracepoint"), environment()).attempts] == [
        ("tracepoint", "requested")]


@pytest.mark.parametrize("env,says", [
    (environment(FakeBtf(drop={"__sk_common.skc_cookie"})), "no member __sk_common.skc_cookie"),
    (environment(FakeBtf(sizes={"tw_substate": 4})), "tw_substate is 4 bytes here, not 1"),
    (environment(missing_file=True), "cannot read"),
])
def test_without_usable_btf_auto_falls_back_and_tp_btf_is_refused(env, says):
    plan = make_plan(Request(), env)
    [attempt] = plan.attempts
    assert (attempt.mode, attempt.reason) == ("tracepoint", "no_btf") and says in attempt.detail
    assert not plan.time_wait_tracked and "-DTRACK_TIME_WAIT" not in attempt.cflags
    assert not any(f.startswith("-DOFF_") for f in attempt.cflags)
    with pytest.raises(AttachModeUnavailable, match=f"attach tp_btf: .*{says}"):
        make_plan(Request(attach="tp_btf"), env)
    classic = make_plan(Request(attach="tracepoint"), env)
    assert classic.notes and "time_wait timing disabled" in classic.notes[0][0]


def test_a_hidden_tw_timer_handler_turns_off_time_wait_timing_only():
    plan = make_plan(Request(), environment(symbol=None))
    assert not plan.time_wait_tracked and "CAP_SYSLOG" in plan.notes[0][0]
    assert dict(plan.attempts[0].hooks).keys() == {fn for fn, _tp in ebpf_layout.TP_BTF_HOOKS}
    assert make_plan(Request(track_time_wait=False), environment(symbol=None)).notes == []


def test_a_refused_tp_btf_falls_back_unless_it_was_asked_for():
    request = Request()
    plan = make_plan(request, environment())
    fallback = after_refusal(request, plan, plan.attempts[0], "the verifier refused tp_btf_x: bad")
    assert (fallback.mode, fallback.reason, fallback.detail) == ("tracepoint", "tp_btf_refused",
                                                                 "the verifier refused tp_btf_x: bad")
    with pytest.raises(BpfUnavailable, match="tracefs"):
        after_refusal(request, plan, plan.attempts[1], "tracefs is not mounted")
    asked = Request(attach="tp_btf")
    with pytest.raises(AttachModeUnavailable, match="attach tp_btf: refused"):
        after_refusal(asked, make_plan(asked, environment()), make_plan(asked, environment()).attempts[0], "refused")
    classic = Request(attach="tracepoint")
    only = make_plan(classic, environment())
    with pytest.raises(BpfUnavailable) as raised:
        after_refusal(classic, only, only.attempts[0], "no tracefs")
    assert not isinstance(raised.value, AttachModeUnavailable)   # --ebpf auto still degrades


def test_the_owner_iterator_is_compiled_in_only_where_it_can_work():
    plan = make_plan(Request(owner_iterator=True), environment())
    assert plan.owner_iterator_id == 77 and "-DOWNER_ITER" in plan.attempts[0].cflags
    assert sum(f.startswith("-DOFF_TASK") or f.startswith("-DOFF_FILE") or f.startswith("-DOFF_INODE")
               for f in plan.attempts[0].cflags) == len(ebpf_layout.OWNER_FIELDS)
    in_container = make_plan(Request(owner_iterator=True), environment(initial_pidns=False))
    assert in_container.owner_iterator_id is None and "pid namespace" in in_container.no_owner_iterator
    no_field = make_plan(Request(owner_iterator=True), environment(FakeBtf(drop={"f_inode"})))
    assert no_field.owner_iterator_id is None and "f_inode" in no_field.no_owner_iterator
    assert [a.mode for a in no_field.attempts] == ["tp_btf", "tracepoint"]   # the rest is unaffected


def test_the_socket_iterator_is_compiled_in_where_btf_describes_what_it_reads():
    plan = make_plan(Request(socket_iterator=True), environment())
    assert plan.socket_iterator_id == 78 and not plan.no_socket_iterator
    for attempt in plan.attempts:   # both attach modes count by iterator
        assert "-DSOCKET_ITER" in attempt.cflags and f"-DDIAG_TICK_NS={TICK_NS}ULL" in attempt.cflags
        assert all(any(f.startswith(f"-D{name}=") for f in attempt.cflags) for name in ebpf_layout.SOCKET_FIELDS)
    assert make_plan(Request(), environment()).socket_iterator_id is None
    no_field = make_plan(Request(socket_iterator=True), environment(FakeBtf(drop={"sk_max_ack_backlog"})))
    assert no_field.socket_iterator_id is None and "sk_max_ack_backlog" in no_field.no_socket_iterator
    assert not any("-DSOCKET_ITER" in a.cflags for a in no_field.attempts)
    assert [a.mode for a in no_field.attempts] == ["tp_btf", "tracepoint"]   # the rest is unaffected
    no_btf = make_plan(Request(socket_iterator=True), environment(missing_file=True))
    assert no_btf.socket_iterator_id is None and "cannot read" in no_btf.no_socket_iterator


@pytest.mark.parametrize("request_,error", [
    (Request(max_sockets=0), BpfUnavailable), (Request(max_sockets=(1 << 24) + 1), BpfUnavailable),
    (Request(max_netns=1), BpfUnavailable), (Request(attach="kprobe"), AttachModeUnavailable),
])
def test_flags_out_of_range_are_refused_before_anything_loads(request_, error):
    with pytest.raises(error):
        make_plan(request_, environment())


@pytest.mark.parametrize("flag,value", [("--collector.bpf.max-netns", "1"), ("--collector.bpf.max-netns", "65537"),
                                        ("--collector.bpf.max-sockets", "0"), ("--collector.bpf.attach", "kprobe")])
def test_the_flags_use_the_plans_checks(flag, value):
    with pytest.raises(config.ConfigError, match="must be"):
        config.build_parser().parse_args(["run", flag, value])


@pytest.mark.skipif(not os.path.exists(btf.VMLINUX), reason="no kernel BTF")
def test_the_running_kernels_btf_gives_a_tp_btf_plan():
    plan = make_plan(Request(owner_iterator=True), Environment(symbol=lambda name: HANDLER))
    assert plan.attempts[0].mode == "tp_btf" and not plan.layout_error
