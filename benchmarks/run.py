"""modelyard recommender benchmarks: throughput, accuracy, full-catalog ranking.

    python -m benchmarks.run                      # everything at full ml-25m scale (many minutes)
    python -m benchmarks.run --scale 0.02         # quick smoke run
    python -m benchmarks.run --parts accuracy --splits 1,2

See benchmarks/README.md for what each part measures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(_ROOT))
    __package__ = "benchmarks"
try:
    import modelyard  # noqa: F401
except ImportError:  # not installed: use the checkout's src/
    sys.path.insert(0, str(_ROOT / "src"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.data import Dataset, ml100k_split, movielens_small, synthetic  # noqa: E402
from benchmarks.textbook import textbook_throughput  # noqa: E402
from modelyard.recommender.evaluate import mae, predict, rmse  # noqa: E402
from modelyard.recommender.model import build_model  # noqa: E402
from modelyard.recommender.train import cpu_threads, fit, resolve_params  # noqa: E402

console = Console(width=max(150, Console().width))
PARTS = ("throughput", "accuracy", "ranking", "pipeline")


def _surprise():
    try:
        import surprise  # noqa: F401

        return surprise
    except ImportError:
        return None


def _surprise_trainset(users, items, ratings):
    import pandas as pd
    import surprise

    df = pd.DataFrame({"u": users, "i": items, "r": ratings.astype(np.float64)})
    reader = surprise.Reader(rating_scale=(float(ratings.min()), float(ratings.max())))
    return surprise.Dataset.load_from_df(df, reader).build_full_trainset()


# ------------------------------------------------------------------------------------- throughput
def modelyard_throughput(data: Dataset, preset: str, overrides: dict, max_ratings: int | None) -> dict:
    """One whole epoch of ``fit`` (no val); ratings/s over the epoch's training loop."""
    train = data.train
    if max_ratings and len(train) > max_ratings:
        train = train.take(np.random.default_rng(0).permutation(len(train))[:max_ratings])
    params = resolve_params(preset, {**overrides, "epochs": 1, "device": "cpu"})
    model = build_model(params, data.n_users, data.n_items, float(train.ratings.mean()))
    result = fit(model, train.triple, None, params)
    return {"ratings_per_s": len(train) / result.train_seconds[0], "timed_ratings": len(train),
            "seconds": result.train_seconds[0], "batch_size": params["batch_size"]}


def surprise_throughput(data: Dataset, max_ratings: int | None) -> dict | None:
    surprise = _surprise()
    if surprise is None:
        return None
    train = data.train
    if max_ratings and len(train) > max_ratings:
        train = train.take(np.random.default_rng(0).permutation(len(train))[:max_ratings])
    trainset = _surprise_trainset(*train.triple)
    algo = surprise.SVD(random_state=42)  # defaults: 100 factors, 20 epochs
    t = time.perf_counter()
    algo.fit(trainset)
    seconds = time.perf_counter() - t
    return {"ratings_per_s": algo.n_epochs * len(train) / seconds, "timed_ratings": algo.n_epochs * len(train),
            "seconds": seconds}


def run_throughput(args) -> list[dict]:
    rows = []
    datasets = [("ml-latest-small", movielens_small), (f"synthetic x{args.scale:g} ml-25m", lambda: synthetic(args.scale))]
    for label, load in datasets:
        t = time.perf_counter()
        data = load()
        console.print(f"[bold]{label}[/]: {len(data.train):,} training ratings, {data.n_users:,} users, "
                      f"{data.n_items:,} items (loaded in {time.perf_counter() - t:.1f} s)")
        tr = data.train
        contenders = [
            ("textbook loop (DataLoader, batch 64)", lambda: textbook_throughput(
                tr.users, tr.items, tr.ratings, data.n_users, data.n_items, max_batches=args.textbook_batches)),
            ("modelyard fit, textbook preset, batch 64", lambda: modelyard_throughput(
                data, "textbook", {}, args.batch64_ratings)),
            (f"modelyard fit, textbook preset, batch {args.best_batch_size}", lambda: modelyard_throughput(
                data, "textbook", {"batch_size": args.best_batch_size}, None)),
            ("modelyard fit, accurate preset", lambda: modelyard_throughput(data, "accurate", {}, None)),
            ("modelyard fit, accurate preset, fused=false", lambda: modelyard_throughput(
                data, "accurate", {"fused": False}, None)),
            ("Surprise SVD (defaults)", lambda: surprise_throughput(data, args.surprise_ratings)),
        ]
        base = None
        for name, measure in contenders:
            console.print(f"  {name} ...", end=" ")
            result = measure()
            if result is None:
                console.print("skipped: scikit-surprise is not importable")
                rows.append({"dataset": label, "contender": name, "skipped": True})
                continue
            base = base or result["ratings_per_s"]
            result.update(dataset=label, contender=name, ratio=result["ratings_per_s"] / base)
            console.print(f"{result['ratings_per_s']:,.0f} ratings/s over {result['timed_ratings']:,} ratings "
                          f"({result['seconds']:.1f} s)")
            rows.append(result)
        del data
    table = Table(title=f"Training throughput ({cpu_threads()} CPU threads)")
    for col in ("dataset", "trainer", "ratings/s", "x textbook loop", "timed ratings", "seconds"):
        table.add_column(col, justify="left" if col in ("dataset", "trainer") else "right")
    for r in rows:
        if r.get("skipped"):
            table.add_row(r["dataset"], r["contender"], "skipped (not installed)", "", "", "")
            continue
        table.add_row(r["dataset"], r["contender"], f"{r['ratings_per_s']:,.0f}", f"{r['ratio']:,.1f}x",
                      f"{r['timed_ratings']:,}", f"{r['seconds']:.1f}")
    console.print(table)
    return rows


