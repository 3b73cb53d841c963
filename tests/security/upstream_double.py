"""A hostile model server for the attack tests: records every request it gets and answers what the test
says. It stands where an admin could point a provider (a capture server) or where a broken or malicious
upstream sits; it speaks plain HTTP/1.1 on loopback, as a real one would."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Capture:
    url: str
    port: int
    requests: list[Seen] = field(default_factory=list)
    status: int = 200
    body: bytes = b'{"object":"list","data":[]}'
    content_type: str = "application/json"

    def answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.status, self.body, self.content_type = status, body, content_type

    def everything_received(self) -> str:
        """All it was sent, headers and bodies, as one string to search for secrets."""
        return "\n".join(
            f"{r.method} {r.path}\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.items()) + "\n"
            + r.body.decode(errors="replace")
            for r in self.requests
        )  # fmt: skip


@contextmanager
def capture_server() -> Iterator[Capture]:
    state: Capture | None = None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            assert state is not None
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.requests.append(Seen(self.command, self.path, dict(self.headers.items()), body))
            self.send_response(state.status)
            self.send_header("Content-Type", state.content_type)
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    state = Capture(f"http://127.0.0.1:{port}/v1", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
