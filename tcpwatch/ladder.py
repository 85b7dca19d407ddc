"""Pure: ``tcpwatch trace --ladder`` groups transitions into connections and draws each as
the ladder diagrams of the textbooks: one column per end seen on this host, one row per
transition, with the time since the row before.

Events come from the eBPF program one by one (``TraceEvent`` decoded into ``Step``). A
connection is the pair of its two endpoints; each end is one socket, told apart by its
socket cookie (tp_btf), else by its namespace and local endpoint. A connection is printed
when every end is done: closed without TIME_WAIT, or its TIME_WAIT ended (the program reports
the timewait socket's death as time_wait -> close, with the same cookie). One that stays
quiet for ``timeout`` seconds (a leaked CLOSE_WAIT, an idle keep-alive) is printed as far as
it got, and so is every connection still open when the trace stops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from .ladder_numbers import PEER, Numbers, isns, segments

# Changes that only a system call on the socket itself makes: the task running then is the
# owner. Any other change may run in softirq context, on behalf of whatever task the CPU
# was running (on loopback, often the peer), so its task says nothing about the owner.
OWNER_TRANSITIONS = {("close", "syn_sent"), ("close", "listen"), ("established", "fin_wait1"),
                     ("close_wait", "last_ack"), ("syn_recv", "fin_wait1")}
# The full socket's last change when a timewait socket takes its place.
INTO_TIME_WAIT = {("fin_wait2", "close"), ("closing", "close")}


@dataclass(frozen=True)
class Step:
    """One transition of one socket, as the trace sees it."""

    time: float                 # wall-clock seconds
    netns: int                  # namespace inode (0: unknown)
    netns_name: str
    local: str                  # "ADDR:PORT"
    remote: str
    old: str                    # state names, as the metrics label them
    new: str
    cookie: int = 0             # 0: unknown (tracepoint mode)
    pid: int = 0
    comm: str = ""
    numbers: Optional[Numbers] = None   # the socket's sequence numbers at the change (ladder_numbers.py)


@dataclass
class End:
    """One socket of a connection: a column."""

    key: tuple
    netns_name: str
    local: str
    remote: str
    owner: str = ""
    closed: bool = False         # its full socket reached close
    in_time_wait: bool = False   # ... by becoming a timewait socket, still alive
    time_wait_since: float = 0.0


def _unbound(endpoint: str) -> str:
    return endpoint.rpartition(":")[0] + ":0"


def _end_key(step: Step) -> tuple:
    return ("cookie", step.cookie) if step.cookie else ("tuple", step.netns, step.local, step.remote)


@dataclass
class Connection:
    endpoints: frozenset
    ends: list = field(default_factory=list)        # [End], in order of first event
    rows: list = field(default_factory=list)        # [(Step, End)], in time order
    last_time: float = 0.0
    filed_as: object = None                          # its key in Ladders._open

    def closed_at(self, local: str) -> bool:
        """Its socket on ``local`` has closed: a new socket there is the 4-tuple's next
        connection (a TIME_WAIT reused), not more of this one."""
        return any(e.closed and e.local == local for e in self.ends)

    def reused_by(self, step: Step) -> bool:
        return step.old in ("close", "listen") and self.closed_at(step.local)

    def end_of(self, step: Step) -> End:
        key = _end_key(step)
        for end in self.ends:
            if end.key == key or (step.old == "time_wait" and end.in_time_wait
                                  and (end.local, end.remote) == (step.local, step.remote)):
                break
            if (key[0] == "tuple" and end.key[0] == "tuple" and end.local.endswith(":0")
                    and (end.key[1], end.remote) == (step.netns, step.remote)):
                end.key = key           # tracepoint mode: connect() named no port yet
                break
        else:
            end = End(key, step.netns_name, step.local, step.remote)
            self.ends.append(end)
        if end.local.endswith(":0") and not step.local.endswith(":0"):
            end.local = step.local
        return end

    def column(self, end: End) -> int:
        return next(i for i, e in enumerate(self.ends) if e is end)

    @property
    def done(self) -> bool:
        return bool(self.ends) and all(e.closed and not e.in_time_wait for e in self.ends)


class Ladders:
    """Feeds on Steps; hands back finished connections to draw."""

    def __init__(self, timeout: float = 90.0, time_wait_traced: bool = True):
        self.timeout = timeout
        self.time_wait_traced = time_wait_traced
        self._open = {}        # frozenset of the two endpoints -> Connection
        self._by_cookie = {}   # socket cookie -> Connection
        self._time_waits = {}  # (local, remote) of an end in TIME_WAIT -> Connection

    def _file(self, conn: Connection, key) -> None:
        self._open.pop(conn.filed_as, None)
        conn.filed_as = key
        self._open[key] = conn

    def _find(self, step: Step, key: frozenset):
        if step.cookie and step.cookie in self._by_cookie:
            return self._by_cookie[step.cookie]
        if step.old == "time_wait":   # tracepoint mode: full sockets had no cookie to join by
            return self._time_waits.get((step.local, step.remote))
        conn = self._open.get(key)
        if conn is not None and conn.reused_by(step):
            self._file(conn, (key, id(conn)))   # still open (its TIME_WAIT): out of the way
            return None
        if conn is None and not step.cookie:   # tracepoint mode: the connect() seen before its port
            conn = self._open.get(frozenset((_unbound(step.local), step.remote)))
        return conn

    def _rekey(self, conn: Connection, key: frozenset, step: Step) -> None:
        """The connect()'s local port is known now: file the connection under its real
        endpoints, merged with the other end's if that one was seen first."""
        other = self._open.get(key)
        if other is not None and other is not conn and not other.closed_at(step.local):
            conn.ends += other.ends
            conn.rows = sorted(conn.rows + other.rows, key=lambda row: row[0].time)
            for cookie, owner in list(self._by_cookie.items()):
                if owner is other:
                    self._by_cookie[cookie] = conn
            self._open.pop(other.filed_as, None)
        elif other is not None and other is not conn:
            self._file(other, (key, id(other)))
        conn.endpoints = key
        self._file(conn, key)

    def _forget(self, conn: Connection) -> Connection:
        self._open.pop(conn.filed_as, None)
        for end in conn.ends:
            if end.key[0] == "cookie":
                self._by_cookie.pop(end.key[1], None)
            if self._time_waits.get((end.local, end.remote)) is conn:
                del self._time_waits[(end.local, end.remote)]
        return conn

    def add(self, step: Step) -> list:
        """Take one step; returns the connections it finished (usually none)."""
        if step.remote.endswith(":0") or step.old == step.new:   # listeners; keep-alive noise
            return []
        key = frozenset((step.local, step.remote))
        conn = self._find(step, key)
        if conn is None:
            if step.old == "time_wait":   # a timewait socket born before the trace started
                return []
            conn = Connection(key)
            self._file(conn, key)
        elif conn.endpoints != key and not step.local.endswith(":0"):
            self._rekey(conn, key, step)
        if step.cookie and step.old != "time_wait":
            self._by_cookie[step.cookie] = conn
        end = conn.end_of(step)
        conn.rows.append((step, end))
        conn.last_time = step.time
        if (step.old, step.new) in OWNER_TRANSITIONS and step.comm and not end.owner:
            end.owner = f"{step.comm}[{step.pid}]"
        if step.old == "time_wait":
            end.in_time_wait = False
            self._time_waits.pop((end.local, end.remote), None)
        elif step.new == "close":
            end.closed = True
            if (step.old, step.new) in INTO_TIME_WAIT and self.time_wait_traced:
                end.in_time_wait = True
                end.time_wait_since = step.time
                self._time_waits[(end.local, end.remote)] = conn
        return [self._forget(conn)] if conn.done else []

    def expire(self, now: float) -> list:
        """Connections quiet for longer than the timeout: printed as far as they got."""
        stale = [conn for conn in self._open.values() if now - conn.last_time > self.timeout]
        return [self._forget(conn) for conn in stale]

    def drain(self) -> list:
        """Everything still open (the trace stops)."""
        return [self._forget(conn) for conn in list(self._open.values())]


