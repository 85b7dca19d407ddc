"""tcpwatch_state_oldest_age_seconds, the one family with two inputs, built here and only here:
time_wait rows from each dump's shortest timewait timer, close_wait rows per owner from
the owner walk joined to the dumps' CLOSE_WAIT sockets, aged from the eBPF program's exact
entry times when it saw them, else from the first scrape that saw them."""

from __future__ import annotations

from collections import Counter

from prometheus_client.core import GaugeMetricFamily

from .. import attribution, states
from ..model import KERNEL_HELD, UNKNOWN_OWNER
from ..snapshot import INET_DIAG, OWNERS
from . import Collector, register
from .process import is_placeholder, other_of


@register
class AgeCollector(Collector):
    name = "age"
    needs = (INET_DIAG,)

    def __init__(self, settings, clock=None):
        super().__init__(settings, clock)
        self._close_wait_first_seen = attribution.FirstSeen()   # cookie -> clock seconds

    def collect(self, snapshot) -> list:
        oldest = GaugeMetricFamily(
            "tcpwatch_state_oldest_age_seconds",
            "Age of the oldest socket now in the state, per network namespace. close_wait, per "
            f"owner (top {self.settings.process_max_series} by CLOSE_WAIT count, the rest under "
            "process=\"other\"): exact when the eBPF program saw the socket enter CLOSE_WAIT, "
            "otherwise measured from the first scrape that saw it (a lower bound). time_wait, "
            "process \"[kernel]\": 60 s (TCP_TIMEWAIT_LEN) less the shortest timewait timer left.",
            labels=["netns", "state", "process", "container", "pod_namespace", "pod"])
        for label, totals in snapshot.groups.dumped():
            if totals.time_wait_min_ms >= 0:
                age = max(0.0, states.TIME_WAIT_SECONDS - totals.time_wait_min_ms / 1000.0)
                oldest.add_metric([label, "time_wait", KERNEL_HELD, "", "", ""], age)
        # Per owner only when owners were read (--collector.process, and the walk answered).
        if snapshot.owners is not None and OWNERS not in snapshot.failed:
            for key, age in sorted(self._close_wait_ages(snapshot).items()):
                oldest.add_metric([key[0], "close_wait", *key[1:]], age)
        return [oldest]

    def _close_wait_ages(self, snapshot) -> dict:
        """{(netns, comm, container, pod namespace, pod): oldest CLOSE_WAIT age}, capped
        like tcpwatch_process_sockets but ranked by CLOSE_WAIT count, so a leaking owner is
        named even where busier ones hold more sockets."""
        now = self.clock()
        first_seen = self._first_seen(snapshot, now)
        unknown = (UNKNOWN_OWNER, "", "", "")
        ages, counts = {}, Counter()
        for label, dump, ownership in snapshot.ownership:
            oldest_of, counted = attribution.oldest_close_wait(dump.snap, ownership, first_seen, now, None, unknown)
            for owner, age in oldest_of.items():
                key = (label,) + owner
                ages[key] = max(age, ages.get(key, 0.0))
                counts[key] += counted[owner]
        keep = attribution.top_names(counts, self.settings.process_max_series, is_placeholder)
        capped = {}
        for key, age in ages.items():
            target = key if key in keep else other_of(key)
            capped[target] = max(age, capped.get(target, 0.0))
        return capped

    def _first_seen(self, snapshot, now: float) -> dict:
        """cookie -> when each CLOSE_WAIT socket was first seen, in clock seconds. The
        program's entry times are exact, in ns of CLOCK_MONOTONIC: our clock."""
        dumps = snapshot.dumps.dumps
        cookies = [sock.cookie for dump in dumps for sock in dump.snap.close_wait]
        first_seen = dict(self._close_wait_first_seen.update(cookies, now))
        reading = snapshot.reading
        if reading is not None:
            for dump in dumps:
                for sock in dump.snap.close_wait:
                    entered = reading.close_wait_entered(sock, dump.snap.netns_inode)
                    if entered is not None:
                        first_seen[sock.cookie] = min(first_seen[sock.cookie], entered / 1e9)
        return first_seen
