"""`modelyard compile`: the KFP v2 YAML mirrors the Pipeline graph, and the same pipeline runs under kfp.local."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from movielens_factory import make_movielens_zip

kfp = pytest.importorskip("kfp")
pytest.importorskip("kfp.kubernetes")

from modelyard.cli import app  # noqa: E402
from modelyard.errors import ModelyardError  # noqa: E402
from modelyard.pipeline import kubeflow  # noqa: E402
from modelyard.pipeline.graph import Pipeline  # noqa: E402

runner = CliRunner()
PVC_TASKS = {"createpvc", "deletepvc"}
CUSTOM = dict(image="registry.example.com/modelyard:9.9", pvc_size="3Gi", storage_class="fast-ssd",
              access_mode="ReadWriteMany", mount_path="/data/vol", delete_pvc=True)


def read_yaml(path: Path) -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 2, "pipeline spec + Kubernetes platform spec"
    return docs[0], docs[1]


def step_tasks(spec: dict) -> dict[str, dict]:
    """Step name (taskInfo.name) -> task, PVC tasks left out."""
    return {t["taskInfo"]["name"]: t for key, t in spec["root"]["dag"]["tasks"].items() if key not in PVC_TASKS}


def pipeline_of(target: str) -> Pipeline:
    if target == "detection":
        module = pytest.importorskip("modelyard.detection.pipeline")
        if not callable(getattr(module, "build", None)):
            pytest.skip("modelyard.detection.pipeline has no build() yet")
    return kubeflow.load_pipeline(target)


def expected_params(pipeline: Pipeline, options: kubeflow.ClusterOptions) -> dict:
    expected = {k: v for k, v in pipeline.params.items() if k != "volume" and k not in kubeflow.COMPILE_TIME}
    if "tracking_uri" in expected:
        expected["tracking_uri"] = f"sqlite:///{options.mount_path}/mlflow.db"
    if "lake" in expected:
        expected["lake"] = f"{options.mount_path}/lake"
    return expected


KFP_TYPES = {bool: "BOOLEAN", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", str: "STRING"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """target -> (options, pipeline spec, platform spec), compiled once per target through the CLI."""
    cache: dict = {}

    def get(target: str):
        if target not in cache:
            options = kubeflow.ClusterOptions(**CUSTOM)
            out = tmp_path_factory.mktemp("kfp") / f"{target}.yaml"
            result = runner.invoke(app, ["compile", target, "-o", str(out), "--image", options.image,
                                         "--pvc-size", options.pvc_size, "--storage-class", options.storage_class,
                                         "--access-mode", options.access_mode, "--mount-path", options.mount_path,
                                         "--delete-pvc"])
            assert result.exit_code == 0, result.output
            cache[target] = (options, *read_yaml(out))
        return cache[target]

    return get


@pytest.mark.parametrize("target", ["recommender", "detection"])
def test_dag_edges_equal_the_local_graph(compiled, target):
    pipeline = pipeline_of(target)
    _, spec, _ = compiled(target)
    tasks = step_tasks(spec)
    assert set(tasks) == {s.name for s in pipeline.steps}
    edges = {(up, name) for name, t in tasks.items() for up in t.get("dependentTasks", []) if up not in PVC_TASKS}
    assert edges == pipeline.edges()
    # every step waits for the volume; the volume is deleted only after every step
    assert all("createpvc" in t["dependentTasks"] for t in tasks.values())
    delete = spec["root"]["dag"]["tasks"]["deletepvc"]
    assert set(delete["dependentTasks"]) - PVC_TASKS == set(tasks)


@pytest.mark.parametrize("target", ["recommender", "detection"])
def test_parameters_and_defaults_equal_the_pipeline_params(compiled, target):
    pipeline = pipeline_of(target)
    options, spec, _ = compiled(target)
    declared = spec["root"]["inputDefinitions"]["parameters"]
    expected = expected_params(pipeline, options)
    assert {k: v["defaultValue"] for k, v in declared.items()} == expected
    planned = kubeflow.plan(pipeline, target, options).params
    for name, value in expected.items():
        typ = planned[name][0]
        assert declared[name]["parameterType"] == KFP_TYPES[typ], name
        assert isinstance(value, typ) or (typ is float and isinstance(value, int)), name


@pytest.mark.parametrize("target", ["recommender", "detection"])
def test_every_step_mounts_the_pvc_and_reads_the_volume_there(compiled, target):
    pipeline = pipeline_of(target)
    options, spec, platform = compiled(target)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    tasks = step_tasks(spec)
    for name, task in tasks.items():
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        mounts = executors[executor]["pvcMount"]
        assert [m["mountPath"] for m in mounts] == [options.mount_path], name
        assert mounts[0]["pvcNameParameter"]["taskOutputParameter"] == {"outputParameterKey": "name", "producerTask": "createpvc"}
        if "volume" in pipeline.step(name).signature().parameters:
            assert task["inputs"]["parameters"]["volume"] == {"runtimeValue": {"constant": options.mount_path}}, name
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        assert container["image"] == options.image
        assert not any("pip install" in part for part in container["command"]), "kfp comes with the image"
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert env["MODELYARD_WORKSPACE"] == options.mount_path


@pytest.mark.parametrize("target", ["recommender", "detection"])
def test_caching_is_off_for_every_task_and_the_pvc_is_as_asked(compiled, target):
    pipeline_of(target)
    options, spec, _ = compiled(target)
    for key, task in spec["root"]["dag"]["tasks"].items():
        assert not task.get("cachingOptions", {}).get("enableCache", False), key
    create = spec["root"]["dag"]["tasks"]["createpvc"]["inputs"]["parameters"]
    assert create["size"]["runtimeValue"]["constant"] == options.pvc_size
    assert create["access_modes"]["runtimeValue"]["constant"] == [options.access_mode]
    assert create["storage_class_name"]["runtimeValue"]["constant"] == options.storage_class


@pytest.mark.parametrize("target", ["recommender", "detection"])
def test_components_are_generated_from_the_step_signatures(compiled, target):
    pipeline = pipeline_of(target)
    _, spec, _ = compiled(target)
    for name, task in step_tasks(spec).items():
        step = pipeline.step(name)
        component = spec["components"][task["componentRef"]["name"]]
        bound = {a for a in step.signature().parameters
                 if a in step.inputs or (a in pipeline.params and a not in kubeflow.COMPILE_TIME)}
        first = name == pipeline.steps[0].name  # also gets every run parameter, to check them before any work
        if first:
            bound |= set(pipeline.params) - {"volume"} - kubeflow.COMPILE_TIME
        assert set(component["inputDefinitions"]["parameters"]) == bound, name
        outputs = component.get("outputDefinitions", {})
        assert set(step.outputs) <= set(outputs.get("parameters", {})), name
        if step.metrics:
            assert outputs["artifacts"]["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
        executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
        source = executor["command"][-1]
        assert f"call_step({target!r}, {name!r}, {{" in source
        assert ("check=True" in source) is first, name
        for arg in bound:  # every argument is passed through by name, none hand-copied
            assert f"{arg!r}: {arg}" in source, (name, arg)


def test_validate_emits_kfp_metrics_and_run_ids_travel_as_outputs(compiled):
    _, spec, _ = compiled("recommender")
    tasks = step_tasks(spec)
    assert tasks["validate"]["inputs"]["parameters"]["run_id"] == {
        "taskOutputParameter": {"outputParameterKey": "run_id", "producerTask": "train"}}
    validate = spec["components"][tasks["validate"]["componentRef"]["name"]]
    assert {k: v["parameterType"] for k, v in validate["outputDefinitions"]["parameters"].items()} == {
        "rmse": "NUMBER_DOUBLE", "mae": "NUMBER_DOUBLE", "precision_at_k": "NUMBER_DOUBLE", "recall_at_k": "NUMBER_DOUBLE"}


def test_default_cluster_options_put_tracking_and_lake_on_the_pvc(tmp_path):
    out = kubeflow.compile_pipeline("recommender", tmp_path / "sub" / "r.yaml", kubeflow.ClusterOptions(), preset="accurate")
    spec, platform = read_yaml(out)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["tracking_uri"]["defaultValue"] == "sqlite:////mnt/pipeline/mlflow.db"
    assert params["lake"]["defaultValue"] == "/mnt/pipeline/lake"
    assert "volume" not in params
    from modelyard.recommender.pipeline import default_params

    assert params["model"]["defaultValue"] == default_params("accurate")["model"] != default_params("textbook")["model"]
    # the preset is fixed by compile (a run parameter would relabel runs without changing their defaults)
    assert "preset" not in params
    train = spec["deploymentSpec"]["executors"][spec["components"][step_tasks(spec)["train"]["componentRef"]["name"]]["executorLabel"]]
    assert "preset='accurate'" in " ".join(train["container"]["command"])
    assert "deletepvc" not in spec["root"]["dag"]["tasks"]
    create = spec["root"]["dag"]["tasks"]["createpvc"]["inputs"]["parameters"]
    assert "storage_class_name" not in create  # "" = not set: KFP's own default
    assert create["access_modes"]["runtimeValue"]["constant"] == ["ReadWriteOnce"]
    mounts = {m["mountPath"] for e in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
              for m in e["pvcMount"]}
    assert mounts == {"/mnt/pipeline"}


def test_s3_credentials_come_from_a_kubernetes_secret(tmp_path):
    options = kubeflow.ClusterOptions(s3_secret="modelyard-s3", s3_endpoint="http://minio.kubeflow:9000")
    spec, platform = read_yaml(kubeflow.compile_pipeline("recommender", tmp_path / "r.yaml", options))
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, task in step_tasks(spec).items():
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        keys, session = executors[label]["secretAsEnv"]
        assert keys["secretName"] == session["secretName"] == "modelyard-s3"
        assert {m["envVar"] for m in keys["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} and not keys.get("optional")
        assert [m["envVar"] for m in session["keyToEnv"]] == ["AWS_SESSION_TOKEN"] and session["optional"] is True
        env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"][label]["container"]["env"]}
        assert env["MODELYARD_S3_ENDPOINT"] == "http://minio.kubeflow:9000"


def test_an_existing_pvc_and_mlflow_credentials_from_a_secret(tmp_path):
    options = kubeflow.ClusterOptions(existing_pvc="modelyard-data", mlflow_secret="mlflow-auth")
    spec, platform = read_yaml(kubeflow.compile_pipeline("recommender", tmp_path / "r.yaml", options))
    assert not {"createpvc", "deletepvc"} & set(spec["root"]["dag"]["tasks"])
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, task in step_tasks(spec).items():
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        (mount,) = executors[label]["pvcMount"]
        assert mount["mountPath"] == "/mnt/pipeline" and "modelyard-data" in json.dumps(mount), name
        (secret,) = executors[label]["secretAsEnv"]
        assert secret["secretName"] == "mlflow-auth" and secret["optional"] is True
        assert {m["envVar"] for m in secret["keyToEnv"]} == set(kubeflow.MLFLOW_SECRET_KEYS)
    assert "mlflow-auth" not in json.dumps(spec["root"]["inputDefinitions"])  # no run parameter carries it


@pytest.mark.parametrize(("args", "words"), [
    (["compile", "nosuchthing"], ["unknown pipeline", "nosuchthing", "recommender"]),
    (["compile", "recommender", "--mount-path", "relative/dir"], ["mount-path", "relative/dir"]),
    (["compile", "recommender", "--mount-path", "//"], ["mount-path /", "root"]),
    (["compile", "recommender", "--access-mode", "Sometimes"], ["access-mode", "Sometimes"]),
    (["compile", "recommender", "--pvc-size", "lots"], ["pvc-size", "lots"]),
    (["compile", "recommender", "--pvc-size", "0"], ["pvc-size", "'0'"]),
    (["compile", "recommender", "--existing-pvc", "data", "--delete-pvc"], ["--delete-pvc with --existing-pvc data"]),
    (["compile", "recommender", "--mlflow-secret", "My_Secret"], ["--mlflow-secret 'My_Secret' is not a Kubernetes object name"]),
    (["compile", "recommender", "--storage-class", "Bad Class!"], ["--storage-class 'Bad Class!' is not a Kubernetes object name"]),
])
def test_compile_errors_are_one_clear_line(tmp_path, args, words):
    result = runner.invoke(app, [*args[:2], "-o", str(tmp_path / "x.yaml"), *args[2:]])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert all(w in result.output for w in words), result.output
    assert not (tmp_path / "x.yaml").exists()


def test_call_step_runs_the_step_function_and_exits_cleanly_on_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        kubeflow.call_step("recommender", "check", {"lake": str(tmp_path / "empty-lake"), "dataset_digest": "x",
                                                    "dataset": "ml-latest-small"})
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error:" in err and "not found in the lake" in err and "Traceback" not in err
    with pytest.raises(ModelyardError, match="unknown pipeline"):
        kubeflow.load_pipeline("nope")


def test_the_first_component_refuses_bad_run_parameters_before_any_work(tmp_path, capsys):
    from modelyard.recommender.pipeline import build

    values = {**build().params, "volume": str(tmp_path / "vol"), "lake": "", "tracking_uri": "", "top_k": 0}
    values.pop("preset")
    with pytest.raises(SystemExit) as exit_info:
        kubeflow.call_step("recommender", "download", values, outputs=[("archive", "str")], check=True)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error: parameter 'top_k' must be >= 1, got 0" in err and "Traceback" not in err
    assert not (tmp_path / "vol" / "raw").exists()  # nothing was downloaded


def test_generated_components_have_source_for_kfp():
    pipeline = kubeflow.load_pipeline("recommender")
    p = kubeflow.plan(pipeline, "recommender", cluster=False)
    components = kubeflow.make_components(p, "img")
    fn = components["train"].python_func
    assert inspect.getsource(fn).startswith("def train(")
    assert "volume" in inspect.signature(fn).parameters  # a parameter of the local build


# ---------------------------------------------------------------------------------------------------------------
# The same pipeline function under kfp.local
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task that uses custom or non-Python base image")
def test_pipeline_runs_under_kfp_local(tmp_path, monkeypatch, capfd, http_server, http_served_dir):
    import kfp.local
    from mlflow.tracking import MlflowClient

    from modelyard.recommender.pipeline import build
    from modelyard.recommender.steps import EXPERIMENT, MODEL_NAME

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the steps get every setting as a parameter
    make_movielens_zip(http_served_dir / "ml-latest-small.zip", n_users=30, n_items=40, n_ratings=300)
    volume = tmp_path / "volume"
    root = tmp_path / "kfp-root"
    tracking_uri = f"sqlite:///{volume / 'mlflow.db'}"
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    pipeline_func = kubeflow.build_kfp_pipeline(build(), cluster=False)
    pipeline_func(volume=str(volume), lake=str(volume / "lake"), tracking_uri=tracking_uri,
                  source=f"{http_server}/ml-latest-small.zip", epochs=1, batch_size=1024)

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert int(run.data.params["epochs"]) == 1 and int(run.data.params["batch_size"]) == 1024
    for metric in ("rmse", "mae", "precision_at_k", "recall_at_k", "train_loss"):
        assert metric in run.data.metrics, metric
    staging = client.get_model_version_by_alias(MODEL_NAME, "staging")
    assert staging.run_id == run.info.run_id

    # KFP outputs: the run id travelled train -> validate; validate's Output[Metrics] holds MLflow's numbers
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    train_out = json.loads((run_dir / "train" / "executor_output.json").read_text())
    assert train_out["parameterValues"]["run_id"] == run.info.run_id
    validate_out = json.loads((run_dir / "validate" / "executor_output.json").read_text())
    kfp_metrics = validate_out["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert kfp_metrics["rmse"] == pytest.approx(run.data.metrics["rmse"])
    assert validate_out["parameterValues"]["precision_at_k"] == pytest.approx(run.data.metrics["precision_at_k"])
    promote_out = json.loads((run_dir / "promote" / "executor_output.json").read_text())
    assert promote_out["parameterValues"]["version"] == str(staging.version)
    # the volume holds the download and the lake, as in a local run
    assert (volume / "raw" / "movielens" / "ml-latest-small.zip").exists()
    assert (volume / "lake" / "movielens" / "ml-latest-small" / "train.parquet").exists()

    # a second run on the same volume (a kept or --existing-pvc volume): modelyard's own reuse, KFP's cache off
    capfd.readouterr()
    pipeline_func(volume=str(volume), lake=str(volume / "lake"), tracking_uri=tracking_uri,
                  source=f"{http_server}/ml-latest-small.zip", epochs=1, batch_size=1024)
    said = capfd.readouterr()
    reported = [json.loads(line.split("modelyard outputs: ", 1)[1]) for line in (said.out + said.err).splitlines()
                if "modelyard outputs: " in line]
    assert [out.get("reused") for out in reported[:2]] == [True, True]  # download, ingest
    assert len(client.search_runs([run.info.experiment_id])) == 2  # train ran again
