"""Real peers and probes shared by several tests: the CLI run as a user would, a Prometheus
server, bpftool's list of our programs, setpriv with the systemd unit's capabilities."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from helpers import PYTHON, ROOT, in_netns, terminate

UNIT = ROOT / "systemd" / "tcpwatch.service"
RULES = ROOT / "deploy" / "prometheus"


def run(*args, timeout=20):
    return subprocess.run([PYTHON, "-m", "tcpwatch", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def assert_rejected(result, *words):
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


PROM_PORT = 9090                   # free: the namespace is the test's own

# Reads queries (JSON list) on stdin, prints [[status, result], ...]: one process for them all.
QUERY_SCRIPT = """
import json, sys, urllib.parse, urllib.request
base = sys.argv[1]
out = []
for path, params in json.load(sys.stdin):
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        body = json.load(urllib.request.urlopen(url, timeout=10))
    except urllib.error.HTTPError as err:
        body = json.load(err)
    out.append(body)
json.dump(out, sys.stdout)
"""


class Prometheus:
    def __init__(self, netns, target, workdir, port=PROM_PORT):
        self.port = port
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES / "recording.yml"), str(RULES / "alerts.yml")],
            "scrape_configs": [{"job_name": "tcpwatch", "static_configs": [{"targets": [target]}]}],
        }
        path = Path(workdir) / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.netns = netns
        self.proc = subprocess.Popen(in_netns(netns, [
            "prometheus", f"--config.file={path}", f"--storage.tsdb.path={workdir}/data",
            f"--web.listen-address=127.0.0.1:{port}"]),
            stdout=subprocess.DEVNULL, stderr=open(Path(workdir) / "prometheus.log", "w"))
        self.log = Path(workdir) / "prometheus.log"

    def api(self, *requests):
        """[(path, params), ...] -> the decoded JSON answers, in order."""
        out = subprocess.run(in_netns(self.netns, [PYTHON, "-c", QUERY_SCRIPT, f"http://127.0.0.1:{self.port}"]),
                             input=json.dumps(requests), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def query(self, *exprs):
        return self.api(*[("/api/v1/query", {"query": e}) for e in exprs])

    def ready(self):
        try:
            return self.api(("/api/v1/status/buildinfo", None))[0]["status"] == "success"
        except (AssertionError, json.JSONDecodeError):
            return False

    def stop(self):
        terminate(self.proc)


def our_programs():
    """Programs loaded now whose names are ours: bcc names the classic ones after their
    tracepoint (tracepoint__sock__…), tp_btf ones are named tp_btf_… (cut to 15 characters),
    the iterators socket_owners and socket_diag."""
    out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return sum(1 for line in out.splitlines()
               if re.search(r" name (tracepoint__(sock|tcp|time)|tp_btf_|socket_owners|socket_diag)", line))


def tcpwatch_daemons():
    """{pid: command line} of every `tcpwatch run` process on the host."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if "run" in words and any(w == "tcpwatch" or w.endswith("/tcpwatch") for w in words):
            found[int(entry.name)] = " ".join(words)
    return found


def unit_setting(name):
    values = re.findall(rf"^{name}=(.*)$", UNIT.read_text(), re.M)
    assert len(values) == 1, name
    return values[0].split()


def setpriv_with_unit_capabilities(drop=None):
    """setpriv argv: nobody, no new privileges, and only the unit's capabilities (less ``drop``)."""
    caps = ",".join("+" + c.removeprefix("CAP_").lower() for c in unit_setting("CapabilityBoundingSet")
                    if c != drop)
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", f"--inh-caps=-all,{caps}",
            f"--ambient-caps=-all,{caps}", f"--bounding-set=-all,{caps}", "--no-new-privs"]
