"""The Prometheus collector tcpwatch registers: one snapshot per scrape, every enabled
collector over it (collectors/), and the families that say how each collector did.

Scrapes are serialised by a lock (collectors keep state between scrapes: CLOSE_WAIT
first-seen times, counters since start) and coalesced: a scrape that waited for another one
reuses its result when that collection started after the waiting scrape arrived, so 50
concurrent scrapers cost one dump, not 50.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import __version__, collectors, snapshot
from .collectors import CollectorSettings
from .namespace_book import NamespaceBook

log = logging.getLogger("tcpwatch.collector")


class Exporter:
    """``collectors``: instances to run instead of every enabled one (tests)."""

    def __init__(self, settings: CollectorSettings, sources: snapshot.Sources,
                 clock: Callable[[], float] = time.monotonic, collectors_override: Optional[list] = None):
        self._settings = settings
        self._sources = sources
        self._clock = clock
        self._ebpf_loaded = sources.bpf_read is not None
        self.collectors = (collectors_override if collectors_override is not None
                           else collectors.build(settings, self._ebpf_loaded, clock))
        self._errors = Counter({c.name: 0 for c in self.collectors})   # failed scrapes since start
        self._lock = threading.Lock()
        self._last_started = float("-inf")
        self._last_families: list = []
        self._owner_executor = None
        self._book = NamespaceBook()   # namespaces' labels and counters across scrapes
        self.observers = []   # called with every fresh collection's families (the state API)

    def describe(self):
        return []  # keeps the registry from running a dump at registration

    def collect(self):
        arrived = self._clock()
        with self._lock:
            if self._last_started >= arrived:
                return list(self._last_families)
            self._last_started = self._clock()
            self._last_families = self._collect_now()
            for observe in self.observers:
                try:
                    observe(self._last_families)
                except Exception as exc:   # the page's history must never fail a scrape
                    log.error("collection observer failed", extra={"error": repr(exc)})
            return list(self._last_families)

    def _collect_now(self) -> list:
        snap = snapshot.take(self._sources, self._owner_pool(), self._settings.netns_max_series, self._book)
        durations = GaugeMetricFamily(
            "tcpwatch_scrape_collector_duration_seconds",
            "Time each collector took during this scrape.", labels=["collector"])
        success = GaugeMetricFamily(
            "tcpwatch_scrape_collector_success",
            "1 if the collector produced its metrics during this scrape, 0 if it failed.",
            labels=["collector"])
        families = []
        for collector in self.collectors:
            outcome = collectors.execute(collector, snap)
            families.extend(outcome.families)
            durations.add_metric([collector.name], outcome.seconds)
            success.add_metric([collector.name], 1.0 if outcome.ok else 0.0)
            if not outcome.ok:
                self._errors[collector.name] += 1
        enabled = GaugeMetricFamily("tcpwatch_ebpf_enabled",
                                    "1 if the eBPF program is attached and read, 0 if not (see the log).")
        enabled.add_metric([], 1.0 if self._ebpf_loaded else 0.0)
        errors = CounterMetricFamily(
            "tcpwatch_scrape_collector_errors",
            "Scrapes in which the collector failed since tcpwatch started (the log says why).",
            labels=["collector"])
        for collector in self.collectors:
            errors.add_metric([collector.name], self._errors[collector.name])
        build = GaugeMetricFamily("tcpwatch_build_info", "Always 1; the version of tcpwatch running.",
                                  labels=["version"])
        build.add_metric([__version__], 1.0)
        return families + [enabled, durations, success, errors, build]

    def _owner_pool(self):
        if self._owner_executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._owner_executor = ThreadPoolExecutor(1, thread_name_prefix="owner-walk")
        return self._owner_executor
