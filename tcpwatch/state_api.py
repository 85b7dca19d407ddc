"""The JSON behind the web page and ``tcpwatch snapshot --from``: ``GET /api/v1/state``.

It is built from the very metric families a scrape returns, so every number the page shows
is one ``/metrics`` shows (and a page refresh costs one coalesced collection, not a second
code path). Rates and recent handshake quantiles need two readings: the daemon keeps the
counters of recent collections (scrapes and page refreshes alike) in a ``History`` bounded
in count and age, and compares the newest with the one closest to a minute older.

Everything but ``StateApi`` is pure; tests feed it hand-built families.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Callable, Optional

from . import histograms, namespaces, ports

VERSION = 1
RATE_WINDOW_SECONDS = 60.0
HISTORY_MAX_READINGS = 64          # bounded memory, whatever the scrape and refresh rates
HISTORY_MIN_SPACING_SECONDS = 1.0  # closer readings replace the newest one
HANDSHAKE_STATES = ("syn_sent", "syn_recv")
QUANTILES = (0.5, 0.9, 0.99)
# "Piling up": shown highlighted on the page, and flagged in the JSON.
CLOSE_WAIT_PILE = 10               # sockets in one namespace
CLOSE_WAIT_OLD_SECONDS = 300.0     # or any older than this
TIME_WAIT_PILE_SHARE = 0.2         # of the namespace's ephemeral port range
LISTEN_QUEUES_SHOWN = 10
# A page refresh reuses a collection this recent (a scrape's, or another viewer's) instead
# of making one: any number of open pages cost at most one collection per this many seconds.
REUSE_SECONDS = 4.0
OWNERS_SHOWN = 20


def _empty() -> dict:
    """One namespace's counters before anything was counted in it."""
    return {"transitions": {}, "durations": {}}


class UnknownNetns(LookupError):
    """The ``netns`` asked for is not one the daemon exports now."""


def counters_of(families) -> dict:
    """{netns: {"transitions": {(from, to): total}, "durations": {state: [(le, count)]}}}:
    the part of a collection that rates and recent quantiles are computed from."""
    result = {}
    for family in families:
        if family.name == "tcpwatch_state_transitions":
            for s in family.samples:
                if s.name.endswith("_total"):
                    ns = result.setdefault(s.labels["netns"], _empty())
                    ns["transitions"][(s.labels["from"], s.labels["to"])] = s.value
        elif family.name == "tcpwatch_state_duration_seconds":
            for s in family.samples:
                if s.name.endswith("_bucket") and s.labels["state"] in HANDSHAKE_STATES:
                    ns = result.setdefault(s.labels["netns"], _empty())
                    le = float(s.labels["le"])
                    ns["durations"].setdefault(s.labels["state"], []).append((le, s.value))
    for ns in result.values():
        for buckets in ns["durations"].values():
            buckets.sort()
    return result


class History:
    """Counters of recent collections: at most HISTORY_MAX_READINGS, each at least
    HISTORY_MIN_SPACING_SECONDS apart, none kept longer than needed for a minute's rate."""

    def __init__(self, max_readings: int = HISTORY_MAX_READINGS, window: float = RATE_WINDOW_SECONDS):
        self._readings = deque(maxlen=max_readings)   # (monotonic time, counters_of(...))
        self._window = window

    def add(self, now: float, counters: dict) -> None:
        """Keep a collection's counters (replacing the newest when the one before it is
        closer than the spacing), and drop what no minute's rate needs any more."""
        if len(self._readings) > 1 and now - self._readings[-2][0] < HISTORY_MIN_SPACING_SECONDS:
            self._readings[-1] = (now, counters)   # too close to the one before: replace
            return
        self._readings.append((now, counters))
        # Keep one reading at or before the window's start, drop everything older.
        while len(self._readings) > 2 and now - self._readings[1][0] >= self._window:
            self._readings.popleft()

    def base(self, now: float):
        """(time, counters) of the reading to compare the newest with: the newest one at least
        a window old, else the oldest kept; None with fewer than two readings."""
        if len(self._readings) < 2:
            return None
        chosen = self._readings[0]
        for reading in list(self._readings)[:-1]:
            if now - reading[0] >= self._window:
                chosen = reading
        return chosen

    def __len__(self):
        return len(self._readings)


