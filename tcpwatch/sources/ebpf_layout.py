"""What the eBPF program reads from the kernel: the struct fields (their offsets come from
the running kernel's BTF, never from headers, and reach the compiler as -D flags) and the
tracepoints it hooks in tp_btf mode (each by the BTF id of its btf_trace_ typedef)."""

from __future__ import annotations

from . import btf

# Each tp_btf function of tcpstates.c and its tracepoint; the timer hooks only with TIME_WAIT timing.
TP_BTF_HOOKS = (("tp_btf_inet_sock_set_state", "inet_sock_set_state"),
                ("tp_btf_tcp_retransmit_skb", "tcp_retransmit_skb"),
                ("tp_btf_tcp_send_reset", "tcp_send_reset"),
                ("tp_btf_tcp_receive_reset", "tcp_receive_reset"))
TP_BTF_TIMER_HOOKS = (("tp_btf_timer_expire_entry", "timer_expire_entry"),
                      ("tp_btf_timer_cancel", "timer_cancel"))

# Every kernel field the program reads: -D name -> (struct, member path, the size each read
# assumes, None when only the offset matters). A kernel whose BTF gives another size is
# refused, not misread.
FIELDS = {
    "OFF_SK_PROTOCOL": ("sock", "sk_protocol", 2),
    "OFF_SKC_FAMILY": ("sock", "__sk_common.skc_family", 2),
    "OFF_INET_SPORT": ("inet_sock", "inet_sport", 2),
    "OFF_SKC_NUM": ("sock", "__sk_common.skc_num", 2),
    "OFF_SKC_DPORT": ("sock", "__sk_common.skc_dport", 2),
    "OFF_SKC_RCV_SADDR": ("sock", "__sk_common.skc_rcv_saddr", 4),
    "OFF_SKC_DADDR": ("sock", "__sk_common.skc_daddr", 4),
    "OFF_SKC_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr", 16),
    "OFF_SKC_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr", 16),
    "OFF_SKC_NET": ("sock", "__sk_common.skc_net", 8),
    "OFF_SKC_COOKIE": ("sock", "__sk_common.skc_cookie", 8),
    "OFF_NS_INUM": ("net", "ns.inum", 4),
    "OFF_SKB_DEV": ("sk_buff", "dev", 8),
    "OFF_DEV_ND_NET": ("net_device", "nd_net", 8),
    "OFF_TIMER_FUNCTION": ("timer_list", "function", 8),
    "OFF_TIMER_EXPIRES": ("timer_list", "expires", 8),
    "OFF_TIMER_PPREV": ("timer_list", "entry.pprev", 8),
    "OFF_TW_TIMER": ("inet_timewait_sock", "tw_timer", None),   # only its start is used
    "OFF_TW_SUBSTATE": ("inet_timewait_sock", "tw_substate", 1),
}
# The namespace's cookie, the key of its counters (Linux 5.12+: a u64 the kernel never hands
# out twice). Without it the program keys namespaces by inode, which the kernel reuses.
COOKIE_FIELDS = {"OFF_NET_COOKIE": ("net", "net_cookie", 8)}
# What the socket-owner iterator reads (OWNER_ITER in tcpstates.c), apart from FIELDS so that
# a kernel lacking one loses only the iterator (owners then come from the /proc walk).
OWNER_FIELDS = {
    "OFF_TASK_TGID": ("task_struct", "tgid", 4),
    "OFF_TASK_COMM": ("task_struct", "comm", 16),
    "OFF_FILE_INODE": ("file", "f_inode", 8),
    "OFF_INODE_MODE": ("inode", "i_mode", 2),
    "OFF_INODE_INO": ("inode", "i_ino", 8),
}
OWNER_ITERATOR = "bpf_iter_task_file"   # the kernel function an iter/task_file program attaches to
# What the socket iterator reads (SOCKET_ITER in tcpstates.c) beyond FIELDS: a kernel lacking
# one loses only the iterator (sockets are then counted with inet_diag).
SOCKET_FIELDS = {
    "OFF_SKC_STATE": ("sock", "__sk_common.skc_state", 1),
    "OFF_SK_SOCKET": ("sock", "sk_socket", 8),
    "OFF_SK_ACK_BACKLOG": ("sock", "sk_ack_backlog", 4),
    "OFF_SK_MAX_ACK_BACKLOG": ("sock", "sk_max_ack_backlog", 4),
    "OFF_SOCKET_ALLOC_SOCKET": ("socket_alloc", "socket", None),
    "OFF_SOCKET_ALLOC_INODE": ("socket_alloc", "vfs_inode", None),
    "OFF_INODE_INO": ("inode", "i_ino", 8),
}
SOCKET_ITERATOR = "bpf_iter_tcp"
# What trace reads at each change for its sequence numbers (SEQ_NUMBERS, with EMIT_EVENTS only).
SEQ_FIELDS = {
    "OFF_TP_SND_UNA": ("tcp_sock", "snd_una", 4),
    "OFF_TP_SND_NXT": ("tcp_sock", "snd_nxt", 4),
    "OFF_TP_WRITE_SEQ": ("tcp_sock", "write_seq", 4),
    "OFF_TP_RCV_NXT": ("tcp_sock", "rcv_nxt", 4),
}        # the kernel function an iter/tcp program attaches to


def _offsets(types, fields: dict) -> dict:
    offsets = {}
    for name, (struct_name, path, expected) in fields.items():
        offset, size = types.offset(struct_name, path)
        if expected is not None and size != expected:
            raise btf.BtfError(f"struct {struct_name}.{path} is {size} bytes here, not {expected}")
        offsets[name] = offset
    return offsets


def kernel_layout(btf_path: str = btf.VMLINUX, hooks=TP_BTF_HOOKS + TP_BTF_TIMER_HOOKS, load=btf.Btf.load):
    """(-D offsets, {tracepoint: BTF id of btf_trace_<tracepoint>}) from the kernel's BTF.
    Raises btf.BtfError when the BTF is missing or does not describe what the program reads."""
    types = load(btf_path)
    ids = {tracepoint: types.type_id(btf.TYPEDEF, f"btf_trace_{tracepoint}") for _fn, tracepoint in hooks}
    return _offsets(types, FIELDS), ids


def cookie_layout(btf_path: str = btf.VMLINUX, load=btf.Btf.load) -> dict:
    """-D offset of net->net_cookie; BtfError when this kernel has none."""
    return _offsets(load(btf_path), COOKIE_FIELDS)


def owner_layout(btf_path: str = btf.VMLINUX, load=btf.Btf.load) -> tuple:
    """(-D offsets, BTF id of bpf_iter_task_file) for the socket-owner iterator; BtfError
    when this kernel's BTF cannot describe it."""
    types = load(btf_path)
    return _offsets(types, OWNER_FIELDS), types.type_id(btf.FUNC, OWNER_ITERATOR)


def socket_layout(btf_path: str = btf.VMLINUX, load=btf.Btf.load) -> tuple:
    """(-D offsets, BTF id of bpf_iter_tcp) for the socket iterator; BtfError when this
    kernel's BTF cannot describe it."""
    types = load(btf_path)
    return _offsets(types, SOCKET_FIELDS), types.type_id(btf.FUNC, SOCKET_ITERATOR)


def seq_layout(btf_path: str = btf.VMLINUX, load=btf.Btf.load) -> dict:
    """-D offsets of the tcp_sock sequence numbers trace reads; BtfError without them."""
    return _offsets(load(btf_path), SEQ_FIELDS)
