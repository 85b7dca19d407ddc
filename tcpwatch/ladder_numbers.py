"""Pure: the segments of a connection's ladder, with their sequence and acknowledgement
numbers, derived from what each end's socket held at its state changes.

The eBPF program reads four numbers of the socket (struct tcp_sock) at every change it
reports to trace: snd_una (the oldest byte not acknowledged), snd_nxt (the next to send),
write_seq (the next the application writes: a FIN queued now takes it) and rcv_nxt (the next
expected from the peer). They mean something only at some changes, and only those are used:

  change of one end            what it proves
  syn_sent -> established      own ISN = snd_una - 1, peer's ISN = rcv_nxt - 1 (client)
  syn_recv -> established      own ISN = snd_una - 1, peer's ISN = rcv_nxt - 1 (server)
  established -> fin_wait1,    its FIN: seq = write_seq, ack = rcv_nxt
  close_wait -> last_ack,
  syn_recv -> fin_wait1
  established -> close_wait,   its ACK of the peer's FIN: seq = snd_nxt, ack = rcv_nxt
  fin_wait1 -> closing
  fin_wait1 -> fin_wait2,      the ACK of its FIN arrived: ack = snd_una
  closing -> close,
  last_ack -> close
  fin_wait2 -> close           the peer's FIN arrived, if rcv_nxt moved since its own FIN:
                               seq = rcv_nxt - 1 (an orphan becomes a timewait socket
                               before the peer's FIN, and then rcv_nxt has not moved)
  syn_sent -> close            no handshake: its SYN was not acknowledged, seq = snd_una

At close -> syn_sent and listen -> syn_recv the socket's numbers are not set yet (the ISN is
chosen after the first, and the second fires on a copy of the listener): nothing is read
there. A number nobody proved is not printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

MOD = 1 << 32


class Numbers(NamedTuple):
    snd_una: int
    snd_nxt: int
    write_seq: int
    rcv_nxt: int


# Changes at which the socket's numbers are not its own yet (see the module docstring), and
# the timewait socket's end, which carries none.
NOT_SET = {("close", "syn_sent"), ("listen", "syn_recv"), ("close", "listen"), ("time_wait", "close")}


def numbers_at(old: str, new: str, numbers: Numbers):
    """``numbers`` where they mean something at this change, else None."""
    return None if (old, new) in NOT_SET else numbers


@dataclass(frozen=True)
class Segment:
    """One segment between the two ends, drawn after the row it belongs to."""

    kind: str                 # SYN, SYN+ACK, ACK, FIN
    sender: int               # column of the end that sent it; -1: the end not on this host
    seq: Optional[int] = None
    ack: Optional[int] = None

    def label(self, isn=None, receiver=None) -> str:
        """``isn`` ({column: ISN}) and ``receiver``: numbers relative to each side's ISN, as
        tcpdump prints them without -S (seq from the sender's, ack from the receiver's)."""
        parts = [self.kind]
        for name, number, side in (("seq", self.seq, self.sender), ("ack", self.ack, receiver)):
            if number is None:
                continue
            base = isn.get(side) if isn is not None else None
            parts.append(f"{name}={(number - base) % MOD if base is not None else number}")
        return " ".join(parts)


FINS = {("established", "fin_wait1"), ("close_wait", "last_ack"), ("syn_recv", "fin_wait1")}
ACKS_OF_FIN = {("established", "close_wait"), ("fin_wait1", "closing")}
FIN_ACKED = {("fin_wait1", "fin_wait2"), ("closing", "close"), ("last_ack", "close")}
HANDSHAKE = {("syn_sent", "established"), ("syn_recv", "established")}
PEER = -1   # the sender column of a segment from an end not on this host


def plus(number: int, n: int = 1) -> int:
    return (number + n) % MOD


def isns(rows) -> dict:
    """{column: its ISN} as the handshake proved them (PEER: the end not on this host)."""
    found, columns = {}, {column for _o, _n, column, _numbers in rows}
    for old, new, column, numbers in rows:
        if numbers is not None and (old, new) in HANDSHAKE:
            found[column] = plus(numbers.snd_una, -1)
            other = 1 - column if len(columns) == 2 else PEER
            found.setdefault(other, plus(numbers.rcv_nxt, -1))
    return found


def segments(rows) -> dict:
    """{row index: [Segment]} of a connection's rows [(old, new, column, Numbers or None)]
    in time order. Each segment is drawn at the change of its sender that sent it, or, when
    its sender is not on this host, or sent it before its full socket existed (the SYN+ACK)
    or from a timewait socket (both report no change), at the change of the end that
    received it."""
    both = len({column for _o, _n, column, _numbers in rows}) == 2
    isn, fins, found = isns(rows), {}, {}
    # A SYN never acknowledged (refused, or timed out): its socket still had it as snd_una.
    unanswered = {column: numbers.snd_una for old, new, column, numbers in rows
                  if (old, new) == ("syn_sent", "close") and numbers is not None}
    for index, (old, new, column, numbers) in enumerate(rows):
        peer = 1 - column if both else PEER
        drawn = found.setdefault(index, [])
        if (old, new) == ("close", "syn_sent"):
            drawn.append(Segment("SYN", column, isn.get(column, unanswered.get(column))))
        elif (old, new) == ("listen", "syn_recv") and not both:   # else drawn where the client got it
            if peer in isn:
                drawn.append(Segment("SYN", peer, isn[peer]))
            drawn.append(Segment("SYN+ACK", column, isn.get(column), _next(isn.get(peer))))
        elif numbers is not None:
            drawn += _numbered(old, new, column, peer, both, numbers, fins)
    _last_acks(rows, fins, both, found)
    return {index: segs for index, segs in found.items() if segs}


def _next(number):
    return plus(number) if number is not None else None


def _numbered(old, new, column, peer, both, numbers, fins) -> list:
    """The segments a change with its numbers read proves (see the module docstring)."""
    change, out = (old, new), []
    if change == ("syn_sent", "established"):
        # The server's full socket reports its first change only after this one: its SYN+ACK
        # is drawn here, where it arrived, with the numbers the client's socket proves.
        out.append(Segment("SYN+ACK", peer, plus(numbers.rcv_nxt, -1), numbers.snd_una))
        out.append(Segment("ACK", column, numbers.snd_una, numbers.rcv_nxt))
    elif change == ("syn_recv", "established") and not both:
        out.append(Segment("ACK", peer, numbers.rcv_nxt, numbers.snd_una))
    elif change in FINS:
        fins[column] = numbers
        out.append(Segment("FIN", column, numbers.write_seq, numbers.rcv_nxt))
    elif change in ACKS_OF_FIN:
        if not both:
            out.append(Segment("FIN", peer, plus(numbers.rcv_nxt, -1)))
        out.append(Segment("ACK", column, numbers.snd_nxt, numbers.rcv_nxt))
    elif change in FIN_ACKED and not both:
        out.append(Segment("ACK", peer, None, numbers.snd_una))
    elif change == ("fin_wait2", "close") and column in fins and numbers.rcv_nxt != fins[column].rcv_nxt:
        if not both:
            out.append(Segment("FIN", peer, plus(numbers.rcv_nxt, -1)))
        out.append(Segment("ACK", column, numbers.snd_nxt, numbers.rcv_nxt))
    return out


def _last_acks(rows, fins: dict, both: bool, found: dict) -> None:
    """Both ends here: the active closer's ACK of the other's FIN, when its timewait socket
    sent it (no change reported), drawn where the other end's LAST_ACK ends."""
    if not both:
        return
    acks = {(s.sender, s.ack) for segs in found.values() for s in segs if s.kind == "ACK"}
    for index, (old, new, column, numbers) in enumerate(rows):
        if (old, new) == ("last_ack", "close") and numbers is not None and (1 - column, numbers.snd_una) not in acks:
            own_fin = fins.get(1 - column)
            found[index].append(Segment("ACK", 1 - column, plus(own_fin.write_seq) if own_fin else None,
                                        numbers.snd_una))
