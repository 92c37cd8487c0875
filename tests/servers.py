"""Start moto_server (S3) or `mlflow server` on a free 127.0.0.1 port for a test, and stop them for sure.

Each server runs in its own process group; `stop()` kills the whole group (mlflow server forks workers),
SIGTERM first, SIGKILL after a grace period. Readiness is polled, never slept for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv's bin folder: moto_server, mlflow


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _executable(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 10.0) -> None:
        """Kill the server's whole process group (SIGTERM, then SIGKILL)."""
        try:
            pgid = os.getpgid(self.process.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        if pgid is not None:  # workers may outlive the parent: the group goes in any case
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def _start(name: str, argv: list[str], ready_url: str, base_url: str, log: Path, timeout_s: float,
           env: dict[str, str] | None = None) -> Server:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "wb")
    process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env={**os.environ, **(env or {})}, start_new_session=True)
    out.close()
    server = Server(name, base_url, process, log)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if not server.alive():
                raise RuntimeError(f"{name} exited with {process.returncode} before answering:\n{server.log_tail()}")
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as response:
                    if response.status < 500:
                        return server
            except urllib.error.HTTPError as e:
                if e.code < 500:
                    return server
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{name} did not answer {ready_url} within {timeout_s:.0f} s:\n{server.log_tail()}")
    except BaseException:
        server.stop()
        raise


def start_moto(log_dir: Path, timeout_s: float = 30.0) -> Server:
    """`moto_server -H 127.0.0.1 -p <free port>`; its URL is the S3 endpoint."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return _start("moto_server", [_executable("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                  f"{url}/", url, log_dir / "moto_server.log", timeout_s)


def start_mlflow(root: Path, timeout_s: float = 60.0) -> Server:
    """`mlflow server` with a SQLite store and proxied artifacts under `root`, one worker; polls /health."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [_executable("mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return _start("mlflow server", argv, f"{url}/health", url, root / "mlflow_server.log", timeout_s, env)
