"""A short-lived network namespace's work, run as `unshare --net python short_netns.py ...`:
loopback up, COUNT connections on PORT (the client closes first, then the server: 10 state
changes each), one JSON line with the namespace's inode, then LIFETIME seconds of life.
Bounded: COUNT connections, then exit (the namespace ends with the process)."""

import argparse
import json
import os
import socket
import subprocess
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lifetime", type=float, required=True)
    args = parser.parse_args()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    server = socket.socket()
    server.bind(("127.0.0.1", args.port))
    server.listen(args.count)
    for _ in range(args.count):
        client = socket.create_connection(("127.0.0.1", args.port), timeout=5)
        peer, _ = server.accept()
        client.close()                   # FIN_WAIT1 -> FIN_WAIT2 -> TIME_WAIT
        peer.settimeout(5)
        assert peer.recv(1) == b""       # the FIN is here: CLOSE_WAIT
        peer.close()                     # LAST_ACK -> CLOSE
    server.close()
    print(json.dumps({"inode": os.stat("/proc/self/ns/net").st_ino}), flush=True)
    time.sleep(args.lifetime)


if __name__ == "__main__":
    main()
