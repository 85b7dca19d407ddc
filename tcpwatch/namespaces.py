"""Pure: the ``netns`` label of each network namespace, and the cap on how many are named.

Naming rules, first match wins (README, "Network namespaces"):
  host        the host's namespace (PID 1's);
  pod         <pod namespace>/<pod name>, when a process in it runs in a Kubernetes pod;
  container   the runtime's name of the container a process in it runs in;
  named       the ``ip netns`` name (a bind mount under /run/netns);
  unnamed     netns-<inode>, for the rest (a process that called unshare, say).
Two namespaces can never share a label: a clash is resolved with "@<inode>".
"""

from __future__ import annotations

from typing import Iterable, Mapping

from .model import NetnsInfo

HOST = "host"
OTHER = "other"


def name_one(inode: int, host_inode: int, containers: Iterable, bind_names: Iterable[str]) -> NetnsInfo:
    """The label of one namespace. ``containers``: the Containers its processes run in,
    lowest pid first."""
    if inode == host_inode:
        return NetnsInfo(inode, HOST, "host")
    containers = [c for c in containers if c is not None]
    for c in containers:
        if c.pod:
            sandbox = next((s for s in containers if s.sandbox and s.pod == c.pod), c)
            return NetnsInfo(inode, f"{c.pod_namespace}/{c.pod}", "pod", c.runtime, c.pod_namespace,
                             c.pod, sandbox.id)
    if containers:
        c = containers[0]
        return NetnsInfo(inode, c.name, "container", c.runtime, container_id=c.id)
    names = list(bind_names)
    if names:
        return NetnsInfo(inode, names[0], "named")
    return NetnsInfo(inode, f"netns-{inode}", "unnamed")


def unique(infos: Iterable[NetnsInfo]) -> dict:
    """{inode: info}, with clashing labels made unique by their inode (stable: the same
    inode always gets the same label)."""
    infos = sorted(infos, key=lambda i: i.inode)
    seen = {}
    for info in infos:
        seen.setdefault(info.name, []).append(info)
    result = {}
    for name, group in seen.items():
        for info in group:
            if len(group) > 1 and info.kind != "host":
                info = NetnsInfo(info.inode, f"{name}@{info.inode}", info.kind, info.runtime,
                                 info.pod_namespace, info.pod, info.container_id)
            result[info.inode] = info
    return result


def kept_names(weights: Mapping[str, float], limit: int) -> set:
    """The ``limit`` namespaces with the most sockets (ties by name); host is always kept
    and does not use up the limit."""
    ranked = sorted((n for n in weights if n != HOST), key=lambda n: (-weights[n], n))
    kept = set(ranked[:limit])
    if HOST in weights:
        kept.add(HOST)
    return kept


def label_of(name: str, kept: set) -> str:
    return name if name in kept else OTHER
