import itertools
import os
import shutil
import subprocess

import pytest

from helpers import is_root

_names = itertools.count()


def pytest_collection_modifyitems(config, items):
    if is_root():
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, /proc/*/fd of other processes)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


_leftovers_at_start = {}


def pytest_sessionstart(session):
    """What ran before the suite is not the suite's to clean up."""
    from peers import our_programs, tcpwatch_daemons

    _leftovers_at_start["daemons"] = set(tcpwatch_daemons())
    _leftovers_at_start["programs"] = our_programs() if is_root() and shutil.which("bpftool") else 0


def pytest_sessionfinish(session, exitstatus):
    """The suite leaves nothing running: a tcpwatch daemon or one of tcpwatch's eBPF programs
    left by a test fails the run (and is stopped)."""
    import signal
    import time

    from peers import our_programs, tcpwatch_daemons

    left = {pid: cmd for pid, cmd in tcpwatch_daemons().items() if pid not in _leftovers_at_start["daemons"]}
    for pid in left:
        os.kill(pid, signal.SIGTERM)
    programs = 0
    if is_root() and shutil.which("bpftool"):
        deadline = time.monotonic() + 10   # a daemon just stopped detaches within moments
        while (programs := our_programs() - _leftovers_at_start["programs"]) > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
    if left or programs > 0:
        print(f"\nleft running by the suite: {len(left)} tcpwatch daemon(s) {sorted(left.values())}, "
              f"{max(programs, 0)} eBPF program(s) of tcpwatch's")
        session.exitstatus = 1


@pytest.fixture
def netns():
    """A fresh network namespace with loopback up, removed afterwards."""
    name = f"tcpw-test-{os.getpid()}-{next(_names)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def workloads():
    """Start workloads with ``workloads(scenario, ...)``; all are stopped at teardown."""
    from helpers import Workload

    started = []

    def start(scenario, **kw):
        w = Workload(scenario, **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture
def daemons():
    from helpers import Daemon

    started = []

    def start(*flags, **kw):
        d = Daemon(*flags, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=tcpwatch test CA", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)
    return d
