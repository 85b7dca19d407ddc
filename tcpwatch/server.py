"""The HTTP endpoint (what each path answers is http_routes.py's), with optional TLS and
basic auth (``webconfig``) on every path.

tcpwatch runs on every server, so its HTTP server must not become the problem it watches.
Hostile or careless clients are bounded three ways:
- at most ``MAX_CONNECTIONS`` connections are served at once (one thread each); when all are
  taken, a new connection replaces the oldest one that has not sent its request yet, or is
  closed at once; both are counted;
- every socket operation times out after ``REQUEST_TIMEOUT_SECONDS``;
- a reaper closes any connection older than ``CONNECTION_DEADLINE_SECONDS``, so a client that
  drips one byte at a time (slowloris) cannot hold a thread forever.
The TLS handshake runs in the connection's thread, never in the accept loop. Every connection
is closed by us when its thread ends, so none is left in CLOSE_WAIT.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .config import ListenAddress
from .http_routes import Routes

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 10
CONNECTION_DEADLINE_SECONDS = 30
MAX_CONNECTIONS = 64

DROP_REASONS = ("connection_limit", "evicted_idle", "deadline", "timeout", "tls_handshake",
                "client_disconnect", "error")


class ListenError(Exception):
    """The listen address cannot be bound."""


class HttpStats:
    """Counters the server keeps about itself; read by the collector at scrape time."""

    def __init__(self):
        self.lock = threading.Lock()
        self.responses = Counter()                       # status code -> count
        self.dropped = Counter({r: 0 for r in DROP_REASONS})
        self.open_connections = 0

    def count(self, counter: str, key) -> None:
        with self.lock:
            getattr(self, counter)[key] += 1


class _Handler(BaseHTTPRequestHandler):
    """One connection's request; ``routes`` and ``stats`` are set by ``_handler_class``."""

    routes: Routes = None
    stats: HttpStats = None
    timeout = REQUEST_TIMEOUT_SECONDS
    server_version = "tcpwatch"
    sys_version = ""

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def parse_request(self):
        parsed = super().parse_request()               # reads the headers too
        self.server.request_received(self.request)   # no longer idle: not evictable
        return parsed

    def do_GET(self):
        status, content_type, body, headers = self.routes.answer(
            self.path, self.headers.get("Authorization"), self.headers.get("Accept"))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_response(self, code, message=None):
        self.status = code                 # every answer, the errors http.server sends too
        super().send_response(code, message)

    def handle(self):
        self.status = None
        super().handle()                   # raises when the client went away
        if self.status is not None:        # counted once written (one request per connection)
            self.stats.count("responses", self.status)

    def end_headers(self):
        for name, value in self.routes.extra_headers().items():
            self.send_header(name, value)
        super().end_headers()

    def log_error(self, fmt, *args):
        if fmt.startswith("Request timed out"):   # http.server swallows this timeout itself
            self.stats.count("dropped", "timeout")
        super().log_error(fmt, *args)

    def log_message(self, fmt, *args):
        log.debug("http request", extra={"client": self.client_address[0], "request": fmt % args})


def _handler_class(holder: dict, telemetry_path: str, stats: HttpStats):
    return type("Handler", (_Handler,), {"routes": Routes(holder, telemetry_path), "stats": stats})


