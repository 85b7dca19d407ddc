"""Collectors: each turns the scrape's snapshot (``snapshot.py``) into its metric families.

node_exporter's habit: one file per collector, registered by name, and one ``execute``
that times every collector and catches its failure by the same rule for all. A collector
fails when it raises, when a source it needs gave nothing, or when a source it owns
answered only in part; then its ``tcpwatch_scrape_collector_success`` is 0, its
``_errors_total`` grows by one, one log line says why, and every other collector still
answers in the same scrape. Its duration is its own time plus that of the sources it owns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields

log = logging.getLogger("tcpwatch.collector")

# Every collector, by name, in the order its families are exported.
ORDER = ("ebpf", "inet_diag", "netns", "port", "process", "age")
REGISTRY = {}


@dataclass(frozen=True)
class CollectorSettings:
    """The flags the collectors read, fixed at start-up (names as in config.RunSettings)."""

    process_enabled: bool = True
    process_max_series: int = 20
    listen_max_ports: int = 64
    netns_max_series: int = 128
    port_enabled: bool = True
    port_server_max: int = 10
    port_client_max: int = 10
    port_include: frozenset = frozenset()

    @classmethod
    def from_run_settings(cls, run) -> "CollectorSettings":
        return cls(**{f.name: getattr(run, f.name) for f in fields(cls)})


class Collector:
    """One named collector. ``owns``: snapshot sources whose seconds and partial failures
    are this collector's; ``needs``: sources without which it has nothing to say."""

    name = ""
    owns: tuple = ()
    needs: tuple = ()

    def __init__(self, settings: CollectorSettings, clock=time.monotonic):
        self.settings = settings
        self.clock = clock

    @classmethod
    def enabled(cls, settings: CollectorSettings, ebpf_loaded: bool) -> bool:
        return True

    def collect(self, snapshot) -> list:
        raise NotImplementedError


def register(cls):
    """Class decorator: make a Collector known by its name."""
    if cls.name not in ORDER:
        raise ValueError(f"collector {cls.name!r} has no place in collectors.ORDER")
    REGISTRY[cls.name] = cls
    return cls


def build(settings: CollectorSettings, ebpf_loaded: bool, clock=time.monotonic) -> list:
    """An instance of every enabled collector, in ORDER."""
    return [REGISTRY[name](settings, clock) for name in ORDER if REGISTRY[name].enabled(settings, ebpf_loaded)]


@dataclass
class Outcome:
    families: list
    seconds: float
    ok: bool


def execute(collector: Collector, snapshot) -> Outcome:
    """Run one collector over the snapshot by the rule of the module docstring."""
    started = time.perf_counter()
    families, error = [], None
    missing = [source for source in collector.needs if source in snapshot.failed]
    if missing:
        error = f"{missing[0]}: {snapshot.failed[missing[0]]}"
    else:
        try:
            families = list(collector.collect(snapshot))
        except Exception as exc:   # a failing collector must not fail the scrape
            error = f"{type(exc).__name__}: {exc}"
        partial = [source for source in collector.owns if source in snapshot.degraded]
        if error is None and partial:
            error = f"{partial[0]}: {snapshot.degraded[partial[0]]}"
    if error is not None:
        log.error(f"{collector.name} collector failed", extra={"error": error})
    seconds = time.perf_counter() - started + sum(snapshot.seconds.get(s, 0.0) for s in collector.owns)
    return Outcome(families, seconds, error is None)


# Each module registers its collector on import.
from . import age, ebpf, netns, port, process, sockets  # noqa: E402,F401
