"""A stand-in for the hospitals' HIS endpoints in the demo: prints each notification it gets.

    .venv/bin/python scripts/notification_receiver.py [--port 8090]

The demo's Endpoints are ``http://127.0.0.1:8090/notifications/<hospital>`` and its
Subscriptions send the Task as ``PUT {endpoint}/Task/{id}``. Each line shows the hospital, the
resource version, its status and the idempotency key; a key seen before is marked as a repeat
(the hub retries until it gets a 2xx, so a receiver drops repeats by that key). Only loopback
is listened on.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar


class Handler(BaseHTTPRequestHandler):
    seen: ClassVar[set[str]] = set()

    def do_POST(self) -> None:
        self._receive()

    def do_PUT(self) -> None:
        self._receive()

    def _receive(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        key = self.headers.get("Idempotency-Key", "")
        repeat = key in self.seen
        self.seen.add(key)
        status = ""
        if raw:
            body: Any = json.loads(raw)
            status = f" status={body.get('status')}" if isinstance(body, dict) else ""
        print(
            f"{self.command} {self.path} focus={self.headers.get('X-Emr-Hub-Focus')}{status} "
            f"key={key}{' (repeat, ignored)' if repeat else ''}",
            flush=True,
        )
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8090)
    port = parser.parse_args().port
    print(f"listening on http://127.0.0.1:{port}/notifications/<hospital>", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
