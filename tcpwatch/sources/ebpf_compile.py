"""The eBPF program compiled in a short-lived child, so that the daemon never maps LLVM.

bcc's LLVM and clang take about 100 MB once loaded, for a compile of under a second; a daemon
that compiled in its own process kept them for its whole life. So the daemon starts

    python -m tcpwatch.sources.ebpf_compile FD

with one end of a Unix socket pair (FD), sends it the Request and the Plan as JSON, and gets
back the attach choice, the log notes and every fd the program lives by, passed with
SCM_RIGHTS: its maps, the tp_btf links, the classic tracepoints' perf events and the owner
iterators' links. The child then ends with os._exit, so that bcc's exit handlers detach
nothing: the daemon's copies keep every program attached, and closing them (or the daemon's
end, SIGKILL included) detaches everything. A child that fails says why in one line; one
that hangs is killed after COMPILE_TIMEOUT seconds; either way nothing stays attached,
since nothing outlives the child but what it sent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys

from .ebpf_load import load_here
from .ebpf_plan import AttachChoice, AttachModeUnavailable, Attempt, BpfUnavailable, Plan, Request

COMPILE_TIMEOUT = 60.0     # seconds: a compile takes about one
MAX_MESSAGE = 1 << 20
MAX_FDS = 64


class ProgramFds:
    """The program as the daemon holds it: fds only, no bcc. ``close()`` detaches it."""

    bpf = None   # no bcc module in this process

    def __init__(self, attach: AttachChoice, maps: dict, links: list, iterators: dict, notes: list):
        self.attach = attach
        self._maps = maps            # name -> fd
        self.links = links           # tp_btf links and classic perf events: they hold the programs
        self.iterators = iterators   # iterator function -> link fd
        self.notes = notes

    def maps(self) -> dict:
        return dict(self._maps)

    def close(self) -> None:
        for fd in self.links + list(self.iterators.values()) + list(self._maps.values()):
            os.close(fd)
        self.links, self.iterators, self._maps = [], {}, {}


def request_to_json(request: Request) -> dict:
    return dataclasses.asdict(request)


def request_from_json(data: dict) -> Request:
    port_range = tuple(data["port_range"]) if data.get("port_range") else None
    return Request(**{**data, "port_range": port_range})


def plan_to_json(plan: Plan) -> dict:
    """The plan as the compile child gets it (ebpf_load.load_in_child)."""
    return dataclasses.asdict(plan)


def plan_from_json(data: dict) -> Plan:
    attempts = [Attempt(a["mode"], a["reason"], tuple(a["cflags"]), tuple(tuple(h) for h in a["hooks"]), a["detail"])
                for a in data["attempts"]]
    return Plan(**{**data, "attempts": attempts, "notes": [tuple(n) for n in data["notes"]]})


def load_in_child(request: Request, plan: Plan, timeout: float = COMPILE_TIMEOUT) -> ProgramFds:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours:
        try:
            child = subprocess.Popen([sys.executable, "-m", "tcpwatch.sources.ebpf_compile", str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            theirs.close()
        try:
            ours.sendall(json.dumps({"request": request_to_json(request), "plan": plan_to_json(plan)}).encode())
            ours.settimeout(timeout)
            message, fds, _flags, _address = socket.recv_fds(ours, MAX_MESSAGE, MAX_FDS)
        except socket.timeout:
            child.kill()   # what it attached goes with it: only what it sent outlives it
            raise BpfUnavailable(f"the eBPF compile did not finish within {timeout:g} s") from None
        except OSError as exc:
            raise BpfUnavailable(f"the eBPF compile failed: {exc}") from None
        finally:
            _reap(child)
    if not message:
        raise BpfUnavailable(f"the eBPF compile ended without an answer (exit code {child.returncode})")
    return _program_of(json.loads(message), fds)


def _reap(child) -> None:
    try:
        child.wait(5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _program_of(answer: dict, fds: list) -> ProgramFds:
    if not answer["ok"]:
        for fd in fds:
            os.close(fd)
        kind = AttachModeUnavailable if answer["kind"] == "attach_mode" else BpfUnavailable
        raise kind(answer["error"])
    where = answer["fds"]
    return ProgramFds(AttachChoice(*answer["attach"]), {name: fds[i] for name, i in where["maps"].items()},
                      [fds[i] for i in where["links"]], {name: fds[i] for name, i in where["iterators"].items()},
                      [tuple(note) for note in answer["notes"]])


def _answer(loaded) -> tuple:
    """(the JSON answer, the fds to send) of a loaded program."""
    fds = []

    def index(fd):
        fds.append(fd)
        return len(fds) - 1

    iterators = set(loaded.iterators.values())
    where = {"maps": {name: index(fd) for name, fd in loaded.maps().items()},
             "links": [index(fd) for fd in loaded.links + loaded.perf_fds if fd not in iterators],
             "iterators": {name: index(fd) for name, fd in loaded.iterators.items()}}
    return {"ok": True, "attach": [loaded.attach.mode, loaded.attach.reason, loaded.attach.detail],
            "notes": loaded.notes, "fds": where}, fds


def serve(sock) -> None:
    job = json.loads(sock.recv(MAX_MESSAGE))
    try:
        loaded = load_here(request_from_json(job["request"]), plan_from_json(job["plan"]))
    except BpfUnavailable as exc:
        kind = "attach_mode" if isinstance(exc, AttachModeUnavailable) else "unavailable"
        socket.send_fds(sock, [json.dumps({"ok": False, "kind": kind, "error": str(exc)}).encode()], [])
        return
    answer, fds = _answer(loaded)
    socket.send_fds(sock, [json.dumps(answer).encode()], fds)


def main(argv) -> None:
    sock = socket.socket(fileno=int(argv[1]))
    try:
        serve(sock)
    except Exception as exc:   # one line for the daemon's log, never a traceback
        try:
            socket.send_fds(sock, [json.dumps({"ok": False, "kind": "unavailable",
                                               "error": f"the eBPF compile failed: {exc}"}).encode()], [])
        except OSError:
            pass
    finally:
        os._exit(0)   # no atexit: bcc's would detach what the daemon now holds


if __name__ == "__main__":
    main(sys.argv)
