"""The promotion gate's arithmetic and the registry's alias moves, on a real SQLite MLflow store."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from modelyard import registry
from modelyard.errors import RegistryError
from modelyard.registry import Gate, decide

TEXTBOOK = [Gate("rmse", "lower", 0.0), Gate("precision_at_k", "higher", -0.3), Gate("recall_at_k", "higher", -0.2)]


def test_signed_thresholds_as_in_the_textbook():
    staging = {"rmse": 0.90, "precision_at_k": 0.60, "recall_at_k": 0.50}
    # rmse equal (delta 0 <= 0), precision down 0.3 (>= -0.3), recall down 0.2 (>= -0.2): passes at the edges
    ok, reasons = decide({"rmse": 0.90, "precision_at_k": 0.30, "recall_at_k": 0.30}, staging, TEXTBOOK)
    assert ok and len(reasons) == 3 and all(r.endswith("pass") for r in reasons)
    ok, reasons = decide({"rmse": 0.9001, "precision_at_k": 0.9, "recall_at_k": 0.9}, staging, TEXTBOOK)
    assert not ok and reasons[0].endswith("FAIL") and "+0.0001" in reasons[0]
    ok, reasons = decide({"rmse": 0.5, "precision_at_k": 0.29, "recall_at_k": 0.9}, staging, TEXTBOOK)
    assert not ok and reasons[1].endswith("FAIL")
    ok, reasons = decide({"rmse": 0.5, "precision_at_k": 0.9}, staging, TEXTBOOK)
    assert not ok and "recall_at_k: missing on the challenger" in reasons[2]


def test_a_positive_threshold_demands_improvement():
    ok, _ = decide({"map50_95": 0.31}, {"map50_95": 0.30}, [Gate("map50_95", "higher", 0.02)])
    assert not ok
    ok, _ = decide({"map50_95": 0.33}, {"map50_95": 0.30}, [Gate("map50_95", "higher", 0.02)])
    assert ok


def test_a_nan_challenger_fails_and_a_nan_incumbent_is_replaced():
    nan = float("nan")
    ok, reasons = decide({"rmse": nan, "precision_at_k": 0.9, "recall_at_k": 0.9}, {"rmse": 1.0, "precision_at_k": 0.1, "recall_at_k": 0.1}, TEXTBOOK)
    assert not ok and reasons[0] == "rmse: challenger's value nan is not a number: FAIL"
    ok, reasons = decide({"rmse": 2.0, "precision_at_k": 0.5, "recall_at_k": 0.5}, {"rmse": nan, "precision_at_k": 0.5, "recall_at_k": 0.5}, TEXTBOOK)
    assert ok and "the current model's value is not a number" in reasons[0]


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("gate", artifact_location=(tmp_path / "art").as_uri())

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return [1.0] * len(model_input)

    def make_run(rmse: float, dataset: str = "ml-latest-small", threshold: float = 3.0) -> str:
        with mlflow.start_run(experiment_id=experiment, tags={"dataset": dataset}) as run:
            mlflow.log_metrics({"rmse": rmse, "precision_at_k": 0.5, "recall_at_k": 0.5})
            mlflow.log_param("threshold", threshold)
            mlflow.pyfunc.log_model(name="model", python_model=Constant(), pip_requirements=["mlflow"])
        return run.info.run_id

    return make_run


def test_alias_moves_only_through_the_gate_and_rolls_back(store):
    first, worse, better = store(1.0), store(1.2), store(0.8)
    d1 = registry.promote_if_better("m", first, f"runs:/{first}/model", TEXTBOOK)
    assert d1.promoted and d1.version == "1"
    d2 = registry.promote_if_better("m", worse, f"runs:/{worse}/model", TEXTBOOK)
    assert not d2.promoted and d2.version == "2"
    assert str(registry.require_alias("m", "staging").version) == "1"
    d3 = registry.promote_if_better("m", better, f"runs:/{better}/model", TEXTBOOK)
    assert d3.promoted and d3.previous_version == "1"
    assert str(registry.require_alias("m", "staging").version) == "3"
    # the same run again: nothing changes, no new version
    again = registry.promote_if_better("m", better, f"runs:/{better}/model", TEXTBOOK)
    assert not again.promoted and len(MlflowClient().search_model_versions("name='m'")) == 3
    # prod by hand, then rollback walks the history back
    with pytest.raises(RegistryError, match="@prod.*@staging -> v3"):
        registry.require_alias("m", "prod")
    registry.promote_version("m", "prod", 1)
    registry.promote_version("m", "prod", 3)
    back = registry.rollback("m", "prod")
    assert back.version == "1" and str(registry.require_alias("m", "prod").version) == "1"
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback("m", "prod")
    with pytest.raises(RegistryError, match="has no version 9"):
        registry.promote_version("m", "prod", 9)
    # "@prod" as users write it; "latest" is MLflow's own and never moves, however many versions exist
    assert registry.promote_version("m", "@prod", 3).reasons == ["promoted by hand (no gate applied)"]
    assert str(registry.require_alias("m", "@prod").version) == "3"
    for alias in ("latest", "@Latest"):
        with pytest.raises(RegistryError, match="@latest is MLflow's own name"):
            registry.promote_version("m", alias, 3)
    with pytest.raises(RegistryError, match="an alias needs a name"):
        registry.promote_version("m", "@", 3)
    tags = MlflowClient().get_model_version("m", "2").tags
    assert tags["modelyard.decision.staging"].startswith("rejected") and "rmse: 1.2000 vs 1.0000" in tags["modelyard.reasons.staging"]


def test_a_first_candidate_with_nan_metrics_is_not_promoted(store):
    broken = store(float("nan"))
    decision = registry.promote_if_better("m", broken, f"runs:/{broken}/model", TEXTBOOK)
    assert not decision.promoted and "non-finite rmse" in decision.reasons[0]
    with pytest.raises(RegistryError, match="@staging"):
        registry.require_alias("m", "staging")


def test_every_decision_is_logged_and_incomparable_models_are_not_promoted(store):
    first, other_data = store(1.0), store(0.5, dataset="ml-100k")
    registry.promote_if_better("m", first, f"runs:/{first}/model", TEXTBOOK, comparable_on=("dataset",))
    refused = registry.promote_if_better("m", other_data, f"runs:/{other_data}/model", TEXTBOOK, comparable_on=("dataset",))
    assert not refused.promoted and "dataset: ml-100k vs ml-latest-small" in refused.reasons[0]
    other_eval = store(0.5, threshold=9.0)  # better rmse, but scored with another relevance threshold
    refused = registry.promote_if_better("m", other_eval, f"runs:/{other_eval}/model", TEXTBOOK, comparable_on=("dataset", "threshold"))
    assert not refused.promoted and refused.reasons[0].startswith("threshold: 9.0 vs 3.0 held by @staging (v1): not comparable")
    assert str(registry.require_alias("m", "staging").version) == "1"
    registry.promote_version("m", "prod", 1)
    registry.promote_version("m", "prod", 2)
    registry.rollback("m", "prod")
    log1 = registry.decision_log("m", "1")
    assert [(e["alias"], e["decision"]) for e in log1] == [("staging", "promoted"), ("prod", "promoted"), ("prod", "rolled back to")]
    assert log1[0]["reasons"] == ["no model held @staging yet: the first candidate is promoted"]
    log2 = registry.decision_log("m", "2")
    assert registry.decision_log("m", "3")[0]["decision"] == "rejected"
    assert [(e["alias"], e["decision"]) for e in log2] == [("staging", "rejected"), ("prod", "promoted"), ("prod", "rolled back from")]


def test_serving_a_model_that_is_not_a_recommender_says_so(store, tmp_path):
    from modelyard.errors import ModelyardError
    from modelyard.recommender.infer import load_recommender

    run = store(1.0)
    registry.promote_if_better("not-a-recommender", run, f"runs:/{run}/model", TEXTBOOK)
    with pytest.raises(ModelyardError, match=r"not-a-recommender v1 \(@staging\) is not a recommender model"):
        load_recommender("@staging", model_name="not-a-recommender", tracking_uri=mlflow.get_tracking_uri())


def test_serving_a_model_that_is_not_a_detector_says_so(store, tmp_path):
    from modelyard.detection.infer import load_detector
    from modelyard.errors import ModelyardError

    run = store(1.0)
    registry.promote_if_better("not-a-detector", run, f"runs:/{run}/model", TEXTBOOK)
    with pytest.raises(ModelyardError, match=r"not-a-detector v1 \(@staging\) is not a detector model"):
        load_detector("not-a-detector", "staging", tracking_uri=mlflow.get_tracking_uri(), volume=str(tmp_path))
