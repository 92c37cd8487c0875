"""Full-catalog ranking at ml-25m scale, in its own process so its peak RSS can be measured.

``python -m benchmarks.ranking --scale 1.0 --preset accurate --train-epochs 1`` generates the
synthetic data, optionally trains the preset, runs ``ranking_metrics`` for the validation users and
prints one JSON line with the timings and the process's peak RSS (``ru_maxrss``) after each stage.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--preset", default="accurate")
    parser.add_argument("--train-epochs", type=int, default=1, help="epochs to train first (0 = untrained)")
    parser.add_argument("--user-sample", type=int, default=0, help="rank only this many val users (0 = all)")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--chunk-size", type=int, default=1024)
    args = parser.parse_args(argv)

    import torch

    from benchmarks.data import synthetic
    from modelyard.recommender.evaluate import ranking_metrics
    from modelyard.recommender.model import build_model
    from modelyard.recommender.train import cpu_threads, fit, resolve_params

    torch.set_num_threads(cpu_threads())

    out: dict = {"scale": args.scale, "preset": args.preset}
    t = time.perf_counter()
    data = synthetic(args.scale)
    out.update(data_seconds=time.perf_counter() - t, rss_after_data_mib=peak_rss_mib(),
               n_train=len(data.train), n_val=len(data.val), n_users=data.n_users, n_items=data.n_items)

    params = resolve_params(args.preset, {"epochs": max(1, args.train_epochs), "device": "cpu"})
    model = build_model(params, data.n_users, data.n_items, float(data.train.ratings.mean()))
    if args.train_epochs:
        t = time.perf_counter()
        fit(model, data.train.triple, None, params)
        out.update(train_seconds=time.perf_counter() - t, rss_after_train_mib=peak_rss_mib())

    val = data.val
    if args.user_sample:
        chosen = np.random.default_rng(0).choice(np.unique(val.users), args.user_sample, replace=False)
        val = val.take(np.isin(val.users, chosen))
    t = time.perf_counter()
    metrics = ranking_metrics(
        model, val.users, val.items, val.ratings, data.train.users, data.train.items, data.n_items,
        top_k=args.top_k, chunk_size=args.chunk_size,
    )
    out.update(ranking_seconds=time.perf_counter() - t, peak_rss_mib=peak_rss_mib(), metrics=metrics)
    out["n_val_users"] = int(len(np.unique(data.val.users[data.val.ratings >= 3.0])))
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
