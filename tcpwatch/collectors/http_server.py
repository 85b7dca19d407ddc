"""tcpwatch's own HTTP server and threads: the proof that hostile clients are bounded.

Registered beside the Exporter, not in the collectors' registry: it reads the server's
counters, not the scrape's snapshot, and cannot fail.
"""

from __future__ import annotations

import threading
from typing import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class ServerCollector:
    """tcpwatch's own HTTP server and threads: the proof that hostile clients are bounded."""

    def __init__(self, stats, threads: Callable[[], int] = threading.active_count):
        self._stats = stats
        self._threads = threads

    def describe(self):
        return []

    def collect(self):
        with self._stats.lock:
            responses = dict(self._stats.responses)
            dropped = dict(self._stats.dropped)
            open_now = self._stats.open_connections
        served = CounterMetricFamily("tcpwatch_http_responses",
                                     "HTTP responses tcpwatch sent, by status code.", labels=["code"])
        for code in sorted(responses):
            served.add_metric([str(code)], responses[code])
        drops = CounterMetricFamily(
            "tcpwatch_http_dropped_connections",
            "Connections tcpwatch closed without a response: over the connection limit, evicted "
            "while idle to make room, past the 30 s deadline, timed out, failed TLS handshake, "
            "client gone, other error.",
            labels=["reason"])
        for reason in sorted(dropped):
            drops.add_metric([reason], dropped[reason])
        connections = GaugeMetricFamily("tcpwatch_http_open_connections",
                                        "HTTP connections being served now (at most 64).")
        connections.add_metric([], open_now)
        threads = GaugeMetricFamily("tcpwatch_threads", "Threads in the tcpwatch process now.")
        threads.add_metric([], self._threads())
        return [served, drops, connections, threads]
