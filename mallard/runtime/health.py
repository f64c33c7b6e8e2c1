"""A tiny HTTP health endpoint per service: GET /healthz -> 200 when ready, else 503;
GET /metrics -> the service's Prometheus metrics (text format, ``mallard/runtime/metrics.py``).

A service's other routes (the applier's /tables and /query) answer only requests that
carry the ``X-Mallard-Client`` header: a web page the user opens cannot send a custom
header to another origin without a CORS preflight, which is never granted here (no
OPTIONS handler), so no page can make the user's browser call them. Callers build
their requests with ``client_request``. The same routes refuse a ``Host`` that is a DNS
name other than ``localhost`` (or one listed in ``MALLARD_HTTP_ALLOWED_HOSTS``): a page
that rebinds its own domain to 127.0.0.1 is same-origin and could send the header, but
its requests still name its domain.

``python -m mallard.runtime.health URL`` exits 0 when the endpoint answers 200: the
docker-compose health checks use it (the slim image has no curl).
"""
from __future__ import annotations

import ipaddress
import json
import os
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


CLIENT_HEADER = "X-Mallard-Client"


def host_allowed(host_header: str | None, allowed: frozenset[str]) -> bool:
    """Whether a request's Host names this machine by address or by a name we trust
    (never the DNS name of a page that rebinds it to us)."""
    if not host_header:
        return False
    host = urllib.parse.urlsplit(f"//{host_header}").hostname or ""
    if host == "localhost" or host in allowed:
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def allowed_hosts() -> frozenset[str]:
    """Extra host names the client routes answer (e.g. a compose service name)."""
    return frozenset(h.strip().lower() for h in os.environ.get("MALLARD_HTTP_ALLOWED_HOSTS", "").split(",") if h.strip())


def client_request(url: str, client: str = "mallard") -> urllib.request.Request:
    """A GET of a service's route, with the header that says it comes from a mallard client."""
    return urllib.request.Request(url, headers={CLIENT_HEADER: client})


class HealthServer:
    """Serves ``state()`` (a dict with at least ``ready: bool``) as JSON on /healthz, and
    any extra ``routes`` (to mallard's clients only): path -> handler(query parameters) ->
    (status, JSON body), and
    ``metrics()`` (Prometheus text) on /metrics."""

    def __init__(self, host: str, port: int, state: Callable[[], dict[str, Any]],
                 routes: dict[str, Callable[[dict[str, str]], tuple[int, Any]]] | None = None,
                 metrics: Callable[[], bytes] | None = None):
        self._state = state
        outer = self
        extra = routes or {}
        trusted_hosts = allowed_hosts()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                url = urllib.parse.urlsplit(self.path)
                path = url.path.rstrip("/")
                if path in extra:
                    if not self.headers.get(CLIENT_HEADER):
                        code, body = 403, {"error": f"refused: {path} answers mallard's clients only (send the "
                                                    f"{CLIENT_HEADER} header; a browser cannot, cross-site)"}
                    elif not host_allowed(self.headers.get("Host"), trusted_hosts):
                        code, body = 403, {"error": f"refused: Host {self.headers.get('Host')!r} is not this machine "
                                                    "(an IP address, localhost, or MALLARD_HTTP_ALLOWED_HOSTS)"}
                    else:
                        params = dict(urllib.parse.parse_qsl(url.query))
                        code, body = extra[path](params)
                elif path == "/metrics" and metrics is not None:
                    self._send(200, metrics(), "text/plain; version=0.0.4; charset=utf-8")
                    return
                elif path in ("/healthz", ""):
                    body = outer._state()
                    code = 200 if body.get("ready") else 503
                else:
                    self.send_error(404)
                    return
                self._send(code, json.dumps(body, default=str).encode(), "application/json")

            def _send(self, code: int, data: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a probe's timeout): nothing to tell anyone

            def log_message(self, *args: Any) -> None:  # health probes are not operator news
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def probe(url: str, timeout: float = 2.0) -> tuple[bool, dict[str, Any] | None]:
    """(ready, body) of a health endpoint; (False, None) when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return False, json.loads(e.read() or b"{}")
        except ValueError:
            return False, None
    except (OSError, ValueError):
        return False, None


if __name__ == "__main__":
    ok, _ = probe(sys.argv[1])
    sys.exit(0 if ok else 1)
