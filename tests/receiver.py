"""A small HTTP receiver standing in for a hospital endpoint or the wallet: it records every
request it gets (method, path, headers, body) and answers with a status the test sets."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.conftest import free_port


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int
    raw: bytes = b""
    """The body's bytes as sent."""

    @property
    def key(self) -> str:
        return self.headers.get("idempotency-key", "")


class Receiver:
    """An HTTP endpoint that records every POST and PUT and answers ``status`` (200 by default).

    It dedups nothing: tests assert exactly-once on :meth:`accepted_keys`. With
    ``hold_after = n`` the requests after the n-th are held open (receiver stalled, counted
    in ``held``) until :meth:`release`, so a test can kill the sender in the middle of a delivery.
    """

    def __init__(self) -> None:
        self.status = 200
        self.hold_after: int | None = None
        self.held = 0
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._requests: list[Received] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self._record("POST")

            def do_PUT(self) -> None:
                self._record("PUT")

            def _record(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with receiver._lock:
                    status = receiver.status
                    held = (
                        receiver.hold_after is not None
                        and len(receiver._requests) >= receiver.hold_after
                    )
                    receiver._requests.append(
                        Received(
                            method=method,
                            path=self.path,
                            headers={k.lower(): v for k, v in self.headers.items()},
                            body=json.loads(raw) if raw else None,
                            status=status,
                            raw=raw,
                        )
                    )
                    receiver.held += held
                try:
                    if held:
                        receiver._released.wait(30)
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                finally:
                    with receiver._lock:
                        receiver.held -= held

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

    def accepted_keys(self) -> list[str]:
        """Idempotency keys of the requests answered with a 2xx."""
        return [r.key for r in self.requests if 200 <= r.status < 300]

    def url(self, path: str = "/hook") -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def release(self) -> None:
        self._released.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
