"""The HTTP endpoint: metrics on the telemetry path, a landing page on /, 404 elsewhere.

A threading server whose connections time out, so a client that connects and sends nothing
cannot hold a thread or a socket for long.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import choose_encoder

from .config import ListenAddress

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 10


class ListenError(Exception):
    """The listen address cannot be bound."""


def _handler_class(holder: dict, telemetry_path: str):
    landing = (
        "<html><head><title>tcpwatch</title></head><body><h1>tcpwatch</h1>"
        f'<p><a href="{telemetry_path}">Metrics</a></p></body></html>'
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_SECONDS
        server_version = "tcpwatch"
        sys_version = ""

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == telemetry_path:
                registry = holder.get("registry")
                if registry is None:
                    self._reply(503, "text/plain; charset=utf-8", b"starting\n")
                    return
                encoder, content_type = choose_encoder(self.headers.get("Accept"))
                self._reply(200, content_type, encoder(registry))
            elif path == "/":
                self._reply(200, "text/html; charset=utf-8", landing)
            elif path == "/-/healthy":      # liveness: the HTTP loop answers
                self._reply(200, "text/plain; charset=utf-8", b"ok\n")
            elif path == "/-/ready":        # readiness: collectors set up, scrapes will answer
                ready = holder.get("registry") is not None
                self._reply(200 if ready else 503, "text/plain; charset=utf-8",
                            b"ready\n" if ready else b"starting\n")
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found\n")

        def _reply(self, status, content_type, body):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):
            log.debug("http request", extra={"client": self.client_address[0], "request": fmt % args})

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    last_loop = 0.0   # time.monotonic() of the accept loop's last turn: the watchdog's proof

    def service_actions(self):
        self.last_loop = time.monotonic()


class _Server6(_Server):
    address_family = socket.AF_INET6

    def server_bind(self):
        # ":PORT" means every address: one dual-stack socket serves IPv4 and IPv6.
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def bind(address: ListenAddress, registry, telemetry_path: str) -> ThreadingHTTPServer:
    """Bind and listen now, so that a bad address fails before anything else starts.

    ``registry`` may be given later with ``set_registry`` (after slow set-up such as loading
    eBPF); until then the server is not serving anyway.
    """
    holder = {"registry": registry}
    handler = _handler_class(holder, telemetry_path)
    server = _bind(address, handler)
    server.registry_holder = holder
    return server


def set_registry(server, registry) -> None:
    server.registry_holder["registry"] = registry


def _bind(address: ListenAddress, handler):
    host = address.host
    try:
        if host == "":
            try:
                return _Server6(("::", address.port), handler)
            except OSError:
                return _Server(("0.0.0.0", address.port), handler)
        infos = socket.getaddrinfo(host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _t, _p, _c, sockaddr = infos[0]
        server_class = _Server6 if family == socket.AF_INET6 else _Server
        return server_class(sockaddr[:2], handler)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {address}: {exc.strerror}") from None
    except OSError as exc:
        raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from None


def serve_in_background(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="http", daemon=True)
    thread.start()
    return thread


def responsive(server, within: float) -> bool:
    """The accept loop turned within the last ``within`` seconds (it turns every 0.2 s)."""
    return time.monotonic() - server.last_loop < within


def bound_address(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
