"""Socket workloads for the tests, run as their own process (often inside a test netns).

    python workload.py SCENARIO [options]

Each scenario sets its process name (comm) if asked, builds its sockets on loopback, prints
one JSON line describing them, then holds everything until stdin closes. Every loop here is
bounded by a count given on the command line.
"""

import argparse
import ctypes
import json
import socket
import subprocess
import sys
import time

PR_SET_NAME = 15


def set_comm(name):
    """``name`` as text, or raw bytes given as ``hex:...`` (for names that are not UTF-8)."""
    if name:
        raw = bytes.fromhex(name[4:]) if name.startswith("hex:") else name.encode()
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, raw[:15], 0, 0, 0)


HOST = None


def host(family):
    if HOST:
        return HOST
    return "::1" if family == 6 else "127.0.0.1"


LISTEN_PORT = 0


def listener(family, backlog=128, port=None):
    sock = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host(family), LISTEN_PORT if port is None else port))
    sock.listen(backlog)
    return sock


CLIENT_PORTS = None   # an iterator of local ports for the leak scenario's clients (--client-port)


def connect(family, port, blocking=True):
    sock = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM)
    if CLIENT_PORTS is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host(family), next(CLIENT_PORTS)))
    if blocking:
        sock.settimeout(5)
        sock.connect((host(family), port))
    else:
        sock.setblocking(False)
        sock.connect_ex((host(family), port))
    return sock


def pairs(lst, family, count):
    """``count`` connected (client, accepted server) pairs on listener ``lst``."""
    port = lst.getsockname()[1]
    out = []
    for _ in range(count):
        client = connect(family, port)
        server, _ = lst.accept()
        out.append((client, server))
    return out


def scenario_states(args, held):
    """LISTEN, ESTABLISHED, CLOSE_WAIT, FIN_WAIT2, TIME_WAIT and SYN_SENT, ``k`` of each."""
    k, fam = args.count, args.family
    main = listener(fam)
    held.append(main)
    held.extend(pairs(main, fam, k))                       # 2k ESTABLISHED
    for client, server in pairs(main, fam, k):              # k CLOSE_WAIT + k FIN_WAIT2
        client.shutdown(socket.SHUT_WR)
        held += [client, server]
    for client, server in pairs(main, fam, k):              # k TIME_WAIT (client closes first)
        client.close()
        server.recv(1)                                       # the FIN arrived
        server.close()
    full = listener(fam, backlog=0)                          # accept queue of one slot
    held.append(full)
    held.append(connect(fam, full.getsockname()[1]))         # fills it: 2 more ESTABLISHED
    for _ in range(k):                                       # k SYN_SENT: their SYNs are dropped
        held.append(connect(fam, full.getsockname()[1], blocking=False))
    return {"expected": {"listen": 2, "established": 2 * k + 2, "close_wait": k,
                         "fin_wait2": k, "time_wait": k, "syn_sent": k}}


def scenario_leak(args, held):
    """``count`` CLOSE_WAIT sockets held by this process: the peers closed, we never do.
    With --client-port, the clients use that port and the next ones (a known 4-tuple)."""
    global CLIENT_PORTS
    if args.client_port:
        CLIENT_PORTS = iter(range(args.client_port, args.client_port + args.count))
    lst = listener(args.family)
    held.append(lst)
    for client, server in pairs(lst, args.family, args.count):
        client.close()
        held.append(server)
    return {"port": lst.getsockname()[1]}


def scenario_listen(args, held):
    """A listener that never accepts: connections wait in its queue with no fd (inode 0)."""
    lst = listener(args.family, backlog=max(args.count, 1))
    held.append(lst)
    return {"port": lst.getsockname()[1]}


def scenario_connect(args, held):
    """``count`` connections to ``--port``; the last ``--close`` of them closed by us."""
    socks = [connect(args.family, args.port) for _ in range(args.count)]
    for sock in socks[len(socks) - args.close:] if args.close else []:
        sock.close()
    held.extend(socks[:len(socks) - args.close])
    return {}


def scenario_pairs(args, held):
    """``count`` established pairs, both ends held by this process."""
    lst = listener(args.family)
    held.append(lst)
    held.extend(pairs(lst, args.family, args.count))
    return {}


def say(info):
    print(json.dumps(info), flush=True)


def scenario_churn(args, held):
    """``count`` connections opened and closed, the client closing first; then the listener."""
    lst = listener(args.family)
    for client, server in pairs(lst, args.family, args.count):
        client.close()
        server.settimeout(5)
        assert server.recv(1) == b""
        server.close()
    lst.close()
    return {}


