"""Real containers for the tests, offline: podman with runc, and containerd with its CRI plugin.

No registry is reachable, so images are made here: a root filesystem with nothing but mount
points and the /bin, /lib links into /usr, which every container bind-mounts read-only from
the host (Debian's own python3 then runs inside). The CRI pod's sandbox runs a static
``pause`` compiled here. Everything a test starts is stopped and removed, images and the
test containerd's state included.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from helpers import ROOT, terminate, wait_for

IMAGE = "localhost/tcpwatch-test:latest"
PAUSE_IMAGE = "localhost/tcpwatch-test-pause:1"
LABEL = "tcpwatch.test=1"
CONTAINER_PYTHON = "/usr/bin/python3"
CONTAINER_WORKLOAD = "/tests/workload.py"

PAUSE_C = r"""
#include <signal.h>
#include <unistd.h>
static void done(int sig) { (void)sig; _exit(0); }
int main(void) { signal(SIGTERM, done); signal(SIGINT, done); for (;;) pause(); }
"""

CONTAINERS_CONF = """
[containers]
default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]
netns = "none"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def _rootfs_tar(path: Path, extra: dict = None) -> Path:
    """A tar of an empty root: mount points, and bin/lib links into the /usr bind mount."""
    with tarfile.open(path, "w") as tar:
        for name in ("usr", "tmp", "etc", "proc", "dev", "sys", "tests", "run"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        for name in ("bin", "sbin", "lib", "lib64"):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, f"usr/{name}"
            tar.addfile(info)
        for name, source in (extra or {}).items():
            tar.add(source, arcname=name)
    return path


def _hard_nofile() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


class Podman:
    """podman run of the test image with runc, no network but the container's own loopback."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        conf = workdir / "containers.conf"
        conf.write_text(CONTAINERS_CONF.format(nofile=_hard_nofile()))
        self.env = dict(os.environ, CONTAINERS_CONF=str(conf))
        self.started = []
        self.podman("import", str(_rootfs_tar(workdir / "rootfs.tar")), IMAGE)

    def podman(self, *args, check=True, **kw):
        return subprocess.run(["podman", *args], env=self.env, check=check, capture_output=True,
                              text=True, timeout=120, **kw)

    def workload(self, name: str, scenario: str, network: str = None, **options):
        """tests/workload.py in a new container ``name``, holding its sockets until stopped.
        ``network="host"``: in the host's network namespace (--network host)."""
        from helpers import Workload

        self.started.append(name)
        wrapper = ["podman", "run", "-i", "--rm", "--name", name, "--label", LABEL,
                   *(["--network", network] if network else []),
                   "-v", "/usr:/usr:ro", "-v", f"{ROOT / 'tests'}:/tests:ro", IMAGE]
        return Workload(scenario, wrapper=wrapper, python=CONTAINER_PYTHON, path=CONTAINER_WORKLOAD,
                        env=self.env, **options)

    def pid(self, name: str) -> int:
        return int(self.podman("inspect", "--format", "{{.State.Pid}}", name).stdout)

    def gone(self, name: str) -> bool:
        return self.podman("container", "exists", name, check=False).returncode != 0

    def close(self):
        self.podman("rm", "-f", "-t", "0", "--filter", f"label={LABEL}", check=False)
        self.podman("rm", "-f", "-t", "0", *self.started, check=False)
        self.podman("rmi", "-f", IMAGE, check=False)


CNI_CONF = {
    "cniVersion": "0.4.0", "name": "tcpwatch-test",
    # A bridge with no gateway and no masquerade: pods reach each other, nothing else.
    "plugins": [{"type": "bridge", "bridge": "tcpwtest0", "isGateway": False, "ipMasq": False,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.249.0.0/24"}]]}}],
}

CONTAINERD_CONF = """
version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{state}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"""


class Containerd:
    """A containerd of the test's own (own root, state and socket), driven over CRI."""

    def __init__(self, workdir: Path, podman: Podman, state: Path = None):
        self.workdir = workdir
        self._own_state = state is None   # a state directory of its own is removed at the end
        self.state = state or Path(f"/run/tcpwatch-test-containerd-{os.getpid()}")
        self.socket = self.state / "containerd.sock"
        self.logs = workdir / "pod-logs"
        self.logs.mkdir()
        cni = workdir / "cni"
        cni.mkdir()
        (cni / "10-tcpwatch-test.conflist").write_text(json.dumps(CNI_CONF))
        conf = workdir / "containerd.toml"
        conf.write_text(CONTAINERD_CONF.format(root=workdir / "root", state=self.state, pause=PAUSE_IMAGE, cni=cni))
        self.proc = subprocess.Popen(["containerd", "--config", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(workdir / "containerd.log", "w"))
        wait_for(lambda: self.socket.exists(), timeout=20, what="containerd's socket")
        self.sandboxes = []
        self._import_images(podman)
        import grpc
        from cri_api.v1 import api_pb2, api_pb2_grpc

        self.pb = api_pb2
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        wait_for(self._answers, timeout=20, what="the CRI plugin")

    def _answers(self):
        try:
            return self.runtime.Version(self.pb.VersionRequest()).runtime_name == "containerd"
        except Exception:
            return False

    def _import_images(self, podman: Podman):
        pause = self.workdir / "pause"
        subprocess.run(["gcc", "-static", "-Os", "-o", str(pause), "-x", "c", "-"], input=PAUSE_C,
                       text=True, check=True)
        podman.podman("import", "--change", 'CMD=["/pause"]',
                      str(_rootfs_tar(self.workdir / "pause.tar", {"pause": pause})), PAUSE_IMAGE)
        for image in (PAUSE_IMAGE, IMAGE):
            self.import_image(podman, image)
        podman.podman("rmi", "-f", PAUSE_IMAGE, check=False)

    def import_image(self, podman: Podman, image: str) -> None:
        """Copy ``image`` from podman's store into this containerd's (k8s.io namespace)."""
        archive = self.workdir / "image.tar"
        podman.podman("save", "--format", "docker-archive", "-o", str(archive), image)
        subprocess.run(["ctr", "-a", str(self.socket), "-n", "k8s.io", "images", "import", str(archive)],
                       check=True, capture_output=True, timeout=300)
        archive.unlink()

    def pod(self, name: str, namespace: str):
        """A pod sandbox with its own network namespace; returns (sandbox id, config)."""
        pb = self.pb
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=f"uid-{name}", attempt=0),
            hostname=name, log_directory=str(self.logs))
        sandbox = self.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
        self.sandboxes.append(sandbox)
        return sandbox, config

    def container(self, pod, name: str, scenario: str, **options) -> dict:
        """tests/workload.py as container ``name`` of the pod; returns the JSON it printed.
        Its stdin is an open pipe nobody writes to, so it holds its sockets until stopped."""
        pb = self.pb
        sandbox, config = pod
        argv = [CONTAINER_PYTHON, CONTAINER_WORKLOAD, scenario]
        for key, value in options.items():
            argv += [f"--{key}", str(value)]
        log = f"{name}.log"
        spec = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=IMAGE), command=argv,
            log_path=log, stdin=True,
            mounts=[pb.Mount(container_path="/usr", host_path="/usr", readonly=True),
                    pb.Mount(container_path="/tests", host_path=str(ROOT / "tests"), readonly=True)])
        cid = self.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sandbox, config=spec, sandbox_config=config)).container_id
        self.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))
        path = self.logs / log

        def printed():
            for line in path.read_text().splitlines() if path.exists() else ():
                _ts, stream, _tag, text = line.split(" ", 3)
                if stream == "stdout" and text.startswith("{"):
                    return json.loads(text)
            return None

        return wait_for(printed, timeout=20, what=f"workload {scenario} in {name}")

    def sandbox_pid(self, sandbox: str) -> int:
        status = self.runtime.PodSandboxStatus(self.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox, verbose=True))
        return json.loads(status.info["info"])["pid"]

    def remove(self, sandbox: str) -> None:
        pb = self.pb
        self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox))
        self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox))
        self.sandboxes.remove(sandbox)

    def close(self):
        try:
            for sandbox in list(self.sandboxes):
                self.remove(sandbox)
            self.channel.close()
        finally:
            terminate(self.proc)
            subprocess.run(["ip", "link", "del", "tcpwtest0"], capture_output=True)
            # The CNI bridge plugin's host-local IPAM keeps leases here.
            shutil.rmtree("/var/lib/cni/networks/tcpwatch-test", ignore_errors=True)
            if self._own_state:
                shutil.rmtree(self.state, ignore_errors=True)
            else:
                self.socket.unlink(missing_ok=True)


def ss_in(pid: int, family: int = 4) -> dict:
    """Sockets per state as ``ss -tan`` sees them in the network namespace of ``pid``."""
    from helpers import SS_STATES

    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ss", "-tanH", f"-{family}"],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    counts = {state: 0 for state in SS_STATES.values()}
    for line in out.splitlines():
        counts[SS_STATES[line.split()[0]]] += 1
    return counts


def until_gone(check, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not check():
        time.sleep(0.1)