def _per_netns(families) -> dict:
    """Everything the page shows, per netns label, read off the families."""
    out = {}

    def ns(label):
        return out.setdefault(label, {
            "states": {}, "owners": {}, "ages": {}, "queues": {}, "time_wait_oldest": None,
            "ports": {side: {} for side in ports.SIDES}, "ephemeral_ports": None, "kind": "", "info": {}})

    for family in families:
        name = family.name
        for s in family.samples:
            lab = s.labels
            if name == "tcpwatch_sockets":
                states = ns(lab["netns"])["states"]
                states[lab["state"]] = states.get(lab["state"], 0) + int(s.value)
            elif name == "tcpwatch_process_sockets" and lab["state"] == "close_wait" and s.value:
                key = (lab["process"], lab["container"], lab["pod_namespace"], lab["pod"])
                ns(lab["netns"])["owners"][key] = int(s.value)
            elif name == "tcpwatch_state_oldest_age_seconds":
                if lab["state"] == "close_wait":
                    key = (lab["process"], lab["container"], lab["pod_namespace"], lab["pod"])
                    ns(lab["netns"])["ages"][key] = s.value
                elif lab["state"] == "time_wait":
                    ns(lab["netns"])["time_wait_oldest"] = s.value
            elif name == "tcpwatch_listen_queue_length":
                ns(lab["netns"])["queues"].setdefault(lab["port"], [0, 0])[0] = int(s.value)
            elif name == "tcpwatch_listen_queue_limit":
                ns(lab["netns"])["queues"].setdefault(lab["port"], [0, 0])[1] = int(s.value)
            elif name == "tcpwatch_port_sockets" and s.value:
                side = ns(lab["netns"])["ports"][lab["side"]]
                side.setdefault(lab["port"], {})[lab["state"]] = int(s.value)
            elif name == "tcpwatch_ephemeral_ports":
                ns(lab["netns"])["ephemeral_ports"] = int(s.value)
            elif name == "tcpwatch_netns_info":
                ns(lab["netns"])["info"] = {k: lab[k] for k in ("kind", "runtime", "pod_namespace", "pod")}
    return out


def _flag(families, name: str) -> bool:
    return any(s.value for f in families if f.name == name for s in f.samples)


def _handshakes(now_buckets: dict, base_buckets: Optional[dict], window: Optional[float]) -> dict:
    """Quantiles of the handshake histograms over the rate window when some handshake
    completed in it, else over everything since tcpwatch started."""
    result = {}
    for state in HANDSHAKE_STATES:
        buckets = now_buckets.get(state)
        if not buckets:
            continue
        span, used = None, buckets
        if base_buckets is not None and window:
            before = dict(base_buckets.get(state, ()))
            recent = [(le, count - before.get(le, 0)) for le, count in buckets]
            if recent[-1][1] > 0:
                span, used = window, recent
        entry = {"count": int(used[-1][1]), "window_seconds": span}
        for q in QUANTILES:
            entry[f"p{int(q * 100)}_seconds"] = histograms.quantile(q, used)
        result[state] = entry
    return result


def build(families, history: History, now: float, wall_time: float, netns: Optional[str] = None) -> dict:
    """The /api/v1/state document (documented in the README); ``netns`` keeps one namespace."""
    data = _per_netns(families)
    ebpf = _flag(families, "tcpwatch_ebpf_enabled")
    current = counters_of(families)
    base = history.base(now)
    window = (now - base[0]) if base is not None else None
    if netns is not None and netns not in data:
        raise UnknownNetns(netns)
    order = sorted(data, key=lambda n: (n != namespaces.HOST, n == namespaces.OTHER,
                                        -sum(data[n]["states"].values()), n))
    document = {
        "version": VERSION,
        "time": wall_time,
        "ebpf": ebpf,
        "rate_window_seconds": window,
        "namespaces": [{"netns": n, "kind": data[n]["info"].get("kind", ""),
                        "sockets": sum(data[n]["states"].values())} for n in order],
        "netns": {},
    }
    for name in order if netns is None else [netns]:
        mine = current.get(name) or _empty()
        # A namespace missing from the older reading had no counts then (its counters start
        # at 0 when it appears).
        before = (base[1].get(name) or _empty()) if base is not None else None
        document["netns"][name] = _namespace(data[name], mine, before, window)
    return document


