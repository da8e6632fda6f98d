"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for tests (http.server).

``reply(messages) -> str`` decides each answer; every request body is kept in
``server.requests`` so a test can check what the client sent.
"""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator


@contextmanager
def chat_server(reply: Callable[[list[dict]], str], status: int = 200) -> Iterator[ThreadingHTTPServer]:
    """Serve ``POST /v1/chat/completions`` on a free loopback port; yields the server
    (``server.url`` is the base URL to configure, ``server.requests`` the bodies received)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
            if self.path != "/v1/chat/completions" or status != 200:
                self.send_error(404 if status == 200 else status)
                return
            out = json.dumps({"id": "t", "object": "chat.completion", "model": body["model"], "choices": [
                {"index": 0, "message": {"role": "assistant", "content": reply(body["messages"])},
                 "finish_reason": "stop"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.requests = []
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
