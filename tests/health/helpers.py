"""Helpers for the health tests: a health endpoint that says whatever a test tells it to,
and shortcuts to sync a config into the database and read health rows."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.harness import free_port


@dataclass
class Answer:
    body: bytes
    status: int = 200
    delay: float = 0.0  # before the headers
    drip: float = 0.0  # between body bytes
    content_length: bool = True
    headers: dict[str, str] = field(default_factory=dict)  # e.g. a redirect's Location


class HealthEndpoint:
    """A real HTTP server on loopback serving one programmable answer at /health.

    Used where a test needs a body no real backend would send: missing fields, wrong
    types, a huge body, a slow answer (and as the certified endpoint of a test backend).
    """

    def __init__(self) -> None:
        self.answer = Answer(b'{"status": "ok", "queue_depth": 0, "capacity": 50}')
        self.authorizations: list[str | None] = []  # the Authorization header of every GET
        self.port = free_port()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                a = endpoint.answer
                endpoint.authorizations.append(self.headers.get("Authorization"))
                time.sleep(a.delay)
                try:
                    self.send_response(a.status)
                    for name, value in a.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    if a.content_length:
                        self.send_header("Content-Length", str(len(a.body)))
                    self.end_headers()
                    if a.drip:
                        for i in range(len(a.body)):
                            self.wfile.write(a.body[i:i + 1])
                            self.wfile.flush()
                            time.sleep(a.drip)
                    else:
                        self.wfile.write(a.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the prober gave up, as it should

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def serve(self, body: Any = None, *, raw: bytes | None = None, **kw: Any) -> None:
        self.answer = Answer(raw if raw is not None else json.dumps(body).encode(), **kw)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def config_apply(config: dict[str, Any]):
    """Validate and sync a config into the test database, as runproxy/loadconfig do."""
    from pools.config import config_parse
    from pools.services import config_sync

    parsed = config_parse(data=config)
    config_sync(config=parsed)
    return parsed


def health_row(backend_id: str):
    from health.models import BackendHealth

    return BackendHealth.objects.filter(backend_id=backend_id).first()


class LogCapture(logging.Handler):
    """The synthiq loggers do not propagate to the root logger, so pytest's caplog
    does not see them; this handler is attached to one directly."""

    def __init__(self, name: str = "synthiq.health"):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]

    def __enter__(self) -> LogCapture:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
