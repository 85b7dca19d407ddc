"""Command line: ``tcpwatch run`` serves metrics, ``tcpwatch snapshot`` prints one dump.

Bad input ends here as one line on stderr and exit code 2, before anything starts.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time

from . import __version__
from .config import ConfigError, build_parser, run_settings

log = logging.getLogger("tcpwatch")

EXIT_BAD_INPUT = 2


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "run":
            return run(run_settings(args))
        if args.command == "trace":
            from .trace import trace

            return trace(args)
        if args.command == "doctor":
            from .doctor import doctor

            return doctor(args.bpf_btf)
        return snapshot(args)
    except ConfigError as exc:
        print(f"tcpwatch: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def run(settings) -> int:
    # First, before the slow imports: a SIGTERM during start-up then ends us cleanly, exit 0.
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)   # until there is something to reload
    from . import logs, server, systemd, webconfig

    logs.configure(settings.log_level, settings.log_format)
    _name_process("tcpwatch")

    web = webconfig.load(settings.web_config_file) if settings.web_config_file else None
    try:
        http = server.bind(settings.listen_address, None, settings.telemetry_path, web)
    except server.ListenError as exc:
        raise ConfigError(str(exc)) from None
    signal.signal(signal.SIGHUP, lambda *_: _reload_web_config(settings, http))
    program = None
    try:
        # Serve from now on: /-/healthy answers, /metrics and /-/ready say 503 until the
        # collectors are set up (compiling the eBPF program takes seconds).
        server.serve_in_background(http)
        program = _load_ebpf(settings)
        server.set_registry(http, *_registry(settings, program, http.stats))
        address = server.bound_address(http)
        log.info("listening", extra={"address": address, "path": settings.telemetry_path,
                                     "version": __version__, "ebpf": program is not None,
                                     "owners": "ebpf_iterator" if program and program.has_owner_iterator else "proc",
                                     "sockets": "ebpf_iterator" if program and program.socket_iterator else "inet_diag",
                                     "ebpf_time_wait": bool(program and program.time_wait_tracked),
                                     "ebpf_attach": program.attach.mode if program else "none"})
        notifier = systemd.Notifier()
        notifier.ready(f"serving on {address}, ebpf {'on' if program else 'off'}")
        _serve_until(stop, http, notifier)
        log.info("stopping")
        notifier.stopping()
    finally:
        http.shutdown()       # the accept loop runs from the top of the try
        http.server_close()
        if program is not None:
            program.close()   # bcc's atexit cleanup does not run when a signal ends us
    return 0


def _serve_until(stop, http, notifier) -> None:
    """Wait for SIGTERM or SIGINT. The watchdog is fed only while the HTTP accept loop keeps
    turning: a wedged server stops the pings, and systemd restarts us."""
    from . import server

    next_ping = 0.0
    while not stop.wait(0.2):
        if notifier.watchdog_interval and time.monotonic() >= next_ping:
            if server.responsive(http, within=max(1.0, notifier.watchdog_interval)):
                notifier.watchdog()
            next_ping = time.monotonic() + notifier.watchdog_interval


def _reload_web_config(settings, http) -> None:
    """SIGHUP: load --web.config.file again (certificate rotation, users); keep the old
    settings when the new file is bad. Other settings need a restart."""
    from . import server, webconfig

    if not settings.web_config_file:
        log.info("SIGHUP: nothing to reload (no --web.config.file); other settings need a restart")
        return
    try:
        server.set_web_config(http, webconfig.load(settings.web_config_file))
        log.info("web config reloaded", extra={"file": settings.web_config_file})
    except ConfigError as exc:
        log.error("web config not reloaded, keeping the previous one", extra={"error": str(exc)})


def _load_ebpf(settings):
    """The loaded program, or None; with --ebpf on a failure is bad input (exit 2)."""
    if settings.ebpf == "off":
        return None
    from .sources import bpf

    try:
        program = bpf.BpfProgram(settings.bpf_max_sockets, settings.bpf_ports, settings.bpf_time_wait,
                                 attach=settings.bpf_attach, max_netns=settings.bpf_max_netns,
                                 btf_path=settings.bpf_btf, owner_iterator=settings.process_enabled,
                                 socket_iterator=settings.bpf_socket_iterator)
        if not settings.bpf_socket_iterator:
            log.warning("sockets are counted with inet_diag, not the eBPF iterator "
                        "(--no-collector.bpf.socket-iterator)")
        return program
    except bpf.AttachModeUnavailable as exc:   # an explicit mode is a promise, even with --ebpf auto
        raise ConfigError(str(exc)) from None
    except bpf.BpfUnavailable as exc:
        if settings.ebpf == "on":
            raise ConfigError(f"--ebpf on: {exc}") from None
        log.warning("ebpf disabled, serving inet_diag metrics only", extra={"reason": str(exc)})
        return None


def _registry(settings, program, http_stats):
    """The registry of /metrics (the Exporter, the process's own metrics, tcpwatch's own
    server, in that order) and the state API."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.process_collector import ProcessCollector

    from .collectors import CollectorSettings
    from .collectors.http_server import ServerCollector
    from .exporter import Exporter
    from .model import DumpWants
    from .namespace_dumps import NamespaceDumper
    from .snapshot import Sources
    from .sources import processes, runtime
    from .state_api import StateApi

    dumper = NamespaceDumper(DumpWants(owners=settings.process_enabled, ports=settings.port_enabled),
                             all_namespaces=settings.netns_enabled,
                             runtimes=runtime.Runtimes(containerd_state=settings.containerd_state),
                             socket_iterator=program.socket_iterator if program else None,
                             fallback_reason=_counting_fallback(settings, program))
    sources = Sources(dumper, _owner_walk(program, processes.walk_owners) if settings.process_enabled else None,
                      bpf_read=program.read if program else None,
                      bpf_release=program.release_stale_netns if program else None)
    exporter = Exporter(CollectorSettings.from_run_settings(settings), sources)
    api = StateApi(exporter.collect)
    exporter.observers.append(api.observe)
    registry = CollectorRegistry()
    registry.register(exporter)
    registry.register(ProcessCollector(registry=None))
    registry.register(ServerCollector(http_stats))
    return registry, api


