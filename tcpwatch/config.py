"""Flags and the YAML config file, merged as defaults < config file < flags.

Every mistake becomes one ``ConfigError`` with a sentence naming what is wrong; the CLI
prints it as a single line and exits 2 before anything starts.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from . import __version__
from .flag_values import (BTF_PATH, DEFAULT_LISTEN_ADDRESS, DEFAULT_PORT, LOG_FORMATS, LOG_LEVELS,  # noqa: F401
                          ConfigError, ListenAddress, attach_mode, ebpf_mode, max_netns, max_sockets,
                          non_negative, parse_listen_address, parse_port_list, parse_port_range, port_number,
                          seconds, state_name, telemetry_path)


@dataclass(frozen=True)
class RunSettings:
    listen_address: ListenAddress
    telemetry_path: str
    web_config_file: object  # path or None
    log_level: str
    log_format: str
    process_enabled: bool
    process_max_series: int
    listen_max_ports: int
    ebpf: str
    bpf_max_sockets: int
    bpf_ports: object        # (lo, hi) or None for every port
    bpf_time_wait: bool
    bpf_socket_iterator: bool
    bpf_attach: str
    bpf_max_netns: int
    bpf_btf: str
    netns_enabled: bool
    netns_max_series: int
    containerd_state: str
    port_enabled: bool
    port_server_max: int
    port_client_max: int
    port_include: frozenset


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(message)


# (flag, dest, type, default, help). The config file takes the same names without dashes.
_RUN_OPTIONS = (
    ("--web.listen-address", "listen_address", str, DEFAULT_LISTEN_ADDRESS,
     "address to serve metrics on: HOST:PORT, [IPV6]:PORT or :PORT for every address"),
    ("--web.telemetry-path", "telemetry_path", telemetry_path, "/metrics", "path of the metrics page"),
    ("--web.config.file", "web_config_file", str, None,
     "YAML file with TLS and basic auth settings (the Prometheus exporters' web configuration)"),
    ("--log.level", "log_level", str, "info", "one of " + ", ".join(LOG_LEVELS)),
    ("--log.format", "log_format", str, "logfmt", "one of " + ", ".join(LOG_FORMATS)),
    ("--collector.process.max-series", "process_max_series", non_negative, 20,
     "process names exported before the rest are summed under process=\"other\""),
    ("--collector.listen.max-ports", "listen_max_ports", non_negative, 64,
     "listening ports exported per network namespace before the rest are summed under port=\"other\""),
    ("--collector.netns.max-series", "netns_max_series", non_negative, 128,
     "network namespaces exported by name (those with the most sockets; host always) before "
     "the rest are summed under netns=\"other\""),
    ("--collector.netns.containerd-state", "containerd_state", str, "/run/containerd",
     "containerd's state directory (k3s: /run/k3s/containerd), read for pod and container names"),
    ("--collector.port.server-max-ports", "port_server_max", non_negative, 10,
     "local ports listened on exported per network namespace in tcpwatch_port_sockets "
     "(those with the most connections) before the rest are summed under port=\"other\""),
    ("--collector.port.client-max-ports", "port_client_max", non_negative, 10,
     "remote ports (upstream services) exported per network namespace in "
     "tcpwatch_port_sockets before the rest are summed under port=\"other\""),
    ("--collector.port.include", "port_include", parse_port_list, frozenset(),
     "ports always exported on both sides, beside the top ones: a comma-separated list, e.g. 5432,6379"),
    ("--ebpf", "ebpf", ebpf_mode, "auto",
     "auto: use eBPF when it loads, else warn and go on without; on: exit 2 if it cannot load; off"),
    ("--collector.bpf.max-sockets", "bpf_max_sockets", max_sockets, 65536,
     "sockets the eBPF program times at once (LRU maps; evictions are counted)"),
    ("--collector.bpf.ports", "bpf_ports", parse_port_range, None,
     "time only connections with a local or remote port in LO-HI (default: every port)"),
    ("--collector.bpf.attach", "bpf_attach", attach_mode, "auto",
     "auto: BTF-typed tracepoints (tp_btf) where the kernel has BTF, else the classic ones; "
     "tp_btf or tracepoint: that mode or exit 2"),
    ("--collector.bpf.max-netns", "bpf_max_netns", max_netns, 128,
     "network namespace slots the eBPF program keeps counters in (one is for the unknown; "
     "the kernel locks about 7 KB per slot per CPU)"),
    ("--collector.bpf.btf", "bpf_btf", str, BTF_PATH,
     "the running kernel's BTF, where struct offsets and tp_btf type ids come from"),
)
_BOOL_OPTIONS = (
    ("--collector.process", "process_enabled", True, "attribute sockets to processes (walks /proc/*/fd)"),
    ("--collector.netns", "netns_enabled", True,
     "read every network namespace on the host (needs CAP_SYS_ADMIN); off: tcpwatch's own only"),
    ("--collector.port", "port_enabled", True,
     "count sockets per service port (tcpwatch_port_sockets), both sides"),
    ("--collector.bpf.time-wait", "bpf_time_wait", True,
     "time TIME_WAIT sockets through the kernel's timer tracepoints"),
    ("--collector.bpf.socket-iterator", "bpf_socket_iterator", True,
     "count sockets with an eBPF iterator over the kernel's TCP tables; off: with inet_diag"),
)
CONFIG_KEYS = {flag[2:]: dest for flag, dest, *_ in _RUN_OPTIONS + _BOOL_OPTIONS}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tcpwatch", description="TCP socket states for Prometheus.")
    parser.add_argument("--version", action="version", version=f"tcpwatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="serve metrics over HTTP")
    run.add_argument("--config", metavar="FILE", help="YAML file whose keys are the flag names without dashes")
    for flag, dest, kind, _default, text in _RUN_OPTIONS:
        run.add_argument(flag, dest=dest, type=kind, default=argparse.SUPPRESS, help=text)
    for flag, dest, _default, text in _BOOL_OPTIONS:
        run.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                         default=argparse.SUPPRESS, help=text)
    trace = commands.add_parser("trace", help="print TCP state changes live, one line each")
    trace.add_argument("--json", action="store_true", help="one JSON object per line")
    trace.add_argument("--port", type=port_number, help="only connections with this local or remote port")
    trace.add_argument("--state", type=state_name, help="only transitions from or to this state")
    trace.add_argument("--duration", type=seconds, help="stop after this many seconds")
    trace.add_argument("--ladder", action="store_true",
                       help="draw each connection, once it is over, as a ladder: a column per end "
                       "on this host, a row per transition, TIME_WAIT to its end")
    trace.add_argument("--relative", action="store_true",
                       help="with --ladder: sequence numbers relative to each side's ISN, as tcpdump prints them")
    trace.add_argument("--ladder.timeout", dest="ladder_timeout", type=seconds, default=90.0,
                       help="draw a connection quiet this many seconds as far as it got (default 90: "
                       "longer than TIME_WAIT's 60 s)")
    trace.add_argument("--attach", type=attach_mode, default="auto",
                       help="how to attach: auto, tp_btf or tracepoint (as --collector.bpf.attach)")
    doctor = commands.add_parser("doctor", help="check what eBPF needs here and how to fix what is missing")
    doctor.add_argument("--collector.bpf.btf", dest="bpf_btf", default=BTF_PATH,
                        help="the kernel's BTF to check (as for tcpwatch run)")
    snap = commands.add_parser("snapshot", help="print one dump for a person")
    snap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    snap.add_argument("--top", type=non_negative, default=10, help="rows in the owners and queues tables")
    for sub in (snap, trace):
        sub.add_argument("--collector.netns.containerd-state", dest="containerd_state", default="/run/containerd",
                         help="containerd's state directory, for pod and container names (as for run)")
    snap.add_argument("--netns", metavar="NAME", help="only this network namespace (its netns label: "
                      "host, NAMESPACE/POD, a container or ip netns name)")
    snap.add_argument("--from", dest="from_url", metavar="URL",
                      help="read a running daemon (http(s)://HOST:PORT) instead of dumping: exact "
                      "CLOSE_WAIT ages, handshake times and transition rates")
    snap.add_argument("--from.config", dest="from_config", metavar="FILE",
                      help="credentials and TLS for --from: basic_auth and tls_config, as in a "
                      "Prometheus scrape config")
    return parser


def read_yaml(path: str, what: str):
    """The YAML document at ``path``; any failure is one ConfigError naming ``what`` file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"{what} {path} is not valid YAML{at}") from None