def scenario_close_wait_for(args, held):
    """``count`` CLOSE_WAIT sockets held for ``--seconds``, then closed."""
    lst = listener(args.family)
    servers = []
    for client, server in pairs(lst, args.family, args.count):
        client.close()
        server.settimeout(5)
        assert server.recv(1) == b""   # the FIN has arrived: CLOSE_WAIT
        servers.append(server)
    started = time.monotonic()
    say({"state": "close_wait"})
    time.sleep(max(0.0, args.seconds - (time.monotonic() - started)))
    for server in servers:
        server.close()
    held.append(lst)
    return {"state": "released", "held_seconds": time.monotonic() - started}


def scenario_fin_wait1_self(args, held):
    """shutdown(SHUT_WR) then close() while our FIN is still unacknowledged behind unread
    data: the kernel reports FIN_WAIT1 -> FIN_WAIT1."""
    lst = listener(args.family)
    server_side = None
    client = socket.socket(socket.AF_INET6 if args.family == 6 else socket.AF_INET)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    client.connect((host(args.family), lst.getsockname()[1]))
    server_side, _ = lst.accept()
    client.setblocking(False)
    sent = 0
    for _ in range(4096):                 # fill the peer's window and our send buffer
        try:
            sent += client.send(b"x" * 65536)
        except BlockingIOError:
            break
    client.shutdown(socket.SHUT_WR)       # FIN queued behind unsent data: FIN_WAIT1
    client.close()                        # FIN_WAIT1 -> FIN_WAIT1
    server_side.settimeout(10)
    received = 0
    while True:                           # drain, so the orphan can finish its close
        chunk = server_side.recv(1 << 20)
        if not chunk:
            break
        received += len(chunk)
    server_side.close()
    lst.close()
    return {"sent": sent, "received": received}


def scenario_time_wait(args, held):
    """Two TIME_WAIT sockets on fixed client ports: the first left to expire, the second
    reused after ``--seconds`` by a new connection on the same 4-tuple."""
    lst = listener(args.family)
    held.append(lst)
    port = lst.getsockname()[1]

    def connect_from(client_port):
        client = socket.socket(socket.AF_INET6 if args.family == 6 else socket.AF_INET)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        client.bind((host(args.family), client_port))
        client.connect((host(args.family), port))
        server, _ = lst.accept()
        return client, server

    for client_port in (args.client_port, args.client_port + 1):
        client, server = connect_from(client_port)
        client.close()                    # active closer: TIME_WAIT
        server.settimeout(5)
        assert server.recv(1) == b""
        server.close()
    say({"state": "time_wait"})
    time.sleep(args.seconds)
    client, server = connect_from(args.client_port + 1)   # reuses the second TIME_WAIT
    held += [client, server]
    return {"state": "reused"}


def scenario_time_wait_restart(args, held):
    """A TIME_WAIT socket whose 2MSL timer restarts: its ACK of the peer's FIN is dropped
    (iptables, in this process's namespace) for a second, so the peer sends its FIN again,
    each time restarting 2MSL; then, ``--seconds`` later, its 4-tuple is reused."""
    lst = listener(args.family)
    held.append(lst)

    def connect_from(client_port):
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        client.bind((host(args.family), client_port))
        client.connect((host(args.family), lst.getsockname()[1]))
        return client, lst.accept()[0]

    client, server = connect_from(args.client_port)
    rule = ["OUTPUT", "-p", "tcp", "--sport", str(args.client_port), "--tcp-flags", "ALL", "ACK", "-j", "DROP"]
    subprocess.run(["iptables", "-w", "-A", *rule], check=True)
    try:
        client.close()                    # active closer: FIN_WAIT1, FIN_WAIT2
        server.settimeout(5)
        assert server.recv(1) == b""
        server.close()                    # its FIN: the client enters TIME_WAIT, its ACK is lost
        time.sleep(1.0)                   # the FIN comes again (RTO 0.2 s, doubling)
    finally:
        subprocess.run(["iptables", "-w", "-D", *rule], check=True)
    say({"state": "restarted"})
    time.sleep(args.seconds)
    held.extend(connect_from(args.client_port))   # reuses the TIME_WAIT socket's 4-tuple
    return {"state": "reused"}