# --------------------------------------------------------------------------------------- accuracy
def run_accuracy(args) -> list[dict]:
    splits = [int(s) for s in args.splits.split(",")]
    contenders = {
        f"modelyard textbook (batch {args.textbook_accuracy_batch_size})": ("textbook", {"batch_size": args.textbook_accuracy_batch_size}),
        "modelyard accurate": ("accurate", {}),
    }
    scores: dict[str, list[tuple[float, float, float]]] = {name: [] for name in contenders}
    surprise = _surprise()
    if surprise is not None:
        scores["Surprise SVD (defaults)"] = []
    for fold in splits:
        data = ml100k_split(fold)
        for name, (preset, overrides) in contenders.items():
            params = resolve_params(preset, {**overrides, "device": "cpu"})
            model = build_model(params, data.n_users, data.n_items, float(data.train.ratings.mean()))
            t = time.perf_counter()
            fit(model, data.train.triple, None, params)
            seconds = time.perf_counter() - t
            pred = predict(model, data.val.users, data.val.items)
            scores[name].append((rmse(data.val.ratings, pred), mae(data.val.ratings, pred), seconds))
            console.print(f"  u{fold} {name}: RMSE {scores[name][-1][0]:.4f} MAE {scores[name][-1][1]:.4f} ({seconds:.1f} s)")
        if surprise is not None:
            trainset = _surprise_trainset(*data.train.triple)
            algo = surprise.SVD(random_state=42)
            t = time.perf_counter()
            algo.fit(trainset)
            seconds = time.perf_counter() - t
            testset = list(zip(data.val.users.tolist(), data.val.items.tolist(), data.val.ratings.astype(float).tolist()))
            pred = np.array([p.est for p in algo.test(testset)])  # Surprise clips to [1, 5]
            scores["Surprise SVD (defaults)"].append((rmse(data.val.ratings, pred), mae(data.val.ratings, pred), seconds))
            console.print(f"  u{fold} Surprise SVD: RMSE {scores['Surprise SVD (defaults)'][-1][0]:.4f} ({seconds:.1f} s)")
    rows = []
    for name, values in scores.items():
        arr = np.array(values)
        rows.append({"model": name, "rmse": arr[:, 0].mean(), "mae": arr[:, 1].mean(), "train_seconds": arr[:, 2].sum(),
                     "rmse_per_split": arr[:, 0].tolist()})
    base = rows[-1]["train_seconds"] if surprise is not None else rows[0]["train_seconds"]
    table = Table(title=f"ml-100k, splits {', '.join(f'u{s}' for s in splits)}: mean over splits")
    for col in ("model", "RMSE", "MAE", "total train s", "time vs " + ("Surprise" if surprise else "textbook"), "RMSE per split"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(r["model"], f"{r['rmse']:.4f}", f"{r['mae']:.4f}", f"{r['train_seconds']:.1f}",
                      f"{r['train_seconds'] / base:.2f}x", " ".join(f"{v:.4f}" for v in r["rmse_per_split"]))
    console.print(table)
    if surprise is None:
        console.print("Surprise SVD skipped: scikit-surprise is not importable (pip install scikit-surprise)")
    console.print("modelyard predictions are not clipped; Surprise clips its estimates to [1, 5].")
    return rows


# ---------------------------------------------------------------------------------------- ranking
def _ranking_subprocess(extra: list[str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_ROOT), str(_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ranking", *extra], capture_output=True, text=True,
                          cwd=_ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks.ranking failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["children_maxrss_mib"] = max(before, after) / 1024
    return result


def run_ranking(args) -> list[dict]:
    rows = []
    console.print(f"  accurate preset, all validation users (trained {args.ranking_train_epochs} epoch(s) first) ...")
    rows.append(_ranking_subprocess(["--scale", str(args.scale), "--preset", "accurate",
                                     "--train-epochs", str(args.ranking_train_epochs)]))
    if args.textbook_ranking_users:
        console.print(f"  textbook preset (mlp-mf), {args.textbook_ranking_users} sampled users, untrained ...")
        rows.append(_ranking_subprocess(["--scale", str(args.scale), "--preset", "textbook", "--train-epochs", "0",
                                         "--user-sample", str(args.textbook_ranking_users)]))
    table = Table(title=f"Full-catalog ranking (top 50, seen items excluded), synthetic x{args.scale:g} ml-25m")
    for col in ("model", "ranked users", "items", "ranking s", "s / 1k users", "all val users (est.) s",
                "peak RSS MiB", "train s", "NDCG@50"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        ranked = r["metrics"]["n_ranked_users"]
        per_user = r["ranking_seconds"] / max(ranked, 1)
        table.add_row(r["preset"], f"{ranked:,}", f"{r['n_items']:,}", f"{r['ranking_seconds']:.1f}",
                      f"{1000 * per_user:.2f}", f"{per_user * r['n_val_users']:.0f}", f"{r['peak_rss_mib']:,.0f}",
                      f"{r.get('train_seconds', 0):.1f}", f"{r['metrics']['ndcg_at_k']:.4f}")
    console.print(table)
    return rows


# --------------------------------------------------------------------------------------- pipeline
MEMORY_BUDGET_MIB = 4096


def run_pipeline_part(args) -> dict:
    from benchmarks.pipeline_scale import run_pipeline, write_ml25m_zip

    zip_path = Path(args.cache) / f"modelyard-bench-ml-25m-x{args.scale:g}.zip"  # reused by later runs
    t = time.perf_counter()
    meta = write_ml25m_zip(zip_path, args.scale)
    console.print(f"  {zip_path}: {meta['n_ratings']:,} ratings, {meta['n_users']:,} users, {meta['n_items']:,} movies, "
                  f"{meta['zip_mib']:,.0f} MiB ({time.perf_counter() - t:.0f} s)")
    params = {"epochs": args.pipeline_epochs} if args.pipeline_epochs else {}
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        result = run_pipeline(zip_path, Path(tmp) / "workspace", preset="accurate", params=params)
    result.pop("stdout")
    result.update(meta)
    table = Table(title=f"modelyard run recommender --dataset ml-25m --preset accurate, synthetic x{args.scale:g} "
                        f"({meta['n_ratings']:,} ratings), one process")
    for col in ("step", "seconds", "share of the run"):
        table.add_column(col, justify="left" if col == "step" else "right")
    for name, seconds in result["steps"].items():
        table.add_row(name, f"{seconds:.1f}", f"{seconds / result['seconds']:.0%}")
    table.add_row("whole run (process start to exit)", f"{result['seconds']:.1f}", "100%")
    console.print(table)
    v = result["validation"]
    console.print(f"  peak RSS {result['peak_rss_mib']:,.0f} MiB = {result['peak_rss_mib'] / MEMORY_BUDGET_MIB:.2f}x the "
                  f"{MEMORY_BUDGET_MIB:,} MiB budget; val rmse {v['rmse']:.4f}, ndcg_at_k {v['ndcg_at_k']:.4f}")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="modelyard recommender benchmarks", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--scale", type=float, default=1.0, help="synthetic data size as a fraction of ml-25m")
    parser.add_argument("--textbook-batches", type=int, default=1000, help="timed batches of the textbook loop")
    parser.add_argument("--batch64-ratings", type=int, default=0,
                        help="cap the ratings of modelyard's batch-64 epoch (0 = whole epoch)")
    parser.add_argument("--best-batch-size", type=int, default=4096, help="batch size for the fast textbook row")
    parser.add_argument("--surprise-ratings", type=int, default=1_000_000,
                        help="Surprise throughput on a random subset of this many ratings (0 = all)")
    parser.add_argument("--splits", default="1,2,3,4,5", help="ml-100k splits for the accuracy part")
    parser.add_argument("--textbook-accuracy-batch-size", type=int, default=64)
    parser.add_argument("--ranking-train-epochs", type=int, default=1)
    parser.add_argument("--textbook-ranking-users", type=int, default=256,
                        help="also rank this many users with the textbook model (0 = skip)")
    parser.add_argument("--threads", type=int, default=0,
                        help="restrict this process (and so torch's threads) to the first N CPUs (0 = all)")
    parser.add_argument("--pipeline-epochs", type=int, default=0,
                        help="epochs of the pipeline part's accurate preset (0 = the preset's own)")
    parser.add_argument("--cache", default=tempfile.gettempdir(),
                        help="where the pipeline part keeps its generated ml-25m-format zip (reused) and workspace")
    parser.add_argument("--json", help="write all results to this file")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")

    if args.threads:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    torch.set_num_threads(cpu_threads())  # the textbook loop too (fit sets the same itself)
    console.print(f"CPU threads: {cpu_threads()}, load average: {os.getloadavg()}")
    results: dict = {"args": vars(args)}
    for part in parts:
        console.rule(part)
        t = time.perf_counter()
        results[part] = {"throughput": run_throughput, "accuracy": run_accuracy, "ranking": run_ranking,
                         "pipeline": run_pipeline_part}[part](args)
        console.print(f"[dim]{part}: {time.perf_counter() - t:.0f} s, load average {os.getloadavg()}[/]")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    return results


if __name__ == "__main__":
    main()