COLUMN = 34


def render(conn: Connection, now: Optional[float] = None, stopped: bool = False,
           time_wait_traced: bool = True, relative: bool = False) -> str:
    """A connection as a ladder. ``now``: when it is drawn (for what is still going on).
    ``relative``: sequence numbers from each side's ISN, as tcpdump prints them."""
    first = conn.rows[0][0]
    names = sorted({end.netns_name for end in conn.ends})
    a, b = sorted(conn.endpoints) if len(conn.endpoints) == 2 else (first.local, first.remote)
    lines = [f"== {a} <-> {b}  netns {', '.join(names)}  "
             f"({'both ends on this host' if len(conn.ends) > 1 else 'one end on this host'})"]
    header = f"{'TIME':<15} {'+SINCE':>10}  "
    for end in conn.ends:
        label = end.local + (f" {end.owner}" if end.owner else "")
        header += f"{label:<{COLUMN}}"
    lines.append(header.rstrip())
    numbered = [(step.old, step.new, conn.column(end), step.numbers) for step, end in conn.rows]
    drawn, isn = segments(numbered), (isns(numbered) if relative else None)
    previous = first.time
    for index, (step, end) in enumerate(conn.rows):
        column = conn.column(end)
        stamp = time.strftime("%H:%M:%S", time.localtime(step.time)) + f".{int(step.time % 1 * 1e6):06d}"
        lines.append(f"{stamp:<15} {'+' + format(step.time - previous, '.6f'):>10}  "
                     f"{' ' * (COLUMN * column)}{_change(step, time_wait_traced)}".rstrip())
        for segment in drawn.get(index, ()):
            lines.append(f"{'':<15} {'':>10}  " + _arrow(segment, len(conn.ends), isn))
        previous = step.time
    lines += _unfinished(conn, now, stopped)
    if not time_wait_traced and any((s.old, s.new) in INTO_TIME_WAIT for s, _ in conn.rows):
        lines.append("(the end of TIME_WAIT is not traced here: see tcpwatch doctor)")
    return "\n".join(lines)


