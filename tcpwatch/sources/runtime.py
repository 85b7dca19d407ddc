"""Container and pod names from what the host itself holds: no Kubernetes API, no token.

A process's container id comes from its cgroup path (``/proc/PID/cgroup``): every runtime
puts the 64-hex-digit id there (``libpod-ID.scope``, ``docker-ID.scope``,
``cri-containerd-ID.scope``, ``/k8s.io/ID``, ``crio-ID``). The id is then looked up in the
runtimes' own state on disk, read-only:

  containerd  /run/containerd/io.containerd.runtime.v2.task/<namespace>/<id>/config.json:
              the OCI spec; the CRI plugin annotates it with io.kubernetes.cri.sandbox-name,
              -namespace and container-type (sandbox or container). A container made
              with ctr has no annotations: its id is the name the user gave.
  podman      <graph root>/*-containers/containers.json (names) and <id>/userdata/config.json.
  CRI-O       the same containers storage; annotations io.kubernetes.pod.name, -.namespace.
  Docker      /var/lib/docker/containers/<id>/config.v2.json ("Name").

Results are cached per id (a container's name and pod do not change while it lives); ids
not asked for in a scrape are forgotten, so the cache holds only live containers.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger(__name__)

CONTAINERD_STATE = "/run/containerd"
CONTAINERD_TASKS = "io.containerd.runtime.v2.task"
CONTAINERS_STORAGE = ("/var/lib/containers/storage", "/run/containers/storage")
DOCKER_CONTAINERS = "/var/lib/docker/containers"

_ID = re.compile(r"(?<![0-9a-f])([0-9a-f]{64})(?![0-9a-f])")

# Annotations that name a pod: (name key, namespace key), CRI plugin of containerd then CRI-O.
_POD_ANNOTATIONS = (("io.kubernetes.cri.sandbox-name", "io.kubernetes.cri.sandbox-namespace"),
                    ("io.kubernetes.pod.name", "io.kubernetes.pod.namespace"))
_CONTAINER_NAME_ANNOTATIONS = ("io.kubernetes.cri.container-name", "io.kubernetes.container.name")
_SANDBOX_TYPE = {("io.kubernetes.cri.container-type", "sandbox"), ("io.kubernetes.cri-o.ContainerType", "sandbox")}


@dataclass(frozen=True)
class Container:
    id: str
    runtime: str              # containerd, podman, cri-o, docker, or "" when only the id is known
    name: str                 # the runtime's name for it (the id's first 12 digits if it has none)
    pod_namespace: str = ""
    pod: str = ""
    sandbox: bool = False     # a pod's sandbox (pause) container


def container_id(pid: int, proc_root: str = "/proc") -> str:
    """The container id in the process's cgroup path; "" when it runs in no container."""
    try:
        with open(f"{proc_root}/{pid}/cgroup") as f:
            text = f.read()
    except OSError:
        return ""
    return container_id_of_cgroup(text)


def container_id_of_cgroup(text: str) -> str:
    """Pure: the last 64-hex-digit id in a /proc/PID/cgroup text (a pod's cgroup id comes
    first in some layouts, the container's last)."""
    found = ""
    for line in text.splitlines():
        ids = _ID.findall(line)
        if ids:
            found = ids[-1]
    return found


