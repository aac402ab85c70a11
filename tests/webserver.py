"""A real uvicorn server for the dashboard tests: the app on a free local port, in a thread."""

from __future__ import annotations

import socket
import threading

import uvicorn

from toy import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`with Server(app) as server:` serves `app` at `server.url` until the block ends."""

    def __init__(self, app, host: str = "127.0.0.1"):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://{host}:{self.port}"

    def __enter__(self) -> "Server":
        self.thread.start()
        assert wait_for(lambda: self.server.started, timeout=20)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
