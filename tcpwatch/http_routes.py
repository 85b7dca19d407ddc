"""What each path of tcpwatch's HTTP endpoint answers: metrics on the telemetry path, the
live state-machine page on / (its script and style under /static/, its data from
/api/v1/state), health on /-/healthy and /-/ready, 401 without credentials when basic auth
is set, 404 elsewhere. No socket here: server.py serves and bounds the connections."""

from __future__ import annotations

from importlib import resources
from urllib.parse import parse_qs

from .exposition import encoder_for

TEXT = "text/plain; charset=utf-8"
# The page and its two files, from the package (tcpwatch/web): no CDN, works offline.
_STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
           "/static/tcpwatch.js": ("tcpwatch.js", "text/javascript; charset=utf-8"),
           "/static/tcpwatch.css": ("tcpwatch.css", "text/css; charset=utf-8")}
# The page runs only its own script and talks only to this daemon; process names in the
# data are set as text, never as markup.
_PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                                            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                                            "form-action 'self'; frame-ancestors 'none'",
                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                 "Cache-Control": "no-cache"}
_API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_UNAUTHORIZED = (401, TEXT, b"unauthorized\n", {"WWW-Authenticate": 'Basic realm="tcpwatch", charset="UTF-8"'})


def _static_files(telemetry_path: str) -> dict:
    files = {}
    for path, (name, content_type) in _STATIC.items():
        body = resources.files("tcpwatch.web").joinpath(name).read_text(encoding="utf-8")
        files[path] = (content_type, body.replace("{{TELEMETRY_PATH}}", telemetry_path).encode())
    return files


class Routes:
    """``holder`` has what may change while serving: "registry" and "state_api" (None while
    starting), "web" (the web config, None without one)."""

    def __init__(self, holder: dict, telemetry_path: str):
        self._holder = holder
        self._telemetry_path = telemetry_path
        self._static = _static_files(telemetry_path)

    def answer(self, target: str, authorization, accept) -> tuple:
        """(status, content type, body, extra headers) for a GET of ``target``."""
        web = self._holder.get("web")
        if web is not None and not web.authorized(authorization):
            return _UNAUTHORIZED
        path, _, query = target.partition("?")
        if path == self._telemetry_path:
            return self._metrics(accept)
        if path in self._static:
            return (200, *self._static[path], _PAGE_HEADERS)
        if path == "/api/v1/state":
            api = self._holder.get("state_api")
            if api is None:
                return 503, "application/json", b'{"error": "starting"}\n', {}
            status, body = api.respond(parse_qs(query))
            return status, "application/json", body, _API_HEADERS
        if path == "/-/healthy":      # liveness: the HTTP loop answers
            return 200, TEXT, b"ok\n", {}
        if path == "/-/ready":        # readiness: collectors set up, scrapes will answer
            ready = self._holder.get("registry") is not None
            return (200, TEXT, b"ready\n", {}) if ready else (503, TEXT, b"starting\n", {})
        return 404, TEXT, b"not found\n", {}

    def _metrics(self, accept) -> tuple:
        registry = self._holder.get("registry")
        if registry is None:
            return 503, TEXT, b"starting\n", {}
        encoder, content_type = encoder_for(accept)
        return 200, content_type, encoder(registry), {}

    def extra_headers(self) -> dict:
        """Headers the web config adds to every response."""
        web = self._holder.get("web")
        return dict(web.headers) if web is not None else {}
