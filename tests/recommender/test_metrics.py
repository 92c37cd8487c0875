"""Hand-computed tiny cases for every metric of modelyard.recommender.evaluate."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from modelyard.recommender.evaluate import mae, precision_recall_at_k, predict, ranking_metrics, rmse
from modelyard.recommender.model import BiasedMF, PairScorer


class FixedScores(nn.Module):
    """A 'model' whose full-catalog scores are a given matrix (no parameters)."""

    def __init__(self, scores):
        super().__init__()
        self.register_buffer("scores", torch.tensor(scores, dtype=torch.float32))

    def score_all_items(self, users):
        return self.scores[users]


def test_rmse_and_mae():
    # errors: -0.5, 0, 1 -> MSE = (0.25 + 0 + 1) / 3 = 5/12, RMSE = sqrt(5/12); MAE = 1.5 / 3 = 0.5
    assert rmse([3, 4, 5], [2.5, 4, 6]) == pytest.approx(math.sqrt(5 / 12))
    assert mae([3, 4, 5], [2.5, 4, 6]) == pytest.approx(0.5)


def test_predict_matches_forward_and_does_not_clip():
    torch.manual_seed(0)
    model = PairScorer(BiasedMF(3, 4, factors=2, global_mean=10.0))
    users, items = np.array([0, 1, 2, 2]), np.array([3, 0, 1, 1])
    pred = predict(model, users, items, batch_size=3)
    with torch.no_grad():
        expected = model(torch.tensor(np.stack([users, items], 1))).numpy()
    assert pred.dtype == np.float32
    np.testing.assert_allclose(pred, expected, rtol=1e-6)
    assert (pred > 5).all()  # global mean 10: nothing clipped to the rating scale


def test_precision_recall_at_k_hand_computed():
    # k = 2, threshold = 3; rows of different users interleaved on purpose.
    # user 0: (true, pred) = (4, 4.5) (2, 3.5) (5, 2.0) (3, 3.2)
    #   top 2 by pred: (4, 4.5), (2, 3.5); both recommended (pred >= 3) -> n_rec = 2
    #   relevant (true >= 3) over all its ratings: 4, 5, 3 -> n_rel = 3; hits: (4, 4.5) -> 1
    #   precision = 1/2, recall = 1/3
    # user 1: (1, 3.5) (2, 2.0) (2, 1.0): n_rec = 1, n_rel = 0, hits 0
    #   precision = 0/1 = 0, recall = 0 (no relevant item -> 0 by convention)
    # user 2: (5, 2.9) (4, 2.5): n_rec = 0 -> precision 0 (convention); n_rel = 2, hits 0 -> recall 0
    # user 3: (5, 3.0) (1, 3.0) (4, 4.0): tie at 3.0 keeps input order -> top 2 = (4, 4.0), (5, 3.0)
    #   n_rec = 2, n_rel = 2, hits 2 -> precision 1, recall 1
    # mean precision = (1/2 + 0 + 0 + 1) / 4 = 0.375; mean recall = (1/3 + 0 + 0 + 1) / 4 = 1/3
    rows = [  # (user, true, pred)
        (0, 4, 4.5), (1, 1, 3.5), (3, 5, 3.0), (0, 2, 3.5), (2, 5, 2.9), (1, 2, 2.0),
        (0, 5, 2.0), (3, 1, 3.0), (2, 4, 2.5), (1, 2, 1.0), (0, 3, 3.2), (3, 4, 4.0),
    ]
    users, y_true, y_pred = (np.array(c) for c in zip(*rows))
    precision, recall = precision_recall_at_k(users, y_true, y_pred, top_k=2, threshold=3.0)
    assert precision == pytest.approx(0.375)
    assert recall == pytest.approx(1 / 3)


def test_precision_recall_at_k_large_k_and_empty():
    # k larger than every user: user 0 of the case above has top 4 -> recommended: 4.5, 3.5, 3.2
    # (n_rec = 3), hits: true 4 and 3 -> 2; precision 2/3, recall 2/3
    p, r = precision_recall_at_k([0, 0, 0, 0], [4, 2, 5, 3], [4.5, 3.5, 2.0, 3.2], top_k=50)
    assert (p, r) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert all(math.isnan(v) for v in precision_recall_at_k([], [], []))


# Scores for 4 users x 6 items; k = 3, threshold = 3.
SCORES = [
    [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # user 0
    [0.5, 0.5, 0.5, 0.5, 0.1, 0.9],  # user 1: four-way tie
    [0.1, 0.1, 0.1, 0.1, 0.1, 0.1],  # user 2: no relevant val item -> skipped
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # user 3
]
TRAIN = [(0, 0), (1, 5), (3, 5), (3, 4)]  # (user, item) seen in training: excluded from ranking
VAL = [  # (user, item, rating)
    (0, 1, 4), (0, 3, 5), (0, 2, 1),
    (1, 3, 5), (1, 2, 3),  # rating 3 is relevant (>= threshold)
    (2, 0, 2),
    (3, 0, 5),
]
# user 0: candidates 1..5 -> top 3 = items 1, 2, 3; hits [1, 0, 1]; R = 2
#   DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3) = 1.6309298 -> NDCG = 0.9197204
#   hit 1; AP = (1/1 + 2/3) / min(2, 3) = 0.8333333; recall = 2/2 = 1
# user 1: item 5 excluded; items 0..3 tie at 0.5 -> lower index wins: top 3 = 0, 1, 2; hits [0, 0, 1]
#   DCG = 1/log2(4) = 0.5 -> NDCG = 0.5 / 1.6309298 = 0.3065735; hit 1; AP = (1/3) / 2 = 0.1666667;
#   recall = 1/2
# user 2: skipped (no relevant val item)
# user 3: items 4, 5 excluded -> top 3 = 3, 2, 1; relevant {0}: no hit -> all 0
# means over 3 users: NDCG = (0.9197204 + 0.3065735 + 0) / 3 = 0.4087646; hit rate = 2/3;
#   MAP = (0.8333333 + 0.1666667 + 0) / 3 = 1/3; recall = (1 + 0.5 + 0) / 3 = 0.5
@pytest.mark.parametrize("chunk_size", [1, 2, 1024])
def test_ranking_metrics_hand_computed(chunk_size):
    tu, ti = (np.array(c) for c in zip(*TRAIN))
    vu, vi, vr = (np.array(c) for c in zip(*VAL))
    got = ranking_metrics(
        FixedScores(SCORES), vu, vi, vr.astype(np.float32), tu, ti, n_items=6, top_k=3, threshold=3.0,
        chunk_size=chunk_size,
    )
    assert got["n_ranked_users"] == 3
    assert got["ndcg_at_k"] == pytest.approx(0.4087646, abs=1e-6)
    assert got["hit_rate_at_k"] == pytest.approx(2 / 3)
    assert got["map_at_k"] == pytest.approx(1 / 3)
    assert got["recall_at_k_catalog"] == pytest.approx(0.5)


def test_ranking_metrics_fewer_candidates_than_k():
    # 4 items, k = 3; user 0 rated items 0 and 1 in training -> only items 3 (0.2), 2 (0.1) are
    # candidates; the third slot is an excluded item and never counts as a hit.
    # Relevant val items: 3 and 0 (0 was also rated in training -> cannot be recommended), R = 2.
    # hits [1, 0, 0]: NDCG = 1 / (1 + 1/log2(3)) = 0.6131472; hit 1; AP = 1 / min(2, 3) = 0.5;
    # recall = 1/2
    got = ranking_metrics(
        FixedScores([[0.9, 0.8, 0.1, 0.2]]), [0, 0], [3, 0], [5.0, 5.0], [0, 0], [0, 1], n_items=4, top_k=3
    )
    assert got["ndcg_at_k"] == pytest.approx(0.6131472, abs=1e-6)
    assert (got["hit_rate_at_k"], got["map_at_k"], got["recall_at_k_catalog"]) == (1.0, 0.5, 0.5)


def test_ranking_metrics_no_relevant_users():
    got = ranking_metrics(FixedScores([[0.1, 0.2]]), [0], [1], [1.0], [0], [0], n_items=2, top_k=1)
    assert got["n_ranked_users"] == 0 and math.isnan(got["ndcg_at_k"])


def test_ranking_metrics_with_real_model_matches_forward_scores():
    # score_all_items must agree with forward; a biased MF is ranked the same either way.
    torch.manual_seed(1)
    model = PairScorer(BiasedMF(5, 7, factors=3, global_mean=3.5))
    rng = np.random.default_rng(0)
    vu, vi = rng.integers(0, 5, 20), rng.integers(0, 7, 20)
    vr = rng.integers(1, 6, 20).astype(np.float32)
    dense = predict(model, np.repeat(np.arange(5), 7), np.tile(np.arange(7), 5)).reshape(5, 7)
    a = ranking_metrics(model, vu, vi, vr, [0, 1], [2, 3], n_items=7, top_k=3)
    b = ranking_metrics(FixedScores(dense.tolist()), vu, vi, vr, [0, 1], [2, 3], n_items=7, top_k=3)
    assert a == pytest.approx(b)
