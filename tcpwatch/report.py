"""``tcpwatch snapshot``: one dump, reduced to what a person reads, as a dict or as tables."""

from __future__ import annotations

from . import attribution, states
from .model import DiagSnapshot


def build(snap: DiagSnapshot, owners, top: int) -> dict:
    """Counts per state and family, CLOSE_WAIT owners, fullest listen queues."""
    sockets = {family: {states.name(s): snap.counts.get((family, s), 0) for s in states.REPORTED}
               for family in states.FAMILIES}
    ownership = attribution.attribute(snap, owners)
    close_wait = sorted(
        ((process, counts[states.CLOSE_WAIT]) for process, counts in ownership.sockets.items()
         if counts.get(states.CLOSE_WAIT)),
        key=lambda item: (-item[1], item[0]))
    queues = attribution.listen_queues(snap.listeners, limit=len(snap.listeners))
    fullest = sorted(queues.items(), key=lambda item: (-item[1][0] / max(item[1][1], 1), int(item[0])))
    return {
        "sockets": sockets,
        "total": snap.total(),
        "close_wait_owners": [{"process": p, "sockets": n} for p, n in close_wait[:top]],
        "listen_queues": [{"port": int(port), "length": length, "limit": limit}
                          for port, (length, limit) in fullest[:top]],
    }


def render_text(report: dict) -> str:
    lines = [f"{'STATE':<12} {'IPV4':>8} {'IPV6':>8} {'TOTAL':>8}"]
    for state in states.REPORTED:
        name = states.name(state)
        v4, v6 = report["sockets"]["ipv4"][name], report["sockets"]["ipv6"][name]
        lines.append(f"{name:<12} {v4:>8} {v6:>8} {v4 + v6:>8}")
    lines.append(f"{'total':<12} {'':>8} {'':>8} {report['total']:>8}")
    lines += ["", "CLOSE_WAIT owners (the peer closed; the process has not called close())"]
    if report["close_wait_owners"]:
        lines.append(f"  {'PROCESS':<20} {'SOCKETS':>8}")
        lines += [f"  {row['process']:<20} {row['sockets']:>8}" for row in report["close_wait_owners"]]
        lines.append("  (how long they have waited: tcpwatch_state_oldest_age_seconds from `tcpwatch run`)")
    else:
        lines.append("  none")
    lines += ["", "Listen queues, fullest first"]
    if report["listen_queues"]:
        lines.append(f"  {'PORT':>6} {'QUEUED':>8} {'LIMIT':>8}")
        lines += [f"  {row['port']:>6} {row['length']:>8} {row['limit']:>8}" for row in report["listen_queues"]]
    else:
        lines.append("  none")
    return "\n".join(lines)


def build_all(dumps, owners, top: int, unreadable: int = 0) -> dict:
    """One report per network namespace, host first, then by socket count."""
    ordered = sorted(dumps, key=lambda d: (d.info.kind != "host", -d.snap.total(), d.info.name))
    return {
        "namespaces": [dict(netns=d.info.name, kind=d.info.kind, inode=d.info.inode,
                            pod=f"{d.info.pod_namespace}/{d.info.pod}" if d.info.pod else None,
                            **build(d.snap, owners, top)) for d in ordered],
        "unreadable_namespaces": unreadable,
    }


def render_all(report: dict) -> str:
    parts = []
    for ns in report["namespaces"]:
        title = f"== netns {ns['netns']} ({ns['kind']}, inode {ns['inode']}) =="
        parts.append(title + "\n" + render_text(ns))
    if report["unreadable_namespaces"]:
        parts.append(f"({report['unreadable_namespaces']} network namespaces could not be read: "
                     "tcpwatch needs CAP_SYS_ADMIN to enter them)")
    return "\n\n".join(parts)


def _age(seconds) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.3g}ms" if seconds < 1 else f"{seconds:.3g}s"


def render_state(document: dict, top: int) -> str:
    """``snapshot --from``: a running daemon's /api/v1/state for a person. Unlike a one-shot
    dump it knows exact CLOSE_WAIT ages, handshake times and transition rates."""
    window = document.get("rate_window_seconds")
    parts = []
    for name, ns in document["netns"].items():
        kind = ns.get("kind") or "aggregate"
        lines = [f"== netns {name} ({kind}) =="]
        lines.append(f"{'STATE':<12} {'SOCKETS':>8}")
        lines += [f"{state:<12} {count:>8}" for state, count in ns["states"].items()]
        lines += ["", "CLOSE_WAIT owners (the peer closed; the process has not called close())"]
        if ns["close_wait_owners"]:
            lines.append(f"  {'PROCESS':<20} {'CONTAINER/POD':<28} {'SOCKETS':>8} {'OLDEST':>8}")
            for row in ns["close_wait_owners"][:top]:
                where = f"{row['pod_namespace']}/{row['pod']}" if row["pod"] else row["container"]
                lines.append(f"  {row['process']:<20} {where:<28} {row['sockets']:>8} "
                             f"{_age(row['oldest_age_seconds']):>8}")
        else:
            lines.append("  none")
        if ns.get("time_wait_oldest_age_seconds") is not None:
            lines.append(f"  oldest TIME_WAIT: {_age(ns['time_wait_oldest_age_seconds'])}")
        lines += ["", "Listen queues, fullest first"]
        if ns["listen_queues"]:
            lines.append(f"  {'PORT':>6} {'QUEUED':>8} {'LIMIT':>8}")
            lines += [f"  {row['port']:>6} {row['length']:>8} {row['limit']:>8}" for row in ns["listen_queues"][:top]]
        else:
            lines.append("  none")
        if not document["ebpf"]:
            lines += ["", "Handshakes and transitions: the daemon runs without eBPF"]
        else:
            lines += ["", "Handshakes" + (f" (last {window:.0f}s)" if window else "")]
            if ns["handshakes"]:
                lines.append(f"  {'STATE':<9} {'P50':>9} {'P90':>9} {'P99':>9} {'COUNT':>7}")
                for state, h in ns["handshakes"].items():
                    lines.append(f"  {state:<9} {_duration(h['p50_seconds']):>9} {_duration(h['p90_seconds']):>9} "
                                 f"{_duration(h['p99_seconds']):>9} {h['count']:>7}"
                                 + ("" if h["window_seconds"] else "  (since tcpwatch started)"))
            else:
                lines.append("  none seen")
            moving = [t for t in ns["transitions"] if t["total"]]
            lines += ["", "Transitions" + (f" per second (last {window:.0f}s)" if window else
                                           " (no rate: the daemon has one reading only)")]
            if moving:
                lines.append(f"  {'FROM':<12} {'TO':<12} {'PER SEC':>9} {'TOTAL':>10}")
                for t in sorted(moving, key=lambda t: -(t["per_second"] or 0))[:top]:
                    rate = "-" if t["per_second"] is None else f"{t['per_second']:.3g}"
                    lines.append(f"  {t['from']:<12} {t['to']:<12} {rate:>9} {t['total']:>10}")
            else:
                lines.append("  none")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
