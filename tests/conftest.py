import itertools
import os
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