class Runtimes:
    """Looks container ids up in the runtimes' state directories."""

    def __init__(self, containerd_state: str = CONTAINERD_STATE,
                 containers_storage=CONTAINERS_STORAGE, docker_containers: str = DOCKER_CONTAINERS):
        self._containerd = f"{containerd_state}/{CONTAINERD_TASKS}"
        self._storage = tuple(containers_storage)
        self._docker = docker_containers
        self._cache = {}
        self._asked = set()
        self._podman_names = {}       # storage file -> (mtime, {id: name})
        self._errors = 0              # state files that vanished or did not parse

    def lookup(self, cid: str) -> Optional[Container]:
        if not cid:
            return None
        self._asked.add(cid)
        if cid not in self._cache:
            found = self._find(cid)
            if found is None:
                return Container(cid, "", cid[:12])   # not (yet) in a runtime's state: not cached
            self._cache[cid] = found
        return self._cache[cid]

    def take_errors(self) -> int:
        """State files that could not be read since the last call."""
        errors, self._errors = self._errors, 0
        return errors

    def forget_unasked(self) -> None:
        """End of a scrape: drop ids nobody asked for (their containers are gone)."""
        for cid in [c for c in self._cache if c not in self._asked]:
            del self._cache[cid]
        self._asked = set()

    def _find(self, cid: str) -> Optional[Container]:
        for find in (self._containerd_find, self._storage_find, self._docker_find):
            try:
                found = find(cid)
            except (OSError, ValueError) as exc:   # a runtime that vanishes mid-read
                self._errors += 1
                log.info("container runtime state not readable", extra={"id": cid, "error": str(exc)})
                continue
            if found is not None:
                return found
        return None

    def _containerd_find(self, cid: str) -> Optional[Container]:
        try:
            spaces = os.listdir(self._containerd)
        except OSError:
            return None
        for space in spaces:
            path = f"{self._containerd}/{space}/{cid}/config.json"
            if os.path.exists(path):
                annotations = _annotations(path)
                return _from_annotations(cid, "containerd", annotations, default_name=cid)
        return None

    def _storage_find(self, cid: str) -> Optional[Container]:
        for root in self._storage:
            try:
                drivers = [d for d in os.listdir(root) if d.endswith("-containers")]
            except OSError:
                continue
            for driver in drivers:
                base = f"{root}/{driver}"
                config = f"{base}/{cid}/userdata/config.json"
                if not os.path.exists(config):
                    continue
                annotations = _annotations(config)
                runtime = "podman" if annotations.get("io.container.manager") == "libpod" else "cri-o"
                name = self._podman_name(f"{base}/containers.json", cid) or cid[:12]
                return _from_annotations(cid, runtime, annotations, default_name=name)
        return None

    def _podman_name(self, path: str, cid: str) -> str:
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            return ""
        cached = self._podman_names.get(path)
        if cached is None or cached[0] != mtime:
            with open(path) as f:
                entries = json.load(f)
            names = {e.get("id", ""): (e.get("names") or [""])[0] for e in entries if isinstance(e, dict)}
            cached = self._podman_names[path] = (mtime, names)
        return cached[1].get(cid, "")

    def _docker_find(self, cid: str) -> Optional[Container]:
        path = f"{self._docker}/{cid}/config.v2.json"
        if not os.path.exists(path):
            return None
        with open(path) as f:
            config = json.load(f)
        labels = (config.get("Config") or {}).get("Labels") or {}
        name = str(config.get("Name", "")).lstrip("/") or cid[:12]
        return _from_annotations(cid, "docker", labels, default_name=name)


def _annotations(path: str) -> dict:
    with open(path) as f:
        spec = json.load(f)
    annotations = spec.get("annotations") or {}
    return {str(k): str(v) for k, v in annotations.items()} if isinstance(annotations, dict) else {}


def _from_annotations(cid: str, runtime: str, annotations: dict, default_name: str) -> Container:
    """Pure: a Container from the OCI annotations (or Docker labels) of its spec."""
    pod = pod_namespace = ""
    for name_key, namespace_key in _POD_ANNOTATIONS:
        if annotations.get(name_key):
            pod, pod_namespace = annotations[name_key], annotations.get(namespace_key, "")
            break
    name = next((annotations[k] for k in _CONTAINER_NAME_ANNOTATIONS if annotations.get(k)), default_name)
    sandbox = any(annotations.get(k) == v for k, v in _SANDBOX_TYPE)
    if sandbox:
        name = "POD"
    return Container(cid, runtime, name, pod_namespace, pod, sandbox)
