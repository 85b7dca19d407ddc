"""tcpwatch_process_sockets: sockets per owning process (and its container and pod), from the
owner walk (sources/processes.py, or the eBPF task_file iterator) joined to the dumps."""

from __future__ import annotations

import logging
from collections import Counter

from prometheus_client.core import GaugeMetricFamily

from .. import attribution, states
from ..model import OTHER
from ..snapshot import INET_DIAG, OWNERS
from . import Collector, register

log = logging.getLogger("tcpwatch.collector")


def other_of(key: tuple) -> tuple:
    """Where an owner past the cap is counted: process="other" of its namespace."""
    return (key[0], OTHER, "", "", "")


def is_placeholder(key: tuple) -> bool:
    """[kernel] and [unknown] are always exported and do not use up the cap."""
    return key[1] in attribution.PLACEHOLDERS


@register
class ProcessCollector(Collector):
    name = "process"
    owns = (OWNERS,)
    needs = (OWNERS, INET_DIAG)

    def __init__(self, settings, clock=None):
        super().__init__(settings, clock)
        self._warned_unreadable = False

    @classmethod
    def enabled(cls, settings, ebpf_loaded: bool) -> bool:
        return settings.process_enabled

    def collect(self, snapshot) -> list:
        limit = self.settings.process_max_series
        sockets = {}   # (netns, comm, container, pod namespace, pod) -> state -> sockets
        for label, _dump, ownership in snapshot.ownership:
            for owner, counts in ownership.sockets.items():
                sockets.setdefault((label,) + owner, Counter()).update(counts)
        per_process = GaugeMetricFamily(
            "tcpwatch_process_sockets",
            "TCP sockets per network namespace, owning process name (comm), its container and "
            f"Kubernetes pod (namespace and name), and state. Top {limit} owners by socket count, the rest "
            "under process=\"other\" of their namespace; \"[kernel]\" holds sockets no process "
            "has (TIME_WAIT, orphans), \"[unknown]\" sockets whose holder could not be read. "
            "container, pod_namespace and pod are empty for a process in no container (or pod).",
            labels=["netns", "process", "container", "pod_namespace", "pod", "state"])
        for key, counts in sorted(attribution.cap_process_sockets(sockets, limit, other_of, is_placeholder).items()):
            for state in states.REPORTED:
                per_process.add_metric(list(key) + [states.name(state)], counts.get(state, 0))
        return [per_process, self._unreadable(snapshot.owners.unreadable)]

    def _unreadable(self, processes: int):
        unreadable = GaugeMetricFamily(
            "tcpwatch_process_unreadable",
            "Processes whose open files could not be read at this scrape (missing "
            "CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH); their sockets count as \"[unknown]\".")
        unreadable.add_metric([], processes)
        if processes and not self._warned_unreadable:
            self._warned_unreadable = True   # once: the gauge tracks it from then on
            log.warning("cannot read the fds of other processes: their sockets count as "
                        "process=\"[unknown]\" (tcpwatch needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)",
                        extra={"processes": processes})
        return unreadable
