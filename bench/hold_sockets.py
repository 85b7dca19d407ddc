"""Benchmark worker: hold PAIRS established loopback connections (2*PAIRS sockets) on ADDR.

Both ends stay in this process, so it holds 2*PAIRS fds: keep PAIRS under 9,500 (the
open-file limit here is 20,000). Prints "ready" and holds until stdin closes.
"""

import socket
import sys


def main():
    pairs, addr = int(sys.argv[1]), sys.argv[2]
    lst = socket.socket()
    lst.bind((addr, 0))
    lst.listen(4096)
    port = lst.getsockname()[1]
    held = [lst]
    batch = 512
    made = 0
    while made < pairs:
        n = min(batch, pairs - made)
        clients = []
        for _ in range(n):
            c = socket.socket()
            c.connect((addr, port))
            clients.append(c)
        for _ in range(n):
            held.append(lst.accept()[0])
        held += clients
        made += n
    print("ready", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
