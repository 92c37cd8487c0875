"""modelyard.recommender.model and .train on tiny synthetic data (fast, CPU)."""

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from modelyard.recommender.evaluate import predict
from modelyard.recommender.model import BiasedMF, MLPMF, PairScorer, build_model, unwrap
from modelyard.recommender.train import PRESETS, fit, resolve_params

N_USERS, N_ITEMS = 40, 30


def ratings(n, seed):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, N_USERS, n)
    items = rng.integers(0, N_ITEMS, n)
    # some structure plus noise, on the 1..5 scale
    r = np.clip(np.round(3 + np.sin(users) + np.cos(items) + rng.normal(0, 0.5, n)), 1, 5)
    return users, items, r.astype(np.float32)


TRAIN, VAL = ratings(600, 0), ratings(150, 1)


# ---------------------------------------------------------------- params
def test_presets_share_names():
    assert set(PRESETS["textbook"]) == set(PRESETS["accurate"])
    assert PRESETS["textbook"]["batch_size"] == 64 and PRESETS["textbook"]["model"] == "mlp-mf"


def test_resolve_params_coerces_strings():
    p = resolve_params("textbook", {"epochs": "3", "learning_rate": "1e-2", "shuffle": "false", "dropout": 0})
    assert (p["epochs"], p["learning_rate"], p["shuffle"], p["dropout"]) == (3, 0.01, False, 0.0)
    assert isinstance(p["dropout"], float)
    assert resolve_params("accurate", {"shuffle": "1"})["shuffle"] is True


@pytest.mark.parametrize(
    ("preset", "overrides", "names"),
    [
        ("nope", None, ["'nope'", "textbook", "accurate"]),
        ("textbook", {"lr": 1}, ["'lr'", "learning_rate"]),
        ("textbook", {"model": "svd"}, ["'svd'", "biased-mf"]),
        ("textbook", {"epochs": "many"}, ["'epochs'", "many"]),
        ("textbook", {"shuffle": "maybe"}, ["'shuffle'"]),
    ],
)
def test_resolve_params_rejects(preset, overrides, names):
    # (non-finite values: tests/recommender/test_bad_inputs.py, through the CLI)
    with pytest.raises(ValueError) as err:
        resolve_params(preset, overrides)
    assert all(n in str(err.value) for n in names)


