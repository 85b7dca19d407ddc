"""Benchmark worker: hold a realistic mix of about N TCP sockets in this network namespace.

    mix_worker.py N [ADDR]

Shares (of N): ESTABLISHED 40%, CLOSE_WAIT 15%, FIN_WAIT2 15%, TIME_WAIT 20%, SYN_RECV 10%,
plus two listeners. ESTABLISHED is under half, as on a busy server; the rest are the states
that make inet_diag's reply chunks mix message lengths (timewait and request sockets carry
no attributes).

  ESTABLISHED  loopback pairs, both ends held here
  CLOSE_WAIT   the client closed, the server end is held (never closed)
  FIN_WAIT2    those closed clients: orphans, no fd (tcp_fin_timeout is raised by the caller)
  TIME_WAIT    pairs closed client first: no fd, 60 s each (refreshed on "tw" from stdin)
  SYN_RECV     SYNs from a raw socket, from addresses routed out through lo that are not
               ours: the SYN-ACKs are lost, so the request sockets wait (no fd)

Prints "ready" when the sockets exist, holds them; on a "tw" line it makes the TIME_WAIT
share again and prints "ready"; exits when stdin closes. Needs root (raw socket, routes).
Uses at most 0.55 N file descriptors.
"""

import random
import socket
import struct
import subprocess
import sys

SHARES = {"established": 0.40, "close_wait": 0.15, "time_wait": 0.20, "syn_recv": 0.10}
FAKE_SOURCE = "10.254.{}.{}"   # routed out through lo, not ours: SYN-ACKs to it are lost


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_packet(src: str, dst: str, sport: int, dport: int) -> bytes:
    seq = random.getrandbits(32)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 65535, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.getrandbits(16), 0, 64,
                     socket.IPPROTO_TCP, 0, socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + tcp


def pairs(listener, addr, n):
    port = listener.getsockname()[1]
    made = []
    for start in range(0, n, 256):
        clients = []
        for _ in range(min(256, n - start)):
            c = socket.socket()
            c.connect((addr, port))
            clients.append(c)
        for c in clients:
            made.append((c, listener.accept()[0]))
    return made


def time_waits(listener, addr, n):
    # All clients close first: accept() need not return the servers in connect() order, so a
    # server's FIN is awaited only after every client has sent its own.
    made = pairs(listener, addr, n)
    for client, _server in made:
        client.close()
    for _client, server in made:
        server.recv(1)
        server.close()


def main():
    total = int(sys.argv[1])
    addr = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    counts = {state: int(total * share) for state, share in SHARES.items()}
    held = []
    lst = socket.socket()
    lst.bind((addr, 0))
    lst.listen(4096)
    held.append(lst)
    for client, server in pairs(lst, addr, counts["established"] // 2):
        held += [client, server]
    for client, server in pairs(lst, addr, counts["close_wait"]):
        client.close()          # FIN_WAIT2 orphan
        held.append(server)     # CLOSE_WAIT, never closed
    # SYN_RECV: a second listener, SYNs from sources whose SYN-ACKs are lost.
    syn_target = socket.socket()
    syn_target.bind((addr, 0))
    syn_target.listen(65535)
    held.append(syn_target)
    # A route out through loopback: the SYN-ACKs leave, come back on lo for an address that
    # is not ours, and are dropped (no forwarding). A blackhole route would fail the
    # SYN-ACK's route lookup, and the kernel would drop the SYN instead.
    subprocess.run(["ip", "route", "add", "10.254.0.0/16", "dev", "lo"], capture_output=True)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    dport = syn_target.getsockname()[1]
    for i in range(counts["syn_recv"]):
        src = FAKE_SOURCE.format(i // 250, i % 250 + 1)
        raw.sendto(syn_packet(src, addr, 20000 + i % 40000, dport), (addr, 0))
    raw.close()
    time_waits(lst, addr, counts["time_wait"])
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "tw":
            time_waits(lst, addr, counts["time_wait"])
            print("ready", flush=True)


if __name__ == "__main__":
    main()