def _namespace(d: dict, mine: dict, before, window) -> dict:
    """One namespace's part of the document: ``d`` from the families, ``mine`` and ``before``
    its counters now and at the start of the rate window (None without one)."""
    transitions = []
    for (old, new), total in sorted(mine["transitions"].items()):
        rate = None
        if window and before is not None:
            rate = max(0.0, total - before["transitions"].get((old, new), 0.0)) / window
        transitions.append({"from": old, "to": new, "total": int(total), "per_second": rate})
    owners = [{"process": k[0], "container": k[1], "pod_namespace": k[2], "pod": k[3], "sockets": count,
               "oldest_age_seconds": d["ages"].get(k)}
              for k, count in d["owners"].items()]
    owners.sort(key=lambda o: (-o["sockets"], -(o["oldest_age_seconds"] or 0), o["process"]))
    queues = [{"port": port, "length": length, "limit": limit} for port, (length, limit) in d["queues"].items()]
    queues.sort(key=lambda q: (-(q["length"] / q["limit"] if q["limit"] else q["length"]), -q["length"], q["port"]))
    close_wait = d["states"].get("close_wait", 0)
    time_wait = d["states"].get("time_wait", 0)
    oldest_close_wait = max((a for a in d["ages"].values()), default=None)
    ports_range = d["ephemeral_ports"]
    return {
        **{k: d["info"].get(k, "") for k in ("kind", "runtime", "pod_namespace", "pod")},
        "states": d["states"],
        "transitions": transitions,
        "close_wait_owners": owners[:OWNERS_SHOWN],
        "close_wait_oldest_age_seconds": oldest_close_wait,
        "time_wait_oldest_age_seconds": d["time_wait_oldest"],
        "listen_queues": queues[:LISTEN_QUEUES_SHOWN],
        "handshakes": _handshakes(mine["durations"], before["durations"] if before else None, window),
        "ports": {side: [{"port": p, "states": s} for p, s in sorted(
            d["ports"][side].items(), key=lambda item: (-sum(item[1].values()), item[0]))]
            for side in ports.SIDES},
        "ephemeral_ports": ports_range,
        "piling_up": {
            "close_wait": close_wait >= CLOSE_WAIT_PILE or (
                close_wait > 0 and (oldest_close_wait or 0) >= CLOSE_WAIT_OLD_SECONDS),
            "time_wait": bool(ports_range) and time_wait >= TIME_WAIT_PILE_SHARE * ports_range,
        },
    }


class StateApi:
    """Serves /api/v1/state from a collector; records every collection it sees."""

    def __init__(self, collect: Callable[[], list], clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self._collect = collect
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._history = History()
        self._latest = (float("-inf"), [])   # (clock, families) of the newest collection

    def observe(self, families) -> None:
        """Called with every fresh collection (scrapes included): one more reading."""
        counters = counters_of(families)
        with self._lock:
            now = self._clock()
            self._history.add(now, counters)
            self._latest = (now, families)

    def respond(self, query: dict):
        """(HTTP status, JSON bytes) for the query string's parameters."""
        netns = query.get("netns", [None])[0]
        with self._lock:
            taken, families = self._latest
        if self._clock() - taken > REUSE_SECONDS:
            families = self._collect()
        with self._lock:
            try:
                document = build(families, self._history, self._clock(), self._wall_clock(), netns or None)
            except UnknownNetns:
                return 404, json.dumps({"error": f"no network namespace {netns!r} is exported now"}).encode()
        return 200, json.dumps(document).encode()
