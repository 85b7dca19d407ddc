"""The image, built from deploy/kubernetes/Dockerfile and run as the DaemonSet's pod.

Offline but for the package registries: a Debian bookworm base is made with mmdebstrap from
the mirror apt uses, imported as debian:bookworm-slim, and the unchanged Dockerfile is built
on it with podman (pip gets the host's CA bundle at build time only). The pod runs through
containerd's CRI (state /run/containerd, as the manifest's mount expects), its sandbox and
container configs generated from daemonset.yaml itself: host network and PID namespaces,
exactly its capabilities, read-only root, no_new_privs, seccomp RuntimeDefault, its hostPath
mounts. A workload pod with a CLOSE_WAIT leak runs beside it. Everything is removed after.
"""

import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from containers import Containerd, Podman, ss_in
from helpers import ROOT, parse_metrics, value, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(not all(shutil.which(t) for t in ("podman", "containerd", "mmdebstrap")),
                                 reason="podman, containerd and mmdebstrap are installed by `make test`")]

TCPWATCH_IMAGE = "localhost/tcpwatch:test"
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
CONTAINERD_STATE = Path("/run/containerd")
MANIFEST = ROOT / "deploy" / "kubernetes" / "daemonset.yaml"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def apt_mirror() -> str:
    """The Debian mirror apt uses here (deb822 or one-line sources)."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]:
        text = path.read_text() if path.exists() else ""
        for line in text.splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and "security" not in words[1]:
                return words[1]
            if words[:1] == ["deb"] and "security" not in line:
                return next(w for w in words[1:] if w.startswith("http"))
    return "http://deb.debian.org/debian"


def build_image(podman, workdir: Path) -> None:
    base = workdir / "base.tar"
    subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
                    "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
                    "--dpkgopt=path-exclude=/usr/share/locale/*", "bookworm", str(base),
                    f"deb {apt_mirror()} bookworm main"], check=True, capture_output=True, timeout=600)
    podman.podman("import", str(base), BASE_IMAGE)
    base.unlink()
    ca = ["--build-arg", "PIP_CERT=/run/ca.crt", "-v", f"{CA_BUNDLE}:/run/ca.crt:ro"] if CA_BUNDLE.exists() else []
    subprocess.run(["podman", "build", "-q", "--layers=false", "--network", "host", *ca, "-f", str(MANIFEST.parent / "Dockerfile"),
                    "-t", TCPWATCH_IMAGE, str(ROOT)], env=podman.env, check=True, capture_output=True, timeout=900)


@pytest.fixture(scope="module")
def cluster():
    assert not (CONTAINERD_STATE / "containerd.sock").exists(), "a containerd already runs here"
    existed = set(CONTAINERD_STATE.iterdir()) if CONTAINERD_STATE.exists() else None
    workdir = Path(tempfile.mkdtemp(prefix="tcpwatch-image-"))
    podman = Podman(workdir)
    containerd = None
    try:
        build_image(podman, workdir)
        containerd = Containerd(workdir, podman, state=CONTAINERD_STATE)
        containerd.import_image(podman, TCPWATCH_IMAGE)
        yield containerd
    finally:
        if containerd is not None:
            containerd.close()
        podman.podman("rmi", "-f", TCPWATCH_IMAGE, BASE_IMAGE, check=False)
        podman.close()
        shutil.rmtree(workdir, ignore_errors=True)
        if existed is None:
            shutil.rmtree(CONTAINERD_STATE, ignore_errors=True)
        else:   # what the test's containerd left there
            for path in set(CONTAINERD_STATE.iterdir()) - existed:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def agent_configs(pb, logs: Path):
    """The DaemonSet's pod as CRI configs: (sandbox config, container config, grace seconds)."""
    pod = yaml.safe_load(MANIFEST.read_text())["spec"]["template"]["spec"]
    spec = pod["containers"][0]
    node, own = pb.NamespaceMode.Value("NODE"), pb.NamespaceMode.Value("POD")
    namespaces = pb.NamespaceOption(network=node if pod.get("hostNetwork") else own,
                                    pid=node if pod.get("hostPID") else own, ipc=own)
    sandbox = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="tcpwatch-agent", namespace="tcpwatch", uid="uid-agent", attempt=0),
        hostname="",   # runc refuses a hostname without a UTS namespace of the pod's own
        log_directory=str(logs),
        linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(namespace_options=namespaces)))
    volumes = {v["name"]: v["hostPath"] for v in pod["volumes"]}
    mounts = []
    for mount in spec["volumeMounts"]:
        host = volumes[mount["name"]]
        Path(host["path"]).mkdir(parents=True, exist_ok=True)   # DirectoryOrCreate
        propagation = (pb.MountPropagation.Value("PROPAGATION_HOST_TO_CONTAINER")
                       if mount.get("mountPropagation") == "HostToContainer" else 0)
        mounts.append(pb.Mount(container_path=mount["mountPath"], host_path=host["path"],
                               readonly=mount.get("readOnly", False), propagation=propagation))
    context = spec["securityContext"]
    security = pb.LinuxContainerSecurityContext(
        capabilities=pb.Capability(add_capabilities=context["capabilities"]["add"],
                                   drop_capabilities=context["capabilities"]["drop"]),
        readonly_rootfs=context["readOnlyRootFilesystem"], no_new_privs=not context["allowPrivilegeEscalation"],
        run_as_user=pb.Int64Value(value=context["runAsUser"]), privileged=context["privileged"],
        seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.ProfileType.Value(context["seccompProfile"]["type"])),
        namespace_options=namespaces)
    container = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=spec["name"]),
                                   image=pb.ImageSpec(image=TCPWATCH_IMAGE), args=spec["args"], log_path="agent.log",
                                   mounts=mounts, linux=pb.LinuxContainerConfig(security_context=security))
    port = spec["ports"][0]["containerPort"]
    return sandbox, container, pod["terminationGracePeriodSeconds"], port


