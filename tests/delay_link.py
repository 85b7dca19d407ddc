"""A point-to-point link with a fixed one-way delay between two network namespaces.

    python delay_link.py NS_A NS_B DELAY_MS MAX_SECONDS

No netem qdisc on this kernel, so: one tun device in each namespace (198.18.0.1 in NS_A,
198.18.0.2 in NS_B, addresses of the benchmarking range that exist only there), and this
process copies every packet from one to the other after DELAY_MS. It prints "ready", then
forwards until stdin closes or MAX_SECONDS pass. Nothing leaves the two namespaces.
"""

import ctypes
import fcntl
import heapq
import os
import select
import struct
import subprocess
import sys
import time

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
libc = ctypes.CDLL(None, use_errno=True)


def tun_in(netns, name, local, peer):
    with open(f"/var/run/netns/{netns}") as ns:
        if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    subprocess.run(["ip", "-n", netns, "addr", "add", local, "peer", peer, "dev", name], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", name, "up"], check=True)
    return fd


def main():
    ns_a, ns_b, delay_ms, max_seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    a = tun_in(ns_a, "tcpwa", "198.18.0.1", "198.18.0.2")
    b = tun_in(ns_b, "tcpwb", "198.18.0.2", "198.18.0.1")
    peer = {a: b, b: a}
    delay = delay_ms / 1000.0
    pending = []          # (due, sequence, fd to write, packet)
    sequence = 0
    print("ready", flush=True)
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else 0.5
        readable, _, _ = select.select([a, b, sys.stdin], [], [], min(timeout, 0.5))
        if sys.stdin in readable and not sys.stdin.readline():
            break
        for fd in (a, b):
            if fd in readable:
                for _ in range(64):
                    try:
                        packet = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    sequence += 1
                    heapq.heappush(pending, (time.monotonic() + delay, sequence, peer[fd], packet))
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, _, fd, packet = heapq.heappop(pending)
            os.write(fd, packet)


if __name__ == "__main__":
    main()
