"""``tcpwatch snapshot --from URL``: read a running daemon's /api/v1/state, as a scraper would.

Credentials and TLS come from ``--from.config FILE``, the part of a Prometheus scrape
config that says how to reach a target (its ``http_config``):

    basic_auth:
      username: viewer
      password_file: /etc/tcpwatch/viewer.password   # or password: ...
    tls_config:
      ca_file: ca.crt                 # paths are relative to this file
      cert_file: client.crt           # with key_file: a client certificate
      key_file: client.key
      insecure_skip_verify: false     # true: no certificate check at all (testing only)

Every failure (a URL that is not http(s)://HOST[:PORT][/PATH], a refused connection, a
name that does not resolve, a certificate that does not verify, wrong credentials, an
answer that is not tcpwatch's) is one ``ConfigError``: one line, exit 2.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Optional

from .config import ConfigError, read_yaml

TIMEOUT_SECONDS = 20
_TOP_KEYS = {"basic_auth", "tls_config"}
_AUTH_KEYS = {"username", "password", "password_file"}
_TLS_KEYS = {"ca_file", "cert_file", "key_file", "insecure_skip_verify"}


@dataclass
class ClientConfig:
    authorization: Optional[str] = None     # the Authorization header's value
    tls: Optional[ssl.SSLContext] = None    # None: the system's CAs


def load_client_config(path: Optional[str]) -> ClientConfig:
    if not path:
        return ClientConfig()
    data = read_yaml(path, "--from.config file") or {}
    where = f"--from.config {path}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping with basic_auth and/or tls_config")
    _known(data, _TOP_KEYS, where)
    base = os.path.dirname(os.path.abspath(path))
    config = ClientConfig()
    auth = data.get("basic_auth")
    if auth is not None:
        _known(auth, _AUTH_KEYS, f"{where}: basic_auth")
        user = auth.get("username")
        if not isinstance(user, str) or not user or ":" in user:
            raise ConfigError(f"{where}: basic_auth.username must be a name without ':'")
        if "password" in auth and "password_file" in auth:
            raise ConfigError(f"{where}: basic_auth takes password or password_file, not both")
        password = auth.get("password", "")
        if "password_file" in auth:
            password = _read(os.path.join(base, str(auth["password_file"])), where).rstrip("\n")
        if not isinstance(password, str):
            raise ConfigError(f"{where}: basic_auth.password must be a string")
        config.authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    tls = data.get("tls_config")
    if tls is not None:
        _known(tls, _TLS_KEYS, f"{where}: tls_config")
        context = ssl.create_default_context()
        try:
            if tls.get("ca_file"):
                context.load_verify_locations(cafile=os.path.join(base, str(tls["ca_file"])))
            if tls.get("cert_file") or tls.get("key_file"):
                if not (tls.get("cert_file") and tls.get("key_file")):
                    raise ConfigError(f"{where}: tls_config needs both cert_file and key_file")
                context.load_cert_chain(os.path.join(base, str(tls["cert_file"])),
                                        os.path.join(base, str(tls["key_file"])))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{where}: tls_config: {getattr(exc, 'strerror', None) or exc}") from None
        if tls.get("insecure_skip_verify") is True:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        config.tls = context
    return config


def _known(mapping, keys, where) -> None:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where} must be a mapping")
    unknown = sorted(set(mapping) - keys)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")


def _read(path: str, where: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None


def state_url(base: str, netns: Optional[str]) -> str:
    """The /api/v1/state URL under ``base`` (a daemon's address, maybe behind a path)."""
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--from {base!r}: want http://HOST:PORT or https://HOST:PORT")
    if parts.username or parts.password:
        raise ConfigError(f"--from {base!r}: put credentials in --from.config, not in the URL")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"--from {base!r}: the port is not a number from 0 to 65535") from None
    path = parts.path.rstrip("/") + "/api/v1/state"
    query = urllib.parse.urlencode({"netns": netns}) if netns else ""
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def fetch_state(base: str, config: ClientConfig, netns: Optional[str] = None) -> dict:
    url = state_url(base, netns)
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "tcpwatch-snapshot"})
    if config.authorization:
        request.add_header("Authorization", config.authorization)
    handlers = [urllib.request.HTTPSHandler(context=config.tls)] if config.tls else []
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            reason = "wrong or missing credentials (401): check basic_auth in --from.config"
        elif exc.code == 404 and netns:
            reason = f"no network namespace {netns!r} there, or not a tcpwatch daemon (404)"
        elif exc.code == 404:
            reason = "no /api/v1/state there (404): not a tcpwatch daemon of this version?"
        else:
            reason = f"HTTP {exc.code} {exc.reason}"
        raise ConfigError(f"--from {base}: {reason}") from None
    except urllib.error.URLError as exc:
        raise ConfigError(f"--from {base}: {_why(exc.reason)}") from None
    except OSError as exc:   # timeouts, resets mid-answer, TLS errors after the handshake
        raise ConfigError(f"--from {base}: {_why(exc)}") from None
    try:
        document = json.loads(body)
    except ValueError:
        raise ConfigError(f"--from {base}: the answer is not JSON: not a tcpwatch daemon?") from None
    if not isinstance(document, dict) or document.get("version") != 1 or "netns" not in document:
        raise ConfigError(f"--from {base}: the answer is not tcpwatch's state document (version 1)")
    return document


def _why(reason) -> str:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({reason.verify_message}): give tls_config.ca_file in --from.config"
    if isinstance(reason, ssl.SSLError):
        return f"TLS failed: {reason.reason or reason}"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused: is tcpwatch running and listening there?"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host name ({reason.strerror})"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {TIMEOUT_SECONDS} s"
    if isinstance(reason, OSError):
        return reason.strerror or str(reason)
    return str(reason)