# ---------------------------------------------------------------- model
@pytest.mark.parametrize("name", ["mlp-mf", "biased-mf"])
def test_pair_scorer_and_score_all_items_agree_with_forward(name):
    params = resolve_params("textbook" if name == "mlp-mf" else "accurate", {"factors": 4, "hidden_dims": 8})
    model = build_model(params, N_USERS, N_ITEMS, global_mean=3.0)
    assert isinstance(model, PairScorer)
    model.eval()
    users = torch.tensor([0, 5, 39])
    with torch.no_grad():
        full = model.score_all_items(users)
        pairs = torch.stack([users.repeat_interleave(N_ITEMS), torch.arange(N_ITEMS).repeat(3)], 1)
        direct = model(pairs).reshape(3, N_ITEMS)
        as_float = model(pairs.float())  # MLflow's pyfunc may hand over float32
    assert full.shape == (3, N_ITEMS)
    torch.testing.assert_close(full, direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(as_float, direct.reshape(-1))


def test_mlpmf_score_all_items_chunks(monkeypatch):
    import modelyard.recommender.model as model_module

    monkeypatch.setattr(model_module, "_MLP_CHUNK_FLOATS", 1)  # one user per chunk
    model = MLPMF(N_USERS, N_ITEMS, factors=3, hidden_dims=5).eval()
    users = torch.arange(N_USERS)
    with torch.no_grad():
        direct = model(users.repeat_interleave(N_ITEMS), torch.arange(N_ITEMS).repeat(N_USERS))
        torch.testing.assert_close(model.score_all_items(users), direct.reshape(N_USERS, N_ITEMS))


def test_biased_mf_sparse_gradients():
    model = build_model(resolve_params("accurate", {"optimizer": "sparse_adam"}), N_USERS, N_ITEMS, 3.0)
    inner = unwrap(model)
    assert isinstance(inner, BiasedMF) and inner.sparse
    inner(torch.tensor([1, 2]), torch.tensor([3, 4])).sum().backward()
    assert inner.user.weight.grad.is_sparse
    dense = unwrap(build_model(resolve_params("accurate", {"optimizer": "adam"}), N_USERS, N_ITEMS, 3.0))
    assert not dense.sparse


def test_fit_sets_gradient_mode_from_params():
    # A model built for sparse_adam (sparse embeddings) can be trained further with adam (dense).
    params = resolve_params("accurate", {"epochs": 1, "device": "cpu"})
    model = build_model(params, N_USERS, N_ITEMS, 3.0)
    assert unwrap(model).user.sparse
    fit(model, TRAIN, VAL, {**params, "optimizer": "adam"})
    assert not unwrap(model).user.sparse
    textbook = build_model(resolve_params("textbook"), N_USERS, N_ITEMS, 3.0)
    assert unwrap(textbook).user_factors.sparse  # plain SGD: sparse updates == dense updates
    decayed = build_model(resolve_params("textbook", {"weight_decay": 0.1}), N_USERS, N_ITEMS, 3.0)
    assert not unwrap(decayed).user_factors.sparse


def test_build_model_rejects_unknown():
    with pytest.raises(ValueError, match="mlp-mf"):
        build_model({"model": "svd"}, 2, 2, 0.0)


# ---------------------------------------------------------------- fit
class RatingsDataset(Dataset):
    """The textbook's row-by-row dataset."""

    def __init__(self, users, items, ratings):
        self.users, self.items, self.ratings = users, items, ratings

    def __len__(self):
        return len(self.users)

    def __getitem__(self, idx):
        return (
            torch.tensor(self.users[idx], dtype=torch.long),
            torch.tensor(self.items[idx], dtype=torch.long),
            torch.tensor(self.ratings[idx], dtype=torch.float32),
        )


def textbook_loop(model, train, val, params):
    """The textbook training loop: DataLoader, L1Loss, SGD, StepLR, loss.item() per batch."""
    torch.manual_seed(params["random_state"])
    loader = DataLoader(
        RatingsDataset(*train), batch_size=params["batch_size"], shuffle=False, generator=torch.Generator()
    )
    criterion = torch.nn.L1Loss()
    optimizer = torch.optim.SGD(model.parameters(), lr=params["learning_rate"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=params["step_size"], gamma=params["gamma"])
    vu, vi, vr = (torch.as_tensor(a) for a in val)
    history = []
    for _ in range(params["epochs"]):
        model.train()
        running = 0.0
        for users, items, ratings in loader:
            loss = criterion(model(users, items), ratings)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += loss.item() * len(ratings)
        model.eval()
        with torch.no_grad():
            val_loss = criterion(model(vu, vi), vr).item()
        history.append((running / len(train[0]), val_loss, scheduler.get_last_lr()[0]))
        scheduler.step()
    return history


def test_fit_matches_textbook_dataloader_loop():
    params = resolve_params(
        "textbook",
        {"shuffle": False, "epochs": 4, "step_size": 2, "learning_rate": 0.05, "device": "cpu",
         "factors": 8, "hidden_dims": 16},
    )
    model = build_model(params, N_USERS, N_ITEMS, global_mean=3.0)
    reference = copy.deepcopy(unwrap(model))
    expected = textbook_loop(reference, TRAIN, VAL, params)
    got = fit(model, TRAIN, VAL, params).history
    assert [h["epoch"] for h in got] == [1, 2, 3, 4]
    assert [h["learning_rate"] for h in got] == pytest.approx([0.05, 0.05, 0.005, 0.005])
    for h, (train_loss, val_loss, lr) in zip(got, expected):
        assert h["train_loss"] == pytest.approx(train_loss, rel=1e-5)
        assert h["val_loss"] == pytest.approx(val_loss, rel=1e-5)
        assert h["learning_rate"] == pytest.approx(lr)
    assert got[0]["train_loss"] != pytest.approx(got[-1]["train_loss"], rel=1e-3)  # it did learn
    for a, b in zip(unwrap(model).state_dict().values(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {"epochs": 3, "batch_size": 32},  # textbook model, dropout, shuffling
        {"model": "biased-mf", "loss": "mse", "optimizer": "sparse_adam", "weight_decay": 0.05, "epochs": 3},
    ],
)
def test_fit_is_deterministic(overrides):
    params = resolve_params("textbook", {**overrides, "device": "cpu", "random_state": 7})
    results, weights = [], []
    for _ in range(2):
        model = build_model(params, N_USERS, N_ITEMS, global_mean=3.0)
        results.append(fit(model, TRAIN, VAL, params))
        weights.append(unwrap(model).state_dict())
    assert results[0].history == results[1].history
    for a, b in zip(weights[0].values(), weights[1].values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "overrides",
    [
        {"model": "biased-mf", "optimizer": "sgd", "learning_rate": 0.05, "weight_decay": 0.02},
        {"model": "biased-mf", "optimizer": "adam", "learning_rate": 0.01, "weight_decay": 0.02},
        {"model": "mlp-mf", "optimizer": "adam", "learning_rate": 0.01, "weight_decay": 1e-4},
        {"model": "mlp-mf", "optimizer": "sparse_adam", "learning_rate": 0.01, "loss": "mse"},
    ],
)
def test_fit_every_model_optimizer_pair_learns(overrides):
    params = resolve_params("accurate", {**overrides, "epochs": 8, "batch_size": 64, "device": "cpu"})
    model = build_model(params, N_USERS, N_ITEMS, global_mean=float(TRAIN[2].mean()))
    seen = []
    result = fit(model, TRAIN, VAL, params, on_epoch=lambda epoch, m: seen.append((epoch, m)))
    assert [e for e, _ in seen] == list(range(1, 9))
    assert {"train_loss", "val_loss", "learning_rate"} <= set(seen[0][1])
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert next(unwrap(model).parameters()).device.type == "cpu"


def test_early_stopping_keeps_best_epoch_weights():
    # Pure-noise ratings and a big unregularised model: val loss soon rises.
    rng = np.random.default_rng(3)
    noise = lambda n: (rng.integers(0, N_USERS, n), rng.integers(0, N_ITEMS, n), rng.integers(1, 6, n).astype(np.float32))  # noqa: E731
    train, val = noise(800), noise(200)
    params = resolve_params(
        "accurate",
        {"factors": 32, "learning_rate": 0.05, "weight_decay": 0.0, "epochs": 40, "patience": 3, "device": "cpu"},
    )
    model = build_model(params, N_USERS, N_ITEMS, global_mean=float(train[2].mean()))
    snapshots = {}
    result = fit(model, train, val, params, on_epoch=lambda e, m: snapshots.update({e: copy.deepcopy(model.state_dict())}))
    val_losses = [h["val_loss"] for h in result.history]
    assert len(val_losses) == result.best_epoch + 3 < 40  # stopped 3 epochs after the best
    assert result.best_val_loss == min(val_losses) == val_losses[result.best_epoch - 1]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, snapshots[result.best_epoch][name])
    pred = predict(model, val[0], val[1])
    assert float(np.mean((pred - val[2]) ** 2)) == pytest.approx(result.best_val_loss, rel=1e-5)


@pytest.mark.parametrize("n_users", [N_USERS, 5000])  # small table: dense scratch; large: coalesce
def test_lazy_sparse_adam_equals_torch_sparse_adam(n_users):
    from modelyard.recommender.train import LazySparseAdam

    def run(optimizer_class):
        torch.manual_seed(0)
        model = BiasedMF(n_users, N_ITEMS, factors=4, global_mean=3.0, sparse=True)
        optimizer = optimizer_class(list(model.parameters()), lr=0.05)
        users, items, ratings = (torch.as_tensor(a) for a in TRAIN)
        for start in range(0, 600, 100):  # repeated users/items inside a batch: coalescing matters
            u, i, r = users[start : start + 100], items[start : start + 100], ratings[start : start + 100]
            pred, user_sq, item_sq = model.forward_with_norms(u, i)
            optimizer.zero_grad()
            (torch.nn.functional.mse_loss(pred, r) + 0.1 * (user_sq + item_sq).mean()).backward()
            optimizer.step()
        return model.state_dict()

    ours, theirs = run(LazySparseAdam), run(torch.optim.SparseAdam)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-3, atol=1e-4)  # summation order


