"""``trace --ladder`` with sequence and acknowledgement numbers: every number the ladder
prints against the segment tcpdump saw (absolute numbers, -S), for both close orders, a
simultaneous close and a connection refused by a reset, in both attach modes and over IPv6;
``--relative`` as tcpdump prints them; and the pure derivation on hand-made numbers."""

import re
import shutil
import signal
import subprocess
import time

import pytest

from helpers import PYTHON, ROOT, Workload, in_netns, wait_for
from tcpwatch.ladder_numbers import Numbers, Segment, isns, segments

ISN_C, ISN_S = 1000, 5000


def test_the_handshake_and_both_fins_from_the_numbers_of_both_ends():
    rows = [("close", "syn_sent", 0, None),
            ("syn_sent", "established", 0, Numbers(ISN_C + 1, ISN_C + 1, ISN_C + 1, ISN_S + 1)),
            ("listen", "syn_recv", 1, None),
            ("syn_recv", "established", 1, Numbers(ISN_S + 1, ISN_S + 1, ISN_S + 1, ISN_C + 1)),
            ("established", "fin_wait1", 0, Numbers(ISN_C + 1, ISN_C + 1, ISN_C + 1, ISN_S + 1)),
            ("established", "close_wait", 1, Numbers(ISN_S + 1, ISN_S + 1, ISN_S + 1, ISN_C + 2)),
            ("fin_wait1", "fin_wait2", 0, Numbers(ISN_C + 2, ISN_C + 2, ISN_C + 2, ISN_S + 1)),
            ("fin_wait2", "close", 0, Numbers(ISN_C + 2, ISN_C + 2, ISN_C + 2, ISN_S + 1)),   # an orphan
            ("close_wait", "last_ack", 1, Numbers(ISN_S + 1, ISN_S + 1, ISN_S + 1, ISN_C + 2)),
            ("last_ack", "close", 1, Numbers(ISN_S + 2, ISN_S + 2, ISN_S + 2, ISN_C + 2))]
    drawn = [s for index in sorted(segments(rows)) for s in segments(rows)[index]]
    assert drawn == [Segment("SYN", 0, ISN_C), Segment("SYN+ACK", 1, ISN_S, ISN_C + 1),
                     Segment("ACK", 0, ISN_C + 1, ISN_S + 1), Segment("FIN", 0, ISN_C + 1, ISN_S + 1),
                     Segment("ACK", 1, ISN_S + 1, ISN_C + 2), Segment("FIN", 1, ISN_S + 1, ISN_C + 2),
                     Segment("ACK", 0, ISN_C + 2, ISN_S + 2)]
    isn = isns(rows)
    assert [s.label(isn, 1 - s.sender) for s in drawn[:3]] == ["SYN seq=0", "SYN+ACK seq=0 ack=1", "ACK seq=1 ack=1"]


def test_one_end_shows_what_it_knows_and_a_refused_connect_invents_nothing():
    client_only = [("close", "syn_sent", 0, None),
                   ("syn_sent", "established", 0, Numbers(ISN_C + 1, ISN_C + 1, ISN_C + 1, ISN_S + 1))]
    drawn = [s for segs in segments(client_only).values() for s in segs]
    assert drawn == [Segment("SYN", 0, ISN_C), Segment("SYN+ACK", -1, ISN_S, ISN_C + 1),
                     Segment("ACK", 0, ISN_C + 1, ISN_S + 1)]
    refused = [("close", "syn_sent", 0, None), ("syn_sent", "close", 0, Numbers(ISN_C, ISN_C + 1, ISN_C + 1, 0))]
    assert [s for segs in segments(refused).values() for s in segs] == [Segment("SYN", 0, ISN_C)]


# --- against tcpdump ---------------------------------------------------------------------

needs_tools = pytest.mark.skipif(not shutil.which("tcpdump") or not shutil.which("iptables"),
                                 reason="tcpdump and iptables needed")


def kind_of(flags: str) -> str:
    """tcpdump's flags ([S.], [FP.], ...) as the ladder names the segment."""
    for letter, kind in (("R", "RST"), ("F", "FIN"), ("S", "SYN")):
        if letter in flags:
            return "SYN+ACK" if kind == "SYN" and "." in flags else kind
    return "ACK"

LADDER_SEGMENT = re.compile(r"(SYN\+ACK|SYN|ACK|FIN)((?: seq=\d+)?)((?: ack=\d+)?)")


def captured(text):
    """[(kind, seq, ack)] of every segment tcpdump -S -x printed, seq and ack read from the
    TCP header's bytes (tcpdump prints no seq for a pure ACK)."""
    found = []
    for block in re.split(r"\n(?=\d\d:\d\d:\d\d)", text.strip()):
        head, *hexlines = block.splitlines()
        flags = re.search(r"Flags \[([^\]]+)\]", head)
        if not flags or not hexlines:
            continue
        raw = bytes.fromhex("".join("".join(line.split(":", 1)[1].split()) for line in hexlines))
        tcp = raw[(raw[0] & 15) * 4:] if raw[0] >> 4 == 4 else raw[40:]
        seq, ack = int.from_bytes(tcp[4:8], "big"), int.from_bytes(tcp[8:12], "big")
        kind = kind_of(flags.group(1))
        found.append((kind, seq, ack if "." in flags.group(1) else None))
    return found


def ladder_segments(out, port):
    blocks = [b for b in out.split("\n\n") if b.startswith("==") and f":{port}" in b.splitlines()[0]]
    assert len(blocks) == 1, out
    found = []
    for line in blocks[0].splitlines()[2:]:
        if not line.startswith(" "):
            continue
        match = LADDER_SEGMENT.search(line)
        if match:
            seq = int(match.group(2).split("=")[1]) if match.group(2) else None
            ack = int(match.group(3).split("=")[1]) if match.group(3) else None
            found.append((match.group(1), seq, ack))
    return blocks[0], found


