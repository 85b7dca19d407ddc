"""The kernel's TCP state numbers and their label names: the one place they are written.

Numbers are those of include/net/tcp_states.h, which inet_diag reports in
``idiag_state`` and the ``sock:inet_sock_set_state`` tracepoint in ``oldstate``/``newstate``.
Label names are the kernel's names lower-cased, as ``ss`` prints them.
"""

ESTABLISHED = 1
SYN_SENT = 2
SYN_RECV = 3
FIN_WAIT1 = 4
FIN_WAIT2 = 5
TIME_WAIT = 6
CLOSE = 7
CLOSE_WAIT = 8
LAST_ACK = 9
LISTEN = 10
CLOSING = 11
NEW_SYN_RECV = 12  # request sockets; inet_diag reports them as SYN_RECV

# The states inet_diag reports, in kernel order; every one is exported, 0 when empty.
REPORTED = (
    ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT,
    CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN, CLOSING,
)

NAMES = {
    ESTABLISHED: "established",
    SYN_SENT: "syn_sent",
    SYN_RECV: "syn_recv",
    FIN_WAIT1: "fin_wait1",
    FIN_WAIT2: "fin_wait2",
    TIME_WAIT: "time_wait",
    CLOSE: "close",
    CLOSE_WAIT: "close_wait",
    LAST_ACK: "last_ack",
    LISTEN: "listen",
    CLOSING: "closing",
    NEW_SYN_RECV: "new_syn_recv",
}

BY_NAME = {name: number for number, name in NAMES.items()}

# Bit mask of every state, for the inet_diag request's idiag_states (1 << state).
ALL_STATES_MASK = sum(1 << s for s in REPORTED)

# States of a socket that may still sit in a listener's accept queue (no fd yet, inode 0):
# it belongs to whoever owns the listener, not to the kernel alone.
ACCEPT_QUEUE_STATES = frozenset((SYN_RECV, ESTABLISHED, CLOSE_WAIT))

FAMILIES = ("ipv4", "ipv6")

# States a socket can be timed in: entered and left through the tracepoint. CLOSE is where
# sockets start and end, and TIME_WAIT is timed through the timewait timer instead.
TIMED = (ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE_WAIT,
         LAST_ACK, LISTEN, CLOSING)

# Transitions the kernel's state machine makes, as sock:inet_sock_set_state reports them:
# exported at 0 before they happen so that rate() sees their first increase. Others that
# occur are exported too. None names TIME_WAIT or NEW_SYN_RECV (not full-socket states).
KNOWN_TRANSITIONS = (
    (CLOSE, SYN_SENT), (CLOSE, LISTEN), (LISTEN, CLOSE), (LISTEN, SYN_RECV),
    (SYN_SENT, ESTABLISHED), (SYN_SENT, CLOSE), (SYN_RECV, ESTABLISHED), (SYN_RECV, CLOSE),
    (SYN_RECV, FIN_WAIT1), (ESTABLISHED, FIN_WAIT1), (ESTABLISHED, CLOSE_WAIT),
    (ESTABLISHED, CLOSE), (FIN_WAIT1, FIN_WAIT1), (FIN_WAIT1, FIN_WAIT2), (FIN_WAIT1, CLOSING),
    (FIN_WAIT1, CLOSE), (FIN_WAIT2, CLOSE), (CLOSING, CLOSE), (CLOSE_WAIT, LAST_ACK),
    (CLOSE_WAIT, CLOSE), (LAST_ACK, CLOSE),
)

# TCP_TIMEWAIT_LEN: how long a timewait socket lives unless reused or reset.
TIME_WAIT_SECONDS = 60.0


def name(state: int) -> str:
    """Label name of a kernel state number; unknown numbers keep their number visible."""
    return NAMES.get(state, f"unknown_{state}")
