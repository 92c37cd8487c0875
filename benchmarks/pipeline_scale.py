"""The whole recommender pipeline at ml-25m scale: step times and the peak RSS of the process.

Builds an ml-25m-format zip (``ml-25m/ratings.csv`` with ``userId,movieId,rating,timestamp``,
``ml-25m/movies.csv``) from the synthetic data of :func:`benchmarks.data.synthetic` (duplicate
(user, movie) pairs dropped, movie ids sparse as in MovieLens), then runs
``modelyard run recommender --dataset ml-25m --source <zip>`` in a child process, as a user would,
and reads the child's peak RSS (``ru_maxrss``) and the run record's step times.
Run it as part ``pipeline`` of ``python -m benchmarks.run``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np


def write_ml25m_zip(path: Path, scale: float = 1.0) -> dict:
    """An ml-25m-format zip of the synthetic ratings at `scale` (reused when it already exists).

    Random draws repeat popular (user, movie) pairs, which MovieLens never has: 1.5x as many are
    drawn, repeats dropped, and the first ``scale`` x 25,000,095 distinct pairs kept.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from benchmarks.data import ML_25M_SHAPE, synthetic

    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return json.loads(meta_path.read_text())
    data = synthetic(scale, val_fraction=0.0, oversample=1.5)
    users, items, ratings = data.train.triple
    keys = users * data.n_items + items
    _, first = np.unique(keys, return_index=True)  # one rating per (user, movie), as in MovieLens
    first.sort()
    first = first[: int(round(ML_25M_SHAPE[0] * scale))]
    users, items, ratings = users[first], items[first], ratings[first]
    del keys, first, data
    rng = np.random.default_rng(1)
    table = pa.table({
        "userId": users + 1,
        "movieId": items * 3 + 1,  # MovieLens movie ids are sparse
        "rating": ratings.astype(np.float64),
        "timestamp": rng.integers(789_652_009, 1_574_327_703, len(users)),
    })
    n_items = int(items.max()) + 1
    movies = pa.table({
        "movieId": np.arange(n_items) * 3 + 1,
        "title": [f"Movie {i} ({1950 + i % 70})" for i in range(n_items)],
        "genres": ["Drama|Comedy" if i % 2 else "Action" for i in range(n_items)],
    })
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        ratings_csv, movies_csv = Path(tmp) / "ratings.csv", Path(tmp) / "movies.csv"
        pacsv.write_csv(table, ratings_csv)
        pacsv.write_csv(movies, movies_csv)
        partial = path.with_suffix(".zip.tmp")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            zf.write(ratings_csv, "ml-25m/ratings.csv")
            zf.write(movies_csv, "ml-25m/movies.csv")
        os.replace(partial, path)
    meta = {"n_ratings": len(users), "n_users": int(users.max()) + 1, "n_items": n_items,
            "zip_mib": path.stat().st_size / 2**20}
    meta_path.write_text(json.dumps(meta))
    return meta


def run_pipeline(source: Path, workspace: Path, preset: str = "accurate", params: dict | None = None) -> dict:
    """`modelyard run recommender --dataset ml-25m` in a child process; its step times and peak RSS."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "modelyard", "run", "recommender", "--dataset", "ml-25m",
           "--source", str(source), "--preset", preset, "--workspace", str(workspace)]
    for name, value in (params or {}).items():
        cmd += ["--param", f"{name}={value}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    workspace.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, cwd=workspace.parent)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not every child's so far
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"modelyard run failed ({proc.returncode}):\n{stderr[-4000:]}\n{stdout[-2000:]}")
    record = json.loads(max((workspace / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime).read_text())
    return {
        "seconds": seconds,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
        "steps": {s["name"]: s["seconds"] for s in record["steps"]},
        "validation": record["steps"][-2]["outputs"],
        "stdout": stdout,
    }