def get(port: int, path: str):
    try:
        response = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
        return response.status, response.read().decode()
    except OSError:
        return None, ""


def test_the_daemonset_pod_runs_the_image_and_reports_a_leaking_pod(cluster):
    pb, runtime = cluster.pb, cluster.runtime
    sandbox_config, config, grace, port = agent_configs(pb, cluster.logs)
    sandbox = runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=sandbox_config)).pod_sandbox_id
    cluster.sandboxes.append(sandbox)
    agent = runtime.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sandbox, config=config,
                                                              sandbox_config=sandbox_config)).container_id
    runtime.StartContainer(pb.StartContainerRequest(container_id=agent))
    wait_for(lambda: get(port, "/-/ready")[0] == 200, timeout=60, what="the agent ready")
    assert get(port, "/-/healthy")[0] == 200

    cart = cluster.pod("cart", "shop")
    started = time.monotonic()
    cluster.container(cart, "leaker", "leak", count=4, comm="cartleak")
    made = time.monotonic()
    pid = cluster.sandbox_pid(cart[0])

    def agreed():
        asked = time.monotonic()
        samples = parse_metrics(get(port, "/metrics")[1])
        answered = time.monotonic()
        theirs = ss_in(pid)
        ours = {s: value(samples, "tcpwatch_sockets", netns="shop/cart", family="ipv4", state=s)
                for s in ("listen", "established", "close_wait")}
        return (samples, asked, answered) if ours == {s: theirs[s] for s in ours} else None

    samples, asked, answered = wait_for(agreed, timeout=30, interval=0.5, what="the pod's counts equal to ss in it")
    assert value(samples, "tcpwatch_ebpf_enabled") == 1
    assert value(samples, "tcpwatch_ebpf_attach_info", headers="bundled") == 1
    owner = dict(netns="shop/cart", process="cartleak", container="leaker", pod_namespace="shop", pod="cart")
    assert value(samples, "tcpwatch_process_sockets", state="close_wait", **owner) == 4
    age = value(samples, "tcpwatch_state_oldest_age_seconds", state="close_wait", **owner)
    # Exact: the program saw them enter CLOSE_WAIT between the start and the print, and the
    # daemon aged them during the scrape.
    assert asked - made - 0.01 <= age <= answered - started + 0.01

    stopping = time.monotonic()
    runtime.StopContainer(pb.StopContainerRequest(container_id=agent, timeout=grace))
    status = runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=agent)).status
    assert time.monotonic() - stopping < grace and status.exit_code == 0
    log = (cluster.logs / "agent.log").read_text()
    assert "Traceback" not in log and '"level": "error"' not in log
