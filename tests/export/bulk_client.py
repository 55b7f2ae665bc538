"""A Bulk Data client written from the IG (STU 2, "Bulk Data Export Request Flow"), not from
the exporter: kick off, poll honouring Retry-After, read the manifest, download each file."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

STATUS_DEADLINE_SECONDS = 120.0


@dataclass
class Export:
    status_url: str
    manifest: dict[str, Any]
    polls: int


class BulkClient:
    def __init__(self, http: Any, token: str) -> None:
        self.http = http  # a TestClient (the app in process) or an httpx.Client (a server)
        self.token = token

    def _headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Accept": "application/fhir+json", **extra}

    def kick_off(
        self,
        path: str,
        params: dict[str, str] | None = None,
        *,
        body: dict[str, Any] | None = None,
        lenient: bool = False,
    ) -> httpx.Response:
        prefer = "respond-async" + (", handling=lenient" if lenient else "")
        headers = self._headers(Prefer=prefer)
        if body is not None:
            headers["Content-Type"] = "application/fhir+json"
            return self.http.post(path, content=orjson.dumps(body), headers=headers)
        return self.http.get(path, params=params, headers=headers)

    def start(self, path: str, params: dict[str, str] | None = None, **kw: Any) -> str:
        response = self.kick_off(path, params, **kw)
        assert response.status_code == 202, response.text
        location = response.headers["content-location"]
        assert urlsplit(location).scheme in ("http", "https"), location  # absolute
        return location

    def poll(self, status_url: str) -> httpx.Response:
        return self.http.get(status_url, headers=self._headers())

    def wait(self, status_url: str) -> Export:
        """Poll until the export ends, waiting the Retry-After the server asks for."""
        deadline = time.monotonic() + STATUS_DEADLINE_SECONDS
        polls = 0
        while True:
            response = self.poll(status_url)
            polls += 1
            if response.status_code != 202:
                break
            progress = response.headers.get("x-progress", "")
            assert len(progress) < 100, progress
            assert time.monotonic() < deadline, f"export still running: {progress}"
            time.sleep(float(response.headers["retry-after"]))  # the protocol's own wait
        assert response.status_code == 200, response.text
        return Export(status_url, response.json(), polls)

    def run(self, path: str, params: dict[str, str] | None = None, **kw: Any) -> Export:
        return self.wait(self.start(path, params, **kw))

    def download(self, manifest: dict[str, Any], item: dict[str, Any]) -> list[dict[str, Any]]:
        headers = self._headers() if manifest["requiresAccessToken"] else {}
        url = item["url"]
        if urlsplit(url).netloc == urlsplit(manifest["request"]).netloc:
            response = self.http.get(url, headers=headers)
        else:  # a presigned object-store link: a plain HTTP GET, no token
            response = httpx.get(url, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        return [orjson.loads(line) for line in response.content.splitlines() if line.strip()]

    def resources(self, export: Export, section: str = "output") -> list[dict[str, Any]]:
        """Every resource of a section, checking one type per file and count = lines."""
        found = []
        for item in export.manifest.get(section, []):
            lines = self.download(export.manifest, item)
            assert len(lines) == item["count"], item
            assert {line["resourceType"] for line in lines} == {item["type"]}, item
            found.extend(lines)
        return found