@dataclass
class _Connection:
    request: socket.socket
    started: float            # time.monotonic() when accepted
    idle: bool = True         # no complete request yet: evictable
    cut: bool = False         # closed by us (evicted or past the deadline), already counted


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    last_loop = 0.0   # time.monotonic() of the accept loop's last turn: the watchdog's proof

    def __init__(self, address, handler, holder: dict, stats: HttpStats):
        self.registry_holder = holder
        self.stats = stats
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.active = {}      # id(request) -> _Connection, while its thread runs
        super().__init__(address, handler)

    def service_actions(self):
        self.last_loop = time.monotonic()

    def get_request(self):
        conn, address = super().get_request()
        web = self.registry_holder.get("web")
        if web is not None and web.tls is not None:
            # No I/O here: the handshake happens in the connection's own thread (setup()).
            conn = web.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, address

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False) and not self._evict_idle():
            self.stats.count("dropped", "connection_limit")
            self.shutdown_request(request)
            return
        with self.stats.lock:
            self.stats.open_connections += 1
        self.active[id(request)] = _Connection(request, time.monotonic())
        try:
            super().process_request(request, client_address)
        except Exception:
            self._done(request)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def _cut(self, conn: _Connection, reason: str) -> None:
        """Close a connection from outside its thread; the thread wakes, fails and ends."""
        conn.cut = True
        self.stats.count("dropped", reason)
        try:
            conn.request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _evict_idle(self) -> bool:
        """All slots taken: close the oldest connection that has not sent its request yet
        (a slowloris client), and take its slot. A scraper sends its request at once, so it
        is never the one evicted; only clients that idle are."""
        idle = [c for c in list(self.active.values()) if c.idle and not c.cut]
        if not idle:
            return False
        self._cut(min(idle, key=lambda c: c.started), "evicted_idle")
        return self.slots.acquire(timeout=2.0)   # its thread ends at once and frees the slot

    def request_received(self, request):
        conn = self.active.get(id(request))
        if conn is not None:
            conn.idle = False

    def _done(self, request):
        if self.active.pop(id(request), None) is not None:
            with self.stats.lock:
                self.stats.open_connections -= 1
            self.slots.release()

    def handle_error(self, request, client_address):
        conn = self.active.get(id(request))
        if conn is not None and conn.cut:
            return                                  # counted when cut
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLError):
            reason = "tls_handshake"
        elif isinstance(error, (TimeoutError, socket.timeout)):
            reason = "timeout"
        elif isinstance(error, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
            reason = "client_disconnect"
        else:
            reason = "error"
            log.error("http connection failed", extra={"client": client_address[0], "error": repr(error)})
        self.stats.count("dropped", reason)
        log.debug("http connection dropped", extra={"client": client_address[0], "reason": reason})

    def reap(self):
        """Close connections older than the deadline; the reaper thread calls this every second."""
        now = time.monotonic()
        for conn in list(self.active.values()):
            if now - conn.started > CONNECTION_DEADLINE_SECONDS and not conn.cut:
                self._cut(conn, "deadline")


class _Server6(_Server):
    address_family = socket.AF_INET6

    def server_bind(self):
        # ":PORT" means every address: one dual-stack socket serves IPv4 and IPv6.
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def bind(address: ListenAddress, registry, telemetry_path: str, web=None) -> ThreadingHTTPServer:
    """Bind and listen now, so that a bad address fails before anything else starts.

    ``registry`` may be given later with ``set_registry`` (after slow set-up such as loading
    eBPF); until then /metrics answers 503. ``web`` is a ``webconfig.WebConfig`` or None.
    """
    holder = {"registry": registry, "web": web}
    stats = HttpStats()
    return _bind(address, _handler_class(holder, telemetry_path, stats), holder, stats)


def set_registry(server, registry, state_api=None) -> None:
    """Serve /metrics from ``registry`` and /api/v1/state from ``state_api`` from now on."""
    server.registry_holder["state_api"] = state_api
    server.registry_holder["registry"] = registry


def set_web_config(server, web) -> None:
    """Swap TLS and auth settings (SIGHUP); connections already open keep the old ones."""
    server.registry_holder["web"] = web


def _bind(address: ListenAddress, handler, holder: dict, stats: HttpStats):
    host = address.host
    try:
        if host == "":
            try:
                return _Server6(("::", address.port), handler, holder, stats)
            except OSError:
                return _Server(("0.0.0.0", address.port), handler, holder, stats)
        infos = socket.getaddrinfo(host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _t, _p, _c, sockaddr = infos[0]
        server_class = _Server6 if family == socket.AF_INET6 else _Server
        return server_class(sockaddr[:2], handler, holder, stats)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {address}: {exc.strerror}") from None
    except OSError as exc:
        raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from None


def serve_in_background(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="http", daemon=True)
    thread.start()

    def reaper():
        while thread.is_alive():
            time.sleep(1.0)
            server.reap()

    threading.Thread(target=reaper, name="http-reaper", daemon=True).start()
    return thread


def responsive(server, within: float) -> bool:
    """The accept loop turned within the last ``within`` seconds (it turns every 0.2 s)."""
    return time.monotonic() - server.last_loop < within


def bound_address(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
