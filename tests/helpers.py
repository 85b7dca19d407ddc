"""Real-kernel test plumbing: network namespaces, workloads, the daemon, ss, scrapes.

Every wait polls with a deadline; every process started here is stopped at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
WORKLOAD = str(ROOT / "tests" / "workload.py")

SS_STATES = {
    "ESTAB": "established", "SYN-SENT": "syn_sent", "SYN-RECV": "syn_recv",
    "FIN-WAIT-1": "fin_wait1", "FIN-WAIT-2": "fin_wait2", "TIME-WAIT": "time_wait",
    "UNCONN": "close", "CLOSE-WAIT": "close_wait", "LAST-ACK": "last_ack",
    "LISTEN": "listen", "CLOSING": "closing",
}


def in_netns(netns, argv):
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def terminate(proc, timeout=10):
    """SIGTERM, then SIGKILL if ``proc`` has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(predicate, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Workload:
    """A tests/workload.py process holding sockets until stopped."""

    def __init__(self, scenario, netns=None, wrapper=(), python=PYTHON, path=WORKLOAD, env=None, **options):
        argv = [*wrapper, python, path, scenario]
        for key, value in options.items():
            argv += [f"--{key}", str(value)]
        self.proc = subprocess.Popen(in_netns(netns, argv), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError(f"workload {scenario} failed to start")
        self.info = json.loads(line)

    def next_info(self):
        """The next JSON line the workload prints (scenarios that report progress)."""
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("workload ended early")
        return json.loads(line)

    def wait(self, timeout=30):
        """Close stdin and wait for the exit code."""
        self.proc.stdin.close()
        return self.proc.wait(timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            if not self.proc.stdin.closed:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def ss_counts(netns, family, *filters):
    """Sockets per state as ``ss -tan`` sees them in ``netns``: the cross-check."""
    out = subprocess.run(in_netns(netns, ["ss", "-tanH", f"-{family}", *filters]), check=True,
                         capture_output=True, text=True).stdout
    counts = {name: 0 for name in SS_STATES.values()}
    for line in out.splitlines():
        counts[SS_STATES[line.split()[0]]] += 1
    return counts


def tcpwatch(netns, *args, check=True):
    return subprocess.run(in_netns(netns, [PYTHON, "-m", "tcpwatch", *args]), cwd=ROOT,
                          capture_output=True, text=True, check=check, timeout=60)


def parse_metrics(text):
    """{(name, frozenset(labels)): value} for every sample of an exposition."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    """The sample with exactly these labels; else the sum of those whose labels include
    them (e.g. over netns, container and pod); None if there is none."""
    exact = samples.get((name, frozenset(labels.items())))
    if exact is not None:
        return exact
    wanted = set(labels.items())
    found = [v for (n, have), v in samples.items() if n == name and wanted <= have]
    return sum(found) if found else None


def series(samples, name):
    return {labels: v for (n, labels), v in samples.items() if n == name}


class Daemon:
    """``tcpwatch run`` on 127.0.0.1 with a free port chosen by the kernel."""

    cwd = ROOT

    @staticmethod
    def command(*flags):
        return [PYTHON, "-m", "tcpwatch", "run", "--web.listen-address", "127.0.0.1:0", *flags]

    def __init__(self, *flags, netns=None, wrapper=()):
        self.netns = netns
        if netns and not any(f.startswith(("--collector.netns", "--no-collector.netns")) for f in flags):
            # A daemon in a test's namespace reads that namespace only, unless the test says
            # otherwise: its counts are then exact whatever else runs on the host.
            flags = (*flags, "--no-collector.netns")
        argv = [*wrapper, *self.command(*flags)]
        if netns:
            # `ip netns exec` mounts a fresh /sys, without tracefs: mount it there for bcc.
            argv = ["sh", "-c", 'mountpoint -q /sys/kernel/tracing || '
                    'mount -t tracefs tracefs /sys/kernel/tracing; exec "$@"', "sh", *argv]
        self.proc = subprocess.Popen(in_netns(netns, argv), cwd=ROOT, stderr=subprocess.PIPE,
                                     text=True)
        self.log = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            match = re.search(r"msg=listening address=(\S+)", line)
            if match:
                self.address = match.group(1)
                return
        self.proc.kill()
        raise RuntimeError("daemon did not start: " + "".join(self.log))

    def url(self, path="/metrics"):
        return f"http://{self.address}{path}"

    def get(self, path="/metrics"):
        """(status, body) of an HTTP GET, made from inside the daemon's netns."""
        code = ("import sys,urllib.request,urllib.error\n"
                "try:\n r=urllib.request.urlopen(sys.argv[1],timeout=20); print(r.status); "
                "sys.stdout.write(r.read().decode())\n"
                "except urllib.error.HTTPError as e:\n print(e.code)")
        out = subprocess.run(in_netns(self.netns, [PYTHON, "-c", code, self.url(path)]),
                             capture_output=True, text=True, check=True, timeout=30).stdout
        status, _, body = out.partition("\n")
        return int(status), body

    def scrape(self):
        status, body = self.get()
        assert status == 200, status
        return parse_metrics(body)

    def stop(self, sig=signal.SIGTERM, timeout=5):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


def is_root():
    return os.geteuid() == 0


@contextlib.contextmanager
def delayed_pair(prefix, one_way_ms, max_seconds=120):
    """Two fresh namespaces (yielded as names) joined by ``delay_link.py``: 198.18.0.1 in
    the first, 198.18.0.2 in the second, every packet ``one_way_ms`` late. Removed after."""
    a, b = f"{prefix}-a-{os.getpid()}", f"{prefix}-b-{os.getpid()}"
    link = None
    try:
        for name in (a, b):
            subprocess.run(["ip", "netns", "add", name], check=True)
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        link = subprocess.Popen([PYTHON, str(ROOT / "tests" / "delay_link.py"), a, b, str(one_way_ms),
                                 str(max_seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert link.stdout.readline().strip() == "ready"
        yield a, b
    finally:
        if link:
            link.stdin.close()
            link.wait(10)
        for name in (a, b):
            subprocess.run(["ip", "netns", "del", name], check=False)


def hashed(password):
    """A bcrypt hash for a web config's basic_auth_users (cheap rounds: tests only)."""
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def write_config(pki, body):
    path = pki / "web.yml"
    path.write_text(body)
    return path


def tls_and_auth_config(pki, user, password):
    """A web config serving TLS with the test CA's server certificate, and one user."""
    return write_config(pki, f"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                             f"basic_auth_users:\n  {user}: {hashed(password)}\n")