def _counting_fallback(settings, program) -> str:
    """Why sockets are counted with inet_diag, in one word; "" when the iterator counts them."""
    if program is None:
        return "ebpf_off"
    if not settings.bpf_socket_iterator:
        return "flag"
    return "" if program.socket_iterator is not None else "unavailable"


def _owner_walk(program, proc_walk):
    """Who holds each socket: the eBPF task_file iterator when it is attached (one read per
    scrape), else the /proc walk (one readlink per fd). A failed read falls back to the walk
    for that scrape."""
    if program is None or not program.has_owner_iterator:
        return proc_walk

    def walk(wanted_inodes):
        try:
            return program.socket_owners(wanted_inodes)
        except OSError as exc:
            log.warning("socket-owner iterator failed, walking /proc this scrape", extra={"error": str(exc)})
            return proc_walk(wanted_inodes)
    return walk


def _name_process(name: str) -> None:
    """Set our comm, so that our own sockets show as process="tcpwatch" under any launcher."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def snapshot(args) -> int:
    if args.from_url is not None or args.from_config is not None:
        return snapshot_from(args)
    from . import report
    from .namespace_dumps import NamespaceDumper
    from .sources import processes, runtime

    dumper = NamespaceDumper(runtimes=runtime.Runtimes(containerd_state=args.containerd_state))
    try:
        read = dumper.dump_all(dumper.discover())
        dumps = read.dumps
        if args.netns is not None:
            dumps = [d for d in dumps if d.info.name == args.netns]
            if not dumps:
                names = ", ".join(sorted(d.info.name for d in read.dumps))
                raise ConfigError(f"--netns {args.netns!r}: no such network namespace readable here "
                                  f"(found: {names})")
        owners = processes.walk_owners(set().union(*(d.snap.inode_states.keys() for d in dumps))).owners
        result = report.build_all(dumps, owners, args.top, unreadable=read.unreadable)
    finally:
        dumper.close()
    print(json.dumps(result) if args.json else report.render_all(result))
    return 0


def snapshot_from(args) -> int:
    """``snapshot --from URL``: a running daemon's view, through its /api/v1/state."""
    from . import remote, report

    if args.from_url is None:
        raise ConfigError("--from.config needs --from URL")
    config = remote.load_client_config(args.from_config)
    document = remote.fetch_state(args.from_url, config, args.netns)
    print(json.dumps(document) if args.json else report.render_state(document, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
