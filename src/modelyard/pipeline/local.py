"""Run a Pipeline in this process, recording every step in a JSON run record in the volume."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from modelyard.errors import ModelyardError
from modelyard.pipeline.graph import Pipeline
from modelyard.settings import runs_dir

REUSED = "reused"  # a step returns {"reused": True} when it found its work already done in the volume


@dataclass
class StepRecord:
    name: str
    status: str = "pending"  # pending, running, succeeded, skipped, failed, interrupted
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    started: str | None = None
    seconds: float | None = None
    error: str | None = None


@dataclass
class RunRecord:
    pipeline: str
    run_id: str
    params: dict[str, Any]
    status: str = "running"
    started: str = ""
    seconds: float | None = None
    steps: list[StepRecord] = field(default_factory=list)
    path: str = ""

    def outputs(self) -> dict[str, dict]:
        return {s.name: s.outputs for s in self.steps}

    def step(self, name: str) -> StepRecord:
        return next(s for s in self.steps if s.name == name)

    def to_dict(self) -> dict:
        return asdict(self)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


_URI_PASSWORD = re.compile(r"(//[^/@:\s]+:)[^/@\s]+@")


def _public(params: dict[str, Any]) -> dict[str, Any]:
    """What may be written to a run record: no secret-named values, no passwords inside URIs."""
    return {k: _URI_PASSWORD.sub(r"\1***@", v) if isinstance(v, str) else v
            for k, v in params.items() if "secret" not in k.lower() and "password" not in k.lower()}


class LocalRunner:
    """Executes the steps in order in this process; the volume is a local folder."""

    def __init__(self, volume: str | Path, console: Console | None = None):
        self.volume = Path(volume)
        self.console = console or Console(stderr=True)

    def _save(self, record: RunRecord) -> None:
        path = Path(record.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record.to_dict(), indent=2, default=str))
        os.replace(tmp, path)

    def run(self, pipeline: Pipeline, params: dict[str, Any]) -> RunRecord:
        params = pipeline.merge_params(params)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        run_id = f"{pipeline.name}-{stamp}-{uuid.uuid4().hex[:6]}"
        record = RunRecord(pipeline.name, run_id, _public(params), started=_now(),
                           steps=[StepRecord(s.name) for s in pipeline.steps],
                           path=str(runs_dir(self.volume) / f"{run_id}.json"))
        self._save(record)
        t_run = time.perf_counter()
        outputs: dict[str, dict] = {}
        with _sigterm_as_interrupt():
            try:
                for step in pipeline.steps:
                    rec = record.step(step.name)
                    args = pipeline.resolve(step, params, outputs)
                    rec.inputs, rec.status, rec.started = _public(args), "running", _now()
                    self._save(record)
                    t0 = time.perf_counter()
                    self.console.print(f"[bold cyan]▶ {step.name}[/]")
                    try:
                        result = step.fn(**args) or {}
                    except BaseException as e:
                        rec.status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
                        rec.seconds = round(time.perf_counter() - t0, 3)
                        rec.error = str(e) if isinstance(e, ModelyardError) else "".join(traceback.format_exception_only(type(e), e)).strip()
                        raise
                    outputs[step.name] = result
                    rec.outputs = result
                    rec.seconds = round(time.perf_counter() - t0, 3)
                    rec.status = "skipped" if result.get(REUSED) else "succeeded"
                    note = " (reused from the volume)" if rec.status == "skipped" else ""
                    self.console.print(f"[green]✔ {step.name}[/] {rec.seconds:.1f}s{note}")
                    self._save(record)
                record.status = "succeeded"
            except BaseException as e:
                record.status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
                raise
            finally:
                record.seconds = round(time.perf_counter() - t_run, 3)
                self._save(record)
        return record


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (what `kill` and Kubernetes send) raises KeyboardInterrupt like Ctrl-C, so the run record and
    the MLflow run are closed as interrupted instead of staying "running" forever (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_record(record: Any) -> bool:
    return (isinstance(record, dict) and {"run_id", "status", "steps"} <= set(record) and isinstance(record["steps"], list)
            and all(isinstance(step, dict) and {"name", "status"} <= set(step) for step in record["steps"]))


def load_records(volume: str | Path, on_unreadable: Callable[[Path, str], None] | None = None) -> list[dict]:
    """Every run record in the volume, oldest first.

    A file that is not a run record (not JSON, or without ``run_id``/``status``/``steps``) is left
    out and reported to ``on_unreadable(path, reason)`` when given.
    """
    folder = runs_dir(volume)
    if not folder.exists():
        return []
    records = []
    for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
        try:
            record = json.loads(path.read_text())
            if not _is_record(record):
                raise ValueError("not a run record (no run_id, status and steps with names and statuses)")
        except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
            if on_unreadable is not None:
                on_unreadable(path, str(e))
            continue
        records.append(record)
    return records
