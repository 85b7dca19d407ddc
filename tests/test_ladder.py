"""``tcpwatch trace --ladder``: the pure grouping on hand-made steps, and the real ladder of
a known connection in a test namespace, both ends, TIME_WAIT to its end."""

import subprocess
import time

import pytest

from helpers import PYTHON, ROOT, Workload, wait_for
from tcpwatch import ladder

CLIENT, SERVER = "10.0.0.1:40000", "10.0.0.2:80"
CLIENT_STEPS = [("close", "syn_sent"), ("syn_sent", "established"), ("established", "fin_wait1"),
                ("fin_wait1", "fin_wait2"), ("fin_wait2", "close"), ("time_wait", "close")]
SERVER_STEPS = [("listen", "syn_recv"), ("syn_recv", "established"), ("established", "close_wait"),
                ("close_wait", "last_ack"), ("last_ack", "close")]


def step(t, local, remote, old, new, cookie, comm="app"):
    return ladder.Step(time=t, netns=1, netns_name="host", local=local, remote=remote, old=old, new=new,
                       cookie=cookie, pid=7, comm=comm)


def client(t, i, cookie=11, local=CLIENT):
    old, new = CLIENT_STEPS[i]
    return step(t, "10.0.0.1:0" if i == 0 and local == CLIENT else local, SERVER, old, new, cookie, "curl")


def server(t, i, cookie=22):
    old, new = SERVER_STEPS[i]
    return step(t, SERVER, CLIENT, old, new, cookie, "nginx")


def test_both_ends_one_ladder_done_only_when_time_wait_ends():
    ladders = ladder.Ladders()
    feed = [client(0.0, 0), server(0.1, 0), server(0.2, 1), client(0.2, 1), client(1.0, 2), server(1.1, 2),
            server(1.2, 3), client(1.2, 3), client(1.3, 4), server(1.3, 4)]
    assert [c for s in feed for c in ladders.add(s)] == []          # still in TIME_WAIT
    (conn,) = ladders.add(client(61.3, 5))
    assert [e.local for e in conn.ends] == [CLIENT, SERVER]          # the connect()'s port 0 resolved
    columns = [[(s.old, s.new) for s, e in conn.rows if e is end] for end in conn.ends]
    assert columns == [CLIENT_STEPS, SERVER_STEPS]
    assert conn.ends[0].owner == "curl[7]" and conn.ends[1].owner == "nginx[7]"   # connect(), close()
    text = ladder.render(conn)
    assert "both ends on this host" in text and "TIME_WAIT ends" in text and "+60.000000" in text


def test_a_reused_time_wait_starts_the_next_connection_and_ends_the_first():
    ladders = ladder.Ladders()
    for i in range(5):
        ladders.add(client(i * 0.1, i, local=CLIENT))
    # the same 4-tuple connects again; the kernel then kills the TIME_WAIT it reuses
    assert ladders.add(step(2.0, CLIENT, SERVER, "close", "syn_sent", 33)) == []
    (first,) = ladders.add(client(2.01, 5, local=CLIENT))
    assert [(s.old, s.new) for s, _ in first.rows] == CLIENT_STEPS
    (second,) = ladders.drain()
    assert [(s.old, s.new, s.cookie) for s, _ in second.rows] == [("close", "syn_sent", 33)]
    assert "still SYN_SENT: trace stopped" in ladder.render(second, stopped=True)


def test_tracepoint_mode_joins_time_wait_ends_by_address_to_the_right_incarnation():
    """No cookies on full sockets; the timewait death carries one nobody has seen."""
    ladders = ladder.Ladders()
    for i in range(5):
        ladders.add(client(i * 0.1, i, cookie=0, local=CLIENT))
    ladders.add(step(2.0, CLIENT, SERVER, "close", "syn_sent", 0))          # the 4-tuple again
    (first,) = ladders.add(client(2.01, 5, cookie=99, local=CLIENT))      # ends the first's TIME_WAIT
    assert [(s.old, s.new) for s, _ in first.rows] == CLIENT_STEPS and len(first.ends) == 1
    (second,) = ladders.drain()
    assert [(s.old, s.new) for s, _ in second.rows] == [("close", "syn_sent")]


def test_quiet_connections_expire_and_listeners_are_not_connections():
    ladders = ladder.Ladders(timeout=30)
    assert ladders.add(step(0.0, "0.0.0.0:80", "0.0.0.0:0", "close", "listen", 5)) == []
    for i in range(3):
        ladders.add(server(float(i), i))                            # a CLOSE_WAIT that stays
    assert ladders.expire(20.0) == []
    (leak,) = ladders.expire(40.0)
    assert "still CLOSE_WAIT: quiet too long" in ladder.render(leak)


@pytest.mark.root
@pytest.mark.parametrize("attach", ["tp_btf", "tracepoint"])
def test_real_ladder_matches_the_kernels_sequence_for_both_ends(netns, attach):
    """tp_btf joins the TIME_WAIT's end by cookie, the classic tracepoints by address."""
    port, client_port = 21901, 46101
    trace = subprocess.Popen([PYTHON, "-m", "tcpwatch", "trace", "--ladder", "--attach", attach,
                              "--port", str(port), "--duration", "40"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    load = None
    try:
        assert trace.stdout.readline().startswith("tracing:"), trace.stderr.read()
        # Two connections closed by the client; the second's 4-tuple is used again after 1 s,
        # which ends its TIME_WAIT early, so its ladder is complete within the test.
        load = Workload("time_wait", netns=netns, seconds=1, **{"listen-port": port, "client-port": client_port})
        wait_for(lambda: load.info.get("state") == "time_wait", what="two connections closed")
        assert load.next_info()["state"] == "reused"
        time.sleep(1)
    finally:
        trace.terminate()
        out, err = trace.communicate(timeout=30)
        if load:
            load.stop()
    ladders = [block for block in out.split("\n\n") if block.startswith("==")]
    reused = f"127.0.0.1:{client_port + 1}"
    done = [b for b in ladders if reused in b.splitlines()[0] and "TIME_WAIT ends" in b]
    assert len(done) == 1, out + err
    lines = done[0].splitlines()
    assert f"netns {netns}" in lines[0] and "both ends on this host" in lines[0]
    assert lines[1].split()[2] == reused and lines[1].split()[4] == f"127.0.0.1:{port}"
    columns = {0: [], 1: []}
    start = lines[1].index(reused)
    for line in lines[2:]:
        if line.startswith(" "):
            continue
        at = len(line) - len(line[start:].lstrip())
        change = line[at:].replace(" (TIME_WAIT)", "")
        columns[(at - start) // ladder.COLUMN].append(change)
    assert columns[0] == ["CLOSE -> SYN_SENT", "SYN_SENT -> ESTABLISHED", "ESTABLISHED -> FIN_WAIT1",
                          "FIN_WAIT1 -> FIN_WAIT2", "FIN_WAIT2 -> CLOSE", "TIME_WAIT ends"], done[0]
    assert columns[1] == ["LISTEN -> SYN_RECV", "SYN_RECV -> ESTABLISHED", "ESTABLISHED -> CLOSE_WAIT",
                          "CLOSE_WAIT -> LAST_ACK", "LAST_ACK -> CLOSE"], done[0]
    # The next connection on that 4-tuple is still open when the trace stops: drawn as far as it got.
    assert any(reused in b.splitlines()[0] and "still ESTABLISHED: trace stopped" in b for b in ladders), out
