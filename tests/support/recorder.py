"""A real local HTTP endpoint that records what it receives (Slack, status page, tickets,
PagerDuty stand-ins for tests): test code, not product code. ``delay`` makes it a slow one
(a request is recorded on arrival, then answered ``delay`` seconds later)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict


@dataclass
class Recorder:
    status: int = 200  # what to answer
    received: list[Received] = field(default_factory=list)
    delay: float = 0.0  # seconds before answering

    def start(self) -> "Recorder":
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_raw": raw.decode(errors="replace")}
                recorder.received.append(Received(self.path, dict(self.headers), body))
                time.sleep(recorder.delay)
                data = json.dumps({"id": f"rec-{len(recorder.received)}", "dedup_key": "k"}).encode()
                self.send_response(recorder.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802  (a slow health or smoke-check endpoint)
                recorder.received.append(Received(self.path, dict(self.headers), {}))
                time.sleep(recorder.delay)
                data = b'{"status": "ok"}'
                self.send_response(recorder.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def at(self, path_prefix: str) -> list[Received]:
        return [r for r in self.received if r.path.startswith(path_prefix)]
