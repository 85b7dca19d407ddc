"""What each flag's value may be: one converter per kind of value, each refusing bad input
with a sentence (argparse.ArgumentTypeError, or ConfigError), never a traceback."""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass

from .sources import ebpf_plan

DEFAULT_PORT = 9787
DEFAULT_LISTEN_ADDRESS = f":{DEFAULT_PORT}"
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("logfmt", "json")
EBPF_MODES = ("auto", "on", "off")
BTF_PATH = "/sys/kernel/btf/vmlinux"


class ConfigError(Exception):
    """Bad input from flags or the config file."""


@dataclass(frozen=True)
class ListenAddress:
    host: str   # "" means every address
    port: int

    def __str__(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts "²" and other digits int() refuses."""
    return text.isascii() and text.isdigit()


def parse_listen_address(text: str) -> ListenAddress:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (every address), as Prometheus exporters take it."""
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(f"invalid --web.listen-address {text!r}: want HOST:PORT, [IPV6]:PORT or :PORT")
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"invalid --web.listen-address {text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ConfigError(f"invalid --web.listen-address {text!r}: put an IPv6 address in brackets, [::1]:PORT")
    if not _digits(port_text) or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"invalid --web.listen-address {text!r}: port must be a number from 0 to 65535")
    return ListenAddress(host, int(port_text))


def non_negative(text) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if isinstance(text, bool) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def ebpf_mode(text) -> str:
    if isinstance(text, bool):   # YAML 1.1 reads a bare on/off as a boolean
        text = "on" if text else "off"
    if text not in EBPF_MODES:
        raise argparse.ArgumentTypeError(f"{text!r} must be one of {', '.join(EBPF_MODES)}")
    return text


def attach_mode(text) -> str:
    try:
        ebpf_plan.check_attach(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def within(limits):
    """A converter: a whole number within ``limits``, checked by ebpf_plan (the one place)."""
    def convert(text) -> int:
        try:
            ebpf_plan.check_range(non_negative(text), limits)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return int(text)
    return convert


max_netns = within(ebpf_plan.MAX_NETNS_RANGE)
max_sockets = within(ebpf_plan.MAX_SOCKETS_RANGE)


def parse_port_range(text):
    """``LO-HI`` (or one port) as a (lo, hi) pair; "" or None means every port."""
    if text in (None, ""):
        return None
    if not isinstance(text, str):
        text = str(text)
    lo, _, hi = text.partition("-")
    hi = hi or lo
    if not (_digits(lo) and _digits(hi)) or not 0 < int(lo) <= int(hi) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} must be a port range LO-HI within 1-65535")
    return (int(lo), int(hi))


def parse_port_list(text) -> frozenset:
    """``5432,6379`` (or a YAML list of ports) as a set of ports; "" is none."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    ports = set()
    for item in items:
        item = str(item).strip()
        if item == "":
            continue
        if not _digits(item) or not 0 < int(item) <= 65535:
            raise argparse.ArgumentTypeError(f"{item!r} is not a port (1-65535); want a list like 5432,6379")
        ports.add(int(item))
    return frozenset(ports)


def telemetry_path(text) -> str:
    if not isinstance(text, str) or not text.startswith("/") or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} must be a path starting with / and without spaces")
    return text


def port_number(text) -> int:
    if not _digits(str(text)) or not 0 < int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def state_name(text) -> str:
    from .states import BY_NAME

    name = str(text).lower().replace("-", "_")
    if name not in BY_NAME:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP state (e.g. close_wait, syn_sent)")
    return name


def seconds(text) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value
