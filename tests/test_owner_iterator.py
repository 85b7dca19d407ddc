"""The socket-owner iterator (eBPF iter/task_file) against the /proc walk it replaces: the
same owners and pids for real processes (a listener shared across fork goes to the lowest
pid, threads count once), and the daemon falls back to the walk where pids would differ."""

import re
import subprocess
from pathlib import Path

import pytest

from helpers import PYTHON, ROOT, Workload, terminate, wait_for
from tcpwatch.sources import bpf, processes

pytestmark = pytest.mark.root

FORKER = """
import ctypes, os, socket, sys, threading, time
ctypes.CDLL(None).prctl(15, b"iterparent", 0, 0, 0)
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen()
extra = [socket.socket() for _ in range(int(sys.argv[1]))]
child = os.fork()
if child == 0:
    ctypes.CDLL(None).prctl(15, b"iterchild", 0, 0, 0)
    own = [socket.socket() for _ in range(5)]
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()   # a thread: listed once
    print(os.getpid(), flush=True)
    time.sleep(60)
    os._exit(0)
print(os.getpid(), flush=True)
sys.stdin.read()
os.kill(child, 9)
"""


@pytest.fixture(scope="module")
def program():
    loaded = bpf.BpfProgram(max_sockets=1024, track_time_wait=False, owner_iterator=True)
    try:
        yield loaded
    finally:
        loaded.close()


def test_iterator_owners_equal_the_proc_walk(program):
    assert program.has_owner_iterator
    proc = subprocess.Popen([PYTHON, "-c", FORKER, "300"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    load = Workload("leak", count=20, comm="iterleak")
    try:
        parent, child = sorted(int(proc.stdout.readline()) for _ in range(2))
        by_iterator = program.socket_owners(None)
        by_walk = processes.walk_owners(None)
        assert by_iterator.owners == by_walk.owners
        assert by_iterator.pids == by_walk.pids
        mine = {inode for inode, pid in by_iterator.pids.items() if pid in (parent, child)}
        assert sum(1 for i in mine if by_iterator.owners[i] == "iterparent") == 301   # listener + 300, shared: lowest pid
        assert sum(1 for i in mine if by_iterator.owners[i] == "iterchild") == 5      # its own only, thread once
        assert sum(1 for o in by_iterator.owners.values() if o == "iterleak") >= 21   # 20 CLOSE_WAIT + listener
        wanted = set(list(by_walk.owners)[:10])
        assert program.socket_owners(wanted).owners == {i: by_walk.owners[i] for i in wanted}
    finally:
        proc.stdin.close()
        proc.wait(10)
        load.stop()


def daemon_log_line(argv_prefix=()):
    """The daemon's 'listening' log line, started under ``argv_prefix``."""
    proc = subprocess.Popen([*argv_prefix, PYTHON, "-m", "tcpwatch", "run", "--web.listen-address", "127.0.0.1:0"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            line = proc.stderr.readline()
            if "msg=listening" in line or not line:
                return line
    finally:
        if argv_prefix:   # unshare ignores SIGTERM; killed, it passes --kill-child's SIGTERM on
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            proc.kill()
            proc.wait(10)
            wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), timeout=15,
                     what="the daemon in the pid namespace to exit")
        else:
            terminate(proc)
    return ""


def test_daemon_uses_the_iterator_and_falls_back_in_a_pid_namespace():
    assert re.search(r"owners=ebpf_iterator", daemon_log_line())
    # In a pid namespace of its own the iterator's pids would not be /proc's: the walk is used.
    assert re.search(r"owners=proc", daemon_log_line(("unshare", "--pid", "--fork", "--kill-child=SIGTERM", "--mount-proc")))