@pytest.mark.parametrize(("model_name", "fused"), [("biased-mf", True), ("biased-mf", False), ("mlp-mf", True)])
def test_fit_sparse_adam_equals_torch_sparse_adam(model_name, fused):
    """fit with sparse_adam == a plain loop with torch.optim.SparseAdam (and Adam for mlp-mf's MLP).

    biased-mf with ``fused`` trains through the compiled kernel, without it through PyTorch ops.
    """
    from modelyard.recommender.train import SPARSE_ADAM_BETAS, frequency_weights

    params = resolve_params("accurate", {"model": model_name, "epochs": 2, "batch_size": 100, "shuffle": False,
                                         "step_size": 0, "learning_rate": 0.05, "dropout": 0.0, "device": "cpu",
                                         "fused": fused})
    model = build_model(params, N_USERS, N_ITEMS, 3.0)
    reference = copy.deepcopy(unwrap(model))
    result = fit(model, TRAIN, None, params)

    l2 = params["weight_decay"] if model_name == "biased-mf" else 0.0  # mlp-mf: no L2 in the loss
    embeddings = [m for m in reference.modules() if isinstance(m, torch.nn.Embedding)]
    assert embeddings and all(m.sparse for m in embeddings)
    tables = [m.weight for m in embeddings]
    others = [p for p in reference.parameters() if all(p is not t for t in tables)]
    optimizers = [torch.optim.SparseAdam(tables, lr=0.05, betas=SPARSE_ADAM_BETAS)]
    if others:
        optimizers.append(torch.optim.Adam(others, lr=0.05, weight_decay=params["weight_decay"]))
    users, items, targets = (torch.as_tensor(a) for a in TRAIN)
    user_weight, item_weight = frequency_weights(users, N_USERS), frequency_weights(items, N_ITEMS)
    losses = []
    for _ in range(2):
        loss_sum = 0.0
        for start in range(0, len(targets), 100):  # batches repeat users and items
            u, i, r = users[start : start + 100], items[start : start + 100], targets[start : start + 100]
            if l2:
                pred, user_sq, item_sq = reference.forward_with_norms(u, i)
                loss = torch.nn.functional.mse_loss(pred, r)
                objective = loss + l2 * (user_sq * user_weight[u] + item_sq * item_weight[i]).mean()
            else:
                loss = objective = torch.nn.functional.mse_loss(reference(u, i), r)
            for optimizer in optimizers:
                optimizer.zero_grad()
            objective.backward()
            for optimizer in optimizers:
                optimizer.step()
            loss_sum += loss.item() * len(r)
        losses.append(loss_sum / len(targets))
    assert [h["train_loss"] for h in result.history] == pytest.approx(losses, rel=1e-4)
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(unwrap(model).state_dict()[name], tensor, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the accurate preset: MSE, frequency-weighted L2, StepLR, shuffled
        {"loss": "l1", "weight_decay": 0.0, "batch_size": 37, "shuffle": False},  # a short last batch; stored order
        {"weight_decay": 0.0, "learning_rate": 0.05, "factors": 32, "epochs": 30, "patience": 2},  # stops early
    ],
)
def test_fused_epoch_equals_pytorch_steps(monkeypatch, overrides):
    """The compiled biased-mf + sparse Adam epoch computes what the PyTorch path computes."""
    from modelyard.recommender import fused

    calls = []
    run_epoch = fused.FusedSparseAdam.run_epoch
    monkeypatch.setattr(fused.FusedSparseAdam, "run_epoch", lambda self, *a: calls.append(1) or run_epoch(self, *a))
    runs = []
    for use_fused in (True, False):
        params = resolve_params("accurate", {"epochs": 6, "batch_size": 128, "step_size": 2, "device": "cpu",
                                             **overrides, "fused": use_fused})
        model = build_model(params, N_USERS, N_ITEMS, global_mean=3.0)
        runs.append((fit(model, TRAIN, VAL, params), unwrap(model).state_dict()))
    (fast, fast_weights), (slow, slow_weights) = runs
    assert len(calls) == len(fast.history) >= 3  # every epoch of the first run was fused, none of the second
    assert fast.best_epoch == slow.best_epoch and len(fast.history) == len(slow.history)
    for name in ("train_loss", "val_loss"):
        assert [h[name] for h in fast.history] == pytest.approx([h[name] for h in slow.history], rel=1e-4)
    for name, tensor in slow_weights.items():
        torch.testing.assert_close(fast_weights[name], tensor, rtol=1e-3, atol=1e-4)  # summation order


