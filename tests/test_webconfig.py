"""--web.config.file: TLS, client certificates and basic auth against a real daemon, bad files
refused before anything listens, and SIGHUP reloads."""

import base64
import http.client
import signal
import socket
import ssl
import time

import pytest

from helpers import hashed, parse_metrics, value, wait_for, write_config
from peers import assert_rejected, run

PASSWORD = "s3cret pass"


def get(port, path="/metrics", user=None, password=None, tls=None):
    """(status, headers, body) over HTTPS when ``tls`` is an SSLContext, else plain HTTP."""
    if tls is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls)
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        conn.request("GET", path, headers=headers)
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read().decode()
    finally:
        conn.close()


def client_context(pki, with_cert=False):
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if with_cert:
        context.load_cert_chain(pki / "client.crt", pki / "client.key")
    return context


def port_of(daemon):
    return int(daemon.address.rsplit(":", 1)[1])


def test_tls_and_basic_auth_together(pki, daemons):
    config = write_config(pki, f"""
tls_server_config:
  cert_file: server.crt
  key_file: server.key
http_server_config:
  headers:
    X-Content-Type-Options: nosniff
basic_auth_users:
  prometheus: {hashed(PASSWORD)}
""")
    daemon = daemons("--ebpf", "off", "--web.config.file", str(config))
    port, tls = port_of(daemon), client_context(pki)
    status, headers, body = get(port, user="prometheus", password=PASSWORD, tls=tls)
    assert status == 200 and "tcpwatch_sockets" in body and headers["X-Content-Type-Options"] == "nosniff"
    status, headers, _ = get(port, user="prometheus", password="wrong", tls=tls)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
    assert get(port, user="nobody", password=PASSWORD, tls=tls)[0] == 401
    assert get(port, tls=tls)[0] == 401
    # Plain HTTP against the TLS listener: the connection is closed, no HTTP answer, no hang.
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine)):
        get(port)
    status, _, body = get(port, user="prometheus", password=PASSWORD, tls=tls)
    samples = parse_metrics(body)
    assert value(samples, "tcpwatch_http_dropped_connections_total", reason="tls_handshake") >= 1
    assert value(samples, "tcpwatch_http_responses_total", code="401") == 3


def test_client_certificates_required_and_verified(pki, daemons):
    config = write_config(pki, """
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  min_version: TLS13
""")
    daemon = daemons("--ebpf", "off", "--web.config.file", str(config))
    port = port_of(daemon)
    assert get(port, tls=client_context(pki, with_cert=True))[0] == 200
    with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        get(port, tls=client_context(pki))


def test_sighup_reloads_users_and_keeps_the_old_config_when_the_new_one_is_bad(pki, daemons):
    config = write_config(pki, f"basic_auth_users:\n  prometheus: {hashed('old')}\n")
    daemon = daemons("--ebpf", "off", "--web.config.file", str(config))
    port = port_of(daemon)
    assert get(port, user="prometheus", password="old")[0] == 200
    config.write_text(f"basic_auth_users:\n  prometheus: {hashed('new')}\n")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: get(port, user="prometheus", password="new")[0] == 200, what="the reloaded password")
    assert get(port, user="prometheus", password="old")[0] == 401
    config.write_text("basic_auth_users:\n  prometheus: plaintext\n")
    daemon.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert daemon.proc.poll() is None
    assert get(port, user="prometheus", password="new")[0] == 200


@pytest.mark.parametrize("body,words", [
    ("tls_server_config: [unclosed\n", "not valid YAML"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n", "missing.crt"),
    ("tls_server_config:\n  cert_file: server.crt\n", "key_file is required"),
    ("tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n", "cannot load"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cipher_suites: [x]\n",
     "not supported"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS10\n", "TLS10"),
    ("basic_auth_users:\n  prometheus: hunter2\n", "not a bcrypt hash"),
    ("basic_auth_users:\n  prometheus: $1$abc$def\n", "not a bcrypt hash"),
    ("basic_auth: {}\n", "unknown key 'basic_auth'"),
    ("- a list\n", "must be a mapping"),
])
def test_bad_web_config_is_one_line_exit_2_before_listening(pki, body, words):
    config = write_config(pki, body)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run("run", "--ebpf", "off", "--web.listen-address", f"127.0.0.1:{port}", "--web.config.file", str(config))
    assert_rejected(result, words)
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))    # nothing was left listening on it


def test_unreadable_web_config(tmp_path):
    assert_rejected(run("run", "--ebpf", "off", "--web.config.file", str(tmp_path / "nope.yml")), "nope.yml")
