"""``--web.config.file``: TLS and basic auth for /metrics, in the format the Prometheus
exporters share (exporter-toolkit's web configuration).

    tls_server_config:
      cert_file: server.crt          # paths are relative to the web config file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional
      client_ca_file: ca.crt                          # needed to verify client certificates
      min_version: TLS12                              # optional: TLS12 (default) or TLS13
      max_version: TLS13                              # optional
    http_server_config:
      headers: {X-Frame-Options: deny}                # optional extra response headers
    basic_auth_users:
      prometheus: $2b$12$...                          # bcrypt hashes only

Everything is checked when loaded: a file that cannot be read, a key tcpwatch does not know,
a certificate or key that does not load, a hash that is not bcrypt; each is one ConfigError.
Options of the format that tcpwatch does not implement (cipher_suites, curve_preferences,
client_allowed_sans, http2, ...) are refused by name rather than ignored.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import ssl
import threading
from dataclasses import dataclass, field
from typing import Optional

import bcrypt

from .config import ConfigError, read_yaml

_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version"}
_TLS_UNSUPPORTED = {"cert", "key", "client_ca", "cipher_suites", "curve_preferences",
                    "prefer_server_cipher_suites", "client_allowed_sans"}
_HTTP_KEYS = {"headers"}
_TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {  # exporter-toolkit's names -> Python's verify modes
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_BCRYPT = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass
class WebConfig:
    tls: Optional[ssl.SSLContext] = None
    users: dict = field(default_factory=dict)       # name -> bcrypt hash (bytes)
    headers: dict = field(default_factory=dict)
    path: str = ""

    def __post_init__(self):
        self._verified = set()        # digests of credentials bcrypt already accepted
        self._lock = threading.Lock()

    def authorized(self, header: Optional[str]) -> bool:
        """Whether an Authorization header passes basic auth (always, when no users are set)."""
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, sep, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if not sep:
            return False
        stored = self.users.get(user)
        digest = hashlib.sha256(b"\0".join([user.encode(), password.encode(), stored or b""])).digest()
        with self._lock:
            if digest in self._verified:
                return True
        # A missing user costs a bcrypt check too, so that timing does not reveal the names.
        ok = bcrypt.checkpw(password.encode(), stored or _DUMMY_HASH) and stored is not None
        if ok:
            with self._lock:
                if len(self._verified) >= 256:   # bounded: a reload or many users start afresh
                    self._verified.clear()
                self._verified.add(digest)
        return ok


_DUMMY_HASH = b"$2b$10$" + b"." * 53


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping")
    return value


def _unknown(keys, known: set, unsupported: set, where: str):
    for key in keys:
        if key in unsupported:
            raise ConfigError(f"{where}: {key} is not supported by tcpwatch")
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}")


def load(path: str) -> WebConfig:
    data = read_yaml(path, "web config file")
    where = f"web config file {path}"
    data = _mapping(data, where)
    _unknown(data, _TOP_KEYS, set(), where)
    base = os.path.dirname(os.path.abspath(path))
    config = WebConfig(path=path)
    if data.get("tls_server_config") is not None:
        config.tls = _tls_context(_mapping(data["tls_server_config"], f"{where}: tls_server_config"),
                                  base, f"{where}: tls_server_config")
    http = _mapping(data.get("http_server_config"), f"{where}: http_server_config")
    _unknown(http, _HTTP_KEYS, {"http2"}, f"{where}: http_server_config")
    for name, value in _mapping(http.get("headers"), f"{where}: http_server_config: headers").items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name) or not isinstance(value, str) \
                or any(c in value for c in "\r\n"):
            raise ConfigError(f"{where}: http_server_config: headers: invalid header {name!r}")
        config.headers[name] = value
    users = _mapping(data.get("basic_auth_users"), f"{where}: basic_auth_users")
    for user, hashed in users.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise ConfigError(f"{where}: basic_auth_users: invalid user name {user!r}")
        if not isinstance(hashed, str) or not _BCRYPT.match(hashed):
            raise ConfigError(f"{where}: basic_auth_users: the password of {user!r} is not a bcrypt hash "
                              "(want $2b$COST$..., e.g. from htpasswd -nBC 12 '')")
        config.users[user] = hashed.encode()
    return config


def _file(tls: dict, key: str, base: str, where: str) -> str:
    value = tls.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} is required")
    path = os.path.join(base, value)
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: {key} {value!r}: no such file")
    return path


def _tls_context(tls: dict, base: str, where: str) -> ssl.SSLContext:
    _unknown(tls, _TLS_KEYS, _TLS_UNSUPPORTED, where)
    cert, key = _file(tls, "cert_file", base, where), _file(tls, "key_file", base, where)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for name, attribute in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if name in tls:
            if tls[name] not in _TLS_VERSIONS:
                raise ConfigError(f"{where}: {name} {tls[name]!r}: want one of {', '.join(_TLS_VERSIONS)}")
            setattr(context, attribute, _TLS_VERSIONS[tls[name]])
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(f"{where}: cannot load cert_file and key_file: {exc.reason or exc}") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot load cert_file and key_file: {exc.strerror or exc}") from None
    mode_name = tls.get("client_auth_type", "NoClientCert")
    if mode_name not in _CLIENT_AUTH:
        raise ConfigError(f"{where}: client_auth_type {mode_name!r}: want one of {', '.join(_CLIENT_AUTH)}")
    if "client_ca_file" in tls:
        ca = _file(tls, "client_ca_file", base, where)
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{where}: cannot load client_ca_file: {getattr(exc, 'reason', None) or exc}") from None
    elif _CLIENT_AUTH[mode_name] != ssl.CERT_NONE:
        raise ConfigError(f"{where}: client_auth_type {mode_name} needs client_ca_file")
    context.verify_mode = _CLIENT_AUTH[mode_name]
    return context