def scenario_handshake_close(args, held):
    """One connection on --listen-port, no data: closed first by the client (--close 0), the
    server (--close 1), or both at once (--close 2: their FINs are dropped by iptables for
    0.3 s, so that the retransmitted FINs cross: a simultaneous close). The passive closer
    waits 0.3 s before it closes, so that its delayed ACK of the FIN goes out alone first."""
    lst = listener(args.family)
    client = connect(args.family, lst.getsockname()[1])
    server, _ = lst.accept()
    lst.close()
    info = {"client_port": client.getsockname()[1], "server_port": server.getsockname()[1]}
    time.sleep(0.2)
    if args.close == 2:
        rule = ["OUTPUT", "-p", "tcp", "--tcp-flags", "FIN", "FIN", "-j", "DROP"]
        iptables = "ip6tables" if args.family == 6 else "iptables"
        subprocess.run([iptables, "-w", "-A", *rule], check=True)
        try:
            client.shutdown(socket.SHUT_WR)
            server.shutdown(socket.SHUT_WR)
            time.sleep(0.3)
        finally:
            subprocess.run([iptables, "-w", "-D", *rule], check=True)
        time.sleep(1.0)
        held += [client, server]
        return info
    first, second = (client, server) if args.close == 0 else (server, client)
    first.close()
    second.settimeout(5)
    assert second.recv(1) == b""
    time.sleep(0.3)
    second.close()
    time.sleep(0.3)
    return info


def scenario_refused(args, held):
    """A connect() to --port, where nothing listens: refused by a reset."""
    sock = socket.socket(socket.AF_INET6 if args.family == 6 else socket.AF_INET)
    assert sock.connect_ex((host(args.family), args.port)) != 0
    sock.close()
    return {}


def scenario_traffic(args, held):
    """``--rounds`` rounds, ``--seconds`` apart: ``count`` connections opened and closed (the
    client first, so TIME_WAIT) and ``--close`` connects refused by a port nobody listens on.
    With ``--aborts N``: N connections closed by the server with unread data (a reset: the
    kernel counts TCPAbortOnClose), and N SYNs to a full accept queue (ListenOverflows)."""
    lst = listener(args.family)
    held.append(lst)
    full = listener(args.family, backlog=0, port=0)
    held.append(full)
    if args.aborts:
        held.append(connect(args.family, full.getsockname()[1]))   # takes the one slot
    closed = socket.socket(socket.AF_INET6 if args.family == 6 else socket.AF_INET)
    closed.bind((host(args.family), 0))
    refused_port = closed.getsockname()[1]
    closed.close()
    say({"port": lst.getsockname()[1]})
    for _ in range(args.rounds):
        for client, server in pairs(lst, args.family, args.count):
            client.close()
            server.settimeout(5)
            assert server.recv(1) == b""
            server.close()
        for _ in range(args.close):
            try:
                connect(args.family, refused_port).close()
            except ConnectionRefusedError:
                pass
        for client, server in pairs(lst, args.family, args.aborts):
            client.sendall(b"unread")
            time.sleep(0.01)
            server.close()                     # unread data: RST, not FIN
            client.close()
        for _ in range(args.aborts):
            connect(args.family, full.getsockname()[1], blocking=False).close()   # SYN dropped
        time.sleep(args.seconds)
    return {"state": "done"}


def scenario_ports(args, held):
    """Service ports with known mixes, ``count`` scaling each: "web" 3k established pairs,
    "leaky" 2k pairs its clients closed (server side CLOSE_WAIT, client side FIN_WAIT2),
    "upstream" k pairs it closed itself (the clients' CLOSE_WAIT: a pooled-connection leak
    toward it), "small" one pair."""
    k, fam = args.count, args.family
    ports = {}
    for name, n, closer in (("web", 3 * k, None), ("leaky", 2 * k, "client"),
                            ("upstream", k, "server"), ("small", 1, None)):
        lst = listener(fam)
        held.append(lst)
        ports[name] = lst.getsockname()[1]
        for client, server in pairs(lst, fam, n):
            if closer == "client":
                client.shutdown(socket.SHUT_WR)
            elif closer == "server":
                server.shutdown(socket.SHUT_WR)
            held += [client, server]
    return {"ports": ports}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["states", "leak", "listen", "connect", "pairs", "churn",
                                             "close_wait_for", "fin_wait1_self", "time_wait", "traffic",
                                             "ports", "time_wait_restart", "handshake_close", "refused"])
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--host", help="address to listen on or connect to (default loopback)")
    parser.add_argument("--client-port", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--family", type=int, choices=[4, 6], default=4)
    parser.add_argument("--comm")
    parser.add_argument("--port", type=int)
    parser.add_argument("--close", type=int, default=0)
    parser.add_argument("--aborts", type=int, default=0)
    args = parser.parse_args()
    set_comm(args.comm)
    global LISTEN_PORT, HOST
    LISTEN_PORT = args.listen_port
    HOST = args.host
    held = []
    info = globals()[f"scenario_{args.scenario}"](args, held)
    say(info)
    sys.stdin.read()  # hold until the test closes our stdin


if __name__ == "__main__":
    main()
