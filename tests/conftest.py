"""Shared test fixtures: a local HTTP server; test helpers importable as plain modules."""

from __future__ import annotations

import functools
import http.server
import os
import sys
import threading
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

_TESTS = Path(__file__).resolve().parent
# `import movielens_factory` works under any pytest import mode.
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))
# The package under test, also when it is not installed (src layout).
try:
    import modelyard  # noqa: F401
except ImportError:
    sys.path.insert(0, str(_TESTS.parent / "src"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        pass


@pytest.fixture
def http_served_dir(tmp_path) -> Path:
    """The folder `http_server` serves (empty at first)."""
    folder = tmp_path / "served"
    folder.mkdir()
    return folder


@pytest.fixture
def http_server(http_served_dir):
    """Serve `http_served_dir` on 127.0.0.1 on a free port; yields the base URL (no trailing slash)."""
    handler = functools.partial(_QuietHandler, directory=str(http_served_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
