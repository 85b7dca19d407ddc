"""Hostile and careless HTTP clients against one address, for tests/test_hostile.py. Run it in
the daemon's network namespace: python attacker.py ATTACK HOST PORT [--count N] [--seconds S]

Every attack is bounded by --count connections and --seconds; it prints one JSON line.
"""

import argparse
import json
import re
import socket
import struct
import threading
import time
import urllib.request


def connect(host, port):
    return socket.create_connection((host, port), timeout=10)


def concurrent(args):
    """--count scrapes at once; their status codes and the slowest time."""
    results, lock = [], threading.Lock()

    def scrape():
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://{args.host}:{args.port}/metrics", timeout=30) as reply:
                reply.read()
                code = reply.status
        except Exception as exc:   # noqa: BLE001 - reported, not raised
            code = repr(exc)
        with lock:
            results.append((code, time.monotonic() - started))

    threads = [threading.Thread(target=scrape) for _ in range(args.count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return {"codes": sorted({str(c) for c, _ in results}), "ok": sum(c == 200 for c, _ in results),
            "slowest": max(s for _, s in results)}


def disconnect(args):
    """--count clients that ask for /metrics and reset the connection before reading."""
    for _ in range(args.count):
        sock = connect(args.host, args.port)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()                                # RST: the server's write fails
    return {"sent": args.count}


def slowloris(args):
    """--count connections that send a partial request and then one byte a second, for --seconds."""
    socks = []
    for _ in range(args.count):
        try:
            sock = connect(args.host, args.port)
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            socks.append(sock)
        except OSError:
            pass
    deadline = time.monotonic() + args.seconds
    closed_by_server = 0
    while time.monotonic() < deadline and socks:
        for sock in list(socks):
            try:
                sock.sendall(b"X")
            except OSError:
                socks.remove(sock)
                sock.close()
                closed_by_server += 1
        time.sleep(1.0)
    for sock in socks:
        sock.close()
    return {"opened": args.count, "closed_by_server": closed_by_server}


def silent(args):
    """--count connections that send nothing, held for --seconds."""
    socks = [connect(args.host, args.port) for _ in range(args.count)]
    time.sleep(args.seconds)
    for sock in socks:
        sock.close()
    return {"opened": len(socks)}


def malformed(args):
    """Oversized and malformed requests; the status line of each answer."""
    requests = {
        "long_request_line": b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
        "too_many_headers": b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n",
        "long_header": b"GET /metrics HTTP/1.1\r\nX-A: " + b"b" * 70000 + b"\r\n\r\n",
        "garbage": b"\x00\xff\x16\x03 nonsense\r\n\r\n",
        "bad_version": b"GET /metrics HTTP/9.9\r\n\r\n",
        "post": b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        "binary_path": b"GET /\xff\xfe HTTP/1.1\r\n\r\n",
    }
    answers = {}
    for name, payload in list(requests.items())[: args.count or None]:
        sock = connect(args.host, args.port)
        try:
            sock.sendall(payload)
            reply = b""
            while len(reply) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
            text = reply.decode("latin-1")
            # http.server answers a request it cannot even version as HTTP/0.9: no status line.
            code = re.search(r"^HTTP/1\.[01] (\d{3})", text) or re.search(r"Error code: (\d{3})", text)
            answers[name] = code.group(1) if code else text[:80]
        except OSError as exc:
            answers[name] = repr(exc)
        finally:
            sock.close()
    return answers


def scrape(args):
    """--count plain scrapes one after another; the slowest time and the status codes."""
    codes, slowest = [], 0.0
    for _ in range(args.count):
        started = time.monotonic()
        with urllib.request.urlopen(f"http://{args.host}:{args.port}/metrics", timeout=30) as reply:
            reply.read()
            codes.append(reply.status)
        slowest = max(slowest, time.monotonic() - started)
    return {"codes": codes, "slowest": slowest}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("attack", choices=["concurrent", "disconnect", "slowloris", "silent", "malformed", "scrape"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    print(json.dumps(globals()[args.attack](args)), flush=True)


if __name__ == "__main__":
    main()