def run_traced(netns, attach, traced, scenario, *trace_flags, **options):
    """tcpdump and trace --ladder around one workload in ``netns``: (ladder text, segments)."""
    dump = subprocess.Popen(in_netns(netns, ["tcpdump", "-i", "lo", "-S", "-n", "-l", "-x", "-U",
                                             f"tcp port {traced}"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trace = subprocess.Popen([PYTHON, "-m", "tcpwatch", "trace", "--ladder", "--attach", attach, "--port", str(traced),
                              "--duration", "30", *trace_flags], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert trace.stdout.readline().startswith("tracing:"), trace.stderr.read()
        wait_for(lambda: "listening on" in dump.stderr.readline(), what="tcpdump to listen")
        Workload(scenario, netns=netns, **options).stop()
        time.sleep(0.3)
    finally:
        trace.send_signal(signal.SIGINT)
        out, err = trace.communicate(timeout=30)
        dump.send_signal(signal.SIGINT)
        packets, _ = dump.communicate(timeout=10)
    return out, err, captured(packets)


def assert_every_number_was_on_the_wire(ladder_found, wire):
    for kind, seq, ack in ladder_found:
        assert any(k == kind and (seq is None or s == seq) and (ack is None or a == ack) for k, s, a in wire), (
            (kind, seq, ack), wire)


@pytest.mark.root
@needs_tools
@pytest.mark.parametrize("attach,family,close", [("tp_btf", 4, 0), ("tp_btf", 4, 1), ("tracepoint", 4, 0),
                                                  ("tracepoint", 4, 1), ("tp_btf", 6, 0), ("tp_btf", 4, 2)])
def test_every_number_of_the_ladder_is_the_segments_on_the_wire(netns, attach, family, close):
    port = 22100 + close + 10 * family
    out, err, wire = run_traced(netns, attach, port, "handshake_close", family=family, close=close,
                                **{"listen-port": port})
    text, found = ladder_segments(out, port)
    kinds = [kind for kind, _seq, _ack in found]
    assert kinds.count("SYN") == 1 and kinds.count("SYN+ACK") == 1 and kinds.count("FIN") == 2, text
    if close != 2:
        assert kinds == ["SYN", "SYN+ACK", "ACK", "FIN", "ACK", "FIN", "ACK"], text
    assert all(seq is not None for kind, seq, _ack in found if kind != "ACK"), text
    assert_every_number_was_on_the_wire(found, wire)
    if close == 2:   # both FINs, then both ACKs
        assert text.count("FIN_WAIT1 -> CLOSING") == 2 and kinds[3:] == ["FIN", "FIN", "ACK", "ACK"], text


@pytest.mark.root
@needs_tools
@pytest.mark.parametrize("attach", ["tp_btf", "tracepoint"])
def test_a_refused_connect_shows_its_syn_and_no_invented_number(netns, attach):
    port = 22190
    out, err, wire = run_traced(netns, attach, port, "refused", port=port)
    text, found = ladder_segments(out, port)
    assert "no handshake: refused by a reset" in text, text
    assert found == [("SYN", wire[0][1], None)] and wire[0][0] == "SYN", (text, wire)
    assert wire[1][0] == "RST"


@pytest.mark.root
@needs_tools
def test_relative_numbers_read_as_tcpdumps(netns):
    port = 22195
    out, err, wire = run_traced(netns, "tp_btf", port, "handshake_close", "--relative", close=0,
                                **{"listen-port": port})
    text, found = ladder_segments(out, port)
    assert found[:3] == [("SYN", 0, None), ("SYN+ACK", 0, 1), ("ACK", 1, 1)], text
    assert ("FIN", 1, 1) in found and ("ACK", 2, 2) in found, text


@pytest.mark.root
@needs_tools
def test_json_carries_the_numbers_where_they_mean_something(netns):
    import json

    from peers import our_programs

    port = 22196
    before = our_programs()
    dump = subprocess.Popen(in_netns(netns, ["tcpdump", "-i", "lo", "-S", "-n", "-l", "-x", "-U", f"tcp port {port}"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trace = subprocess.Popen([PYTHON, "-m", "tcpwatch", "trace", "--json", "--port", str(port), "--duration", "30"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "listening on" in dump.stderr.readline(), what="tcpdump to listen")
        wait_for(lambda: our_programs() > before, timeout=60, what="the trace's program to attach")
        time.sleep(0.5)   # and its perf buffer to open
        Workload("handshake_close", netns=netns, close=0, **{"listen-port": port}).stop()
        time.sleep(0.3)
    finally:
        trace.send_signal(signal.SIGINT)
        out, err = trace.communicate(timeout=30)
        dump.send_signal(signal.SIGINT)
        wire = captured(dump.communicate(timeout=10)[0])
    records = {(r["from"], r["to"], r["local"].rsplit(":", 1)[1] == str(port)): r
               for r in map(json.loads, out.splitlines())}
    syn = next(seq for kind, seq, _ack in wire if kind == "SYN")
    established = records[("syn_sent", "established", False)]["tcp"]
    assert set(established) == {"snd_una", "snd_nxt", "write_seq", "rcv_nxt"} and established["snd_una"] == syn + 1
    fin = next((seq, ack) for kind, seq, ack in wire if kind == "FIN")
    closing = records[("established", "fin_wait1", False)]["tcp"]
    assert (closing["write_seq"], closing["rcv_nxt"]) == fin
    assert records[("close", "syn_sent", False)]["tcp"] is None