def test_fused_only_where_it_applies():
    from modelyard.recommender import fused

    cpu = torch.device("cpu")
    accurate = resolve_params("accurate", {"device": "cpu"})
    biased = unwrap(build_model(accurate, N_USERS, N_ITEMS, 3.0))
    assert fused.supports(biased, accurate, cpu)
    for overrides in ({"fused": False}, {"optimizer": "sgd"}, {"optimizer": "adam"}):
        assert not fused.supports(biased, {**accurate, **overrides}, cpu)
    assert not fused.supports(biased, accurate, torch.device("cuda"))
    assert not fused.supports(unwrap(build_model({**accurate, "model": "mlp-mf"}, N_USERS, N_ITEMS, 3.0)), accurate, cpu)


def test_the_train_step_takes_every_hyperparameter():
    """A hyperparameter the train step does not declare would silently keep its preset value."""
    import inspect

    from modelyard.recommender import steps

    assert set(PRESETS["textbook"]) <= set(inspect.signature(steps.train).parameters)


@pytest.mark.parametrize("fused", [True, False])
def test_diverging_training_is_an_error(fused):
    params = resolve_params("accurate", {"learning_rate": 1e30, "epochs": 3, "device": "cpu", "fused": fused})
    model = build_model(params, N_USERS, N_ITEMS, 3.0)
    with pytest.raises(ValueError, match="training diverged: train_loss is (nan|inf) in epoch"):
        fit(model, TRAIN, VAL, params)