def load_config_file(path: str) -> dict:
    """The YAML mapping at ``path``, checked for unknown keys and converted like the flags."""
    data = read_yaml(path, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of flag names to values")
    values = {}
    kinds = {dest: kind for _f, dest, kind, *_ in _RUN_OPTIONS}
    for key, value in data.items():
        dest = CONFIG_KEYS.get(key)
        if dest is None:
            raise ConfigError(f"config file {path}: unknown key {key!r}")
        try:
            if dest in kinds:
                if kinds[dest] is str and not isinstance(value, str):
                    raise argparse.ArgumentTypeError(f"{value!r} must be a string")
                if kinds[dest] is parse_port_list and (isinstance(value, bool)
                                                       or not isinstance(value, (str, int, list))):
                    raise argparse.ArgumentTypeError(f"{value!r} must be a list of ports")
                values[dest] = kinds[dest](value)
            elif isinstance(value, bool):
                values[dest] = value
            else:
                raise argparse.ArgumentTypeError(f"{value!r} must be true or false")
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"config file {path}: {key}: {exc}") from None
    return values


def run_settings(args: argparse.Namespace) -> RunSettings:
    """Merge defaults, the config file and the flags given on the command line."""
    merged = {dest: default for _f, dest, _k, default, _h in _RUN_OPTIONS}
    merged.update({dest: default for _f, dest, default, _h in _BOOL_OPTIONS})
    if getattr(args, "config", None):
        merged.update(load_config_file(args.config))
    merged.update({k: v for k, v in vars(args).items() if k in merged})
    if merged["log_level"] not in LOG_LEVELS:
        raise ConfigError(f"invalid log level {merged['log_level']!r}: want one of {', '.join(LOG_LEVELS)}")
    if merged["log_format"] not in LOG_FORMATS:
        raise ConfigError(f"invalid log format {merged['log_format']!r}: want one of {', '.join(LOG_FORMATS)}")
    merged["listen_address"] = parse_listen_address(merged["listen_address"])
    return RunSettings(**merged)
