"""The HTTP server before and after its registry is set: what a kubelet's probes see."""

import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry

from tcpwatch import server
from tcpwatch.config import parse_listen_address


def get(address, path):
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_ready_only_once_the_registry_is_set():
    http = server.bind(parse_listen_address("127.0.0.1:0"), None, "/metrics")
    try:
        server.serve_in_background(http)
        address = server.bound_address(http)
        assert get(address, "/-/healthy") == (200, "ok\n")
        assert get(address, "/-/ready") == (503, "starting\n")
        assert get(address, "/metrics")[0] == 503
        server.set_registry(http, CollectorRegistry())
        assert get(address, "/-/ready") == (200, "ready\n")
        assert get(address, "/metrics")[0] == 200
        assert server.responsive(http, within=2.0)
    finally:
        http.shutdown()
        http.server_close()