def test_fit_rejects_bad_input():
    params = resolve_params("accurate", {"epochs": 1, "device": "cpu"})
    model = build_model(params, N_USERS, N_ITEMS, 3.0)
    users, items, ratings = TRAIN
    with pytest.raises(ValueError, match="item indices must lie in 0..29"):
        fit(model, (users, items + 1, ratings), None, params)
    with pytest.raises(ValueError, match="no training ratings"):
        fit(model, (users[:0], items[:0], ratings[:0]), None, params)
    with pytest.raises(ValueError, match="missing parameters .*epochs"):
        fit(model, TRAIN, None, {k: v for k, v in params.items() if k != "epochs"})


def test_fit_without_val():
    params = resolve_params("accurate", {"epochs": 2, "device": "cpu"})
    result = fit(build_model(params, N_USERS, N_ITEMS, 3.0), TRAIN, None, params)
    assert result.best_epoch == 2 and len(result.train_seconds) == 2
    assert all(np.isnan(h["val_loss"]) for h in result.history)


@pytest.mark.parametrize("loss", ["l1", "mse"])
@pytest.mark.parametrize("dropout", [0.2, 0.0])
def test_mlp_mf_sgd_step_equals_autograd_and_torch_sgd(loss, dropout):
    torch.manual_seed(3)
    net = MLPMF(12, 9, factors=4, hidden_dims=8, dropout=dropout, sparse=True)
    reference = copy.deepcopy(net)
    users, items = torch.tensor([0, 3, 3, 7, 11, 0]), torch.tensor([1, 1, 4, 8, 2, 1])  # repeated rows and a repeated pair
    ratings = torch.tensor([4.0, 3.5, 1.0, 5.0, 2.5, 4.0])
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    criterion = torch.nn.L1Loss() if loss == "l1" else torch.nn.MSELoss()
    for step in range(3):
        torch.manual_seed(100 + step)  # the same dropout mask on both sides
        expected = criterion(reference(users, items), ratings)
        optimizer.zero_grad()
        expected.backward()
        optimizer.step()
        torch.manual_seed(100 + step)
        total = net.sgd_step(users, items, ratings, 0.1, loss)
        assert float(total) / len(ratings) == pytest.approx(expected.item(), rel=1e-6)
    for (name, a), b in zip(net.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