def _change(step: Step, time_wait_traced: bool) -> str:
    change = f"{step.old.upper()} -> {step.new.upper()}"
    if (step.old, step.new) in INTO_TIME_WAIT and time_wait_traced:
        return change + " (TIME_WAIT)"
    if step.old == "time_wait":
        return "TIME_WAIT ends"
    if (step.old, step.new) == ("syn_sent", "close"):
        return change + " (no handshake: refused by a reset, or timed out)"
    return change


def _arrow(segment, ends: int, isn) -> str:
    """A segment between the columns, pointing from its sender to its receiver."""
    receiver = (1 - segment.sender if segment.sender >= 0 else 0) if ends == 2 or segment.sender == PEER else PEER
    label = segment.label(isn, receiver)
    span = max(COLUMN * 2 - 4, len(label) + 6)
    if segment.sender == 0:
        return f"{label} " + "-" * (span - len(label) - 2) + ">"
    return "<" + "-" * (span - len(label) - 2) + f" {label}"


def _unfinished(conn: Connection, now, stopped: bool) -> list:
    """What each end was still doing when the connection was drawn."""
    lines = []
    for end in conn.ends:
        if end.in_time_wait:
            held = (now - end.time_wait_since) if now is not None else 0.0
            why = "trace stopped" if stopped else "no end seen"
            lines.append(f"{'':<15} {'':>10}  " + " " * (COLUMN * conn.column(end))
                         + f"(still TIME_WAIT after {held:.1f}s: {why})")
        elif not end.closed:
            state = next((s.new for s, e in reversed(conn.rows) if e is end), "?")
            why = "trace stopped" if stopped else "quiet too long"
            lines.append(f"{'':<15} {'':>10}  " + " " * (COLUMN * conn.column(end))
                         + f"(still {state.upper()}: {why})")
    return lines
