"""A real HTTP receiver of webhooks on 127.0.0.1 for the tests: records each request, answers as told."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)

    def verify(self, secret: str) -> dict[str, Any]:
        """The event, if the signature verifies with `secret` (standardwebhooks raises otherwise)."""
        return Webhook(secret).verify(self.body, self.headers)


@dataclass
class Behaviour:
    status: int = 204
    body: bytes = b""
    location: str | None = None
    # webhook-ids answered with 500 (the receiver choking on them).
    fail_ids: set[str] = field(default_factory=set)
    # Set: hold each request until released (a receiver that never answers).
    hang: threading.Event | None = None


class Receiver:
    """ThreadingHTTPServer on a port of its own; `start` again on the same port after `stop`."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.requests: list[Received] = []
        self.behaviour = Behaviour()
        self._server: ThreadingHTTPServer | None = None
        self._changed = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                received = Received(self.path, {k: v for k, v in self.headers.items()}, body)
                with receiver._changed:
                    receiver.requests.append(received)
                    receiver._changed.notify_all()
                behaviour = receiver.behaviour
                if behaviour.hang is not None:
                    behaviour.hang.wait(30)
                    return
                status = 500 if received.headers.get("webhook-id") in behaviour.fail_ids else behaviour.status
                self.send_response(status)
                if behaviour.location:
                    self.send_header("Location", behaviour.location)
                self.send_header("Content-Length", str(len(behaviour.body)))
                self.end_headers()
                self.wfile.write(behaviour.body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[dict[str, Any]]:
        return [request.event for request in self.requests]

    def wait_for(self, count: int, timeout: float = 15) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} requests, got {len(self.requests)}")
                self._changed.wait(left)
            return self.requests[:count]
