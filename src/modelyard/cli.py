"""The `modelyard` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from modelyard.errors import ModelyardError, QualityError, user_errors  # noqa: E402
from modelyard.params import check_tags, coerce_params, parse_pairs  # noqa: E402
from modelyard.settings import Settings  # noqa: E402

app = typer.Typer(help="Raw data to validated, versioned, promoted models.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
run_app = typer.Typer(help="Run a pipeline end to end on this machine.", no_args_is_help=True)
app.add_typer(run_app, name="run")
console = Console()
err = Console(stderr=True)

WorkspaceOpt = Annotated[Optional[Path], typer.Option("--workspace", "-w", help="The pipeline volume (env MODELYARD_WORKSPACE; default ./.modelyard).")]
LakeOpt = Annotated[Optional[str], typer.Option("--lake", help="Data lake folder or s3://bucket/prefix (env MODELYARD_LAKE; default <workspace>/lake).")]
ParamOpt = Annotated[Optional[list[str]], typer.Option("--param", "-p", help="Pipeline parameter name=value (repeatable).")]
TagOpt = Annotated[Optional[list[str]], typer.Option("--tag", "-t", help="MLflow run tag key=value (repeatable).")]


def _fail(e: Exception) -> None:
    # messages are plain text: "[ok]" or a path in brackets must not be read as Rich markup
    if isinstance(e, QualityError):
        err.print("[bold red]data quality check failed[/]")
        err.print(e.report.render_text(), markup=False, highlight=False, soft_wrap=True)
    else:
        err.print("[bold red]error:[/] ", end="")
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _metrics_table(title: str, metrics: dict) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        if isinstance(value, float) and not (name.startswith("n_") and value.is_integer()):
            table.add_row(name, f"{value:.4f}")
        else:
            table.add_row(name, str(int(value)) if isinstance(value, float) else str(value))
    return table


def _check_tracking(settings: Settings) -> None:
    """A tracking URI MLflow cannot use, or a remote server that is down, fails the run before any step."""
    from modelyard import tracking

    if settings.tracking_uri.startswith(("http://", "https://")):
        tracking.configure(settings.tracking_uri)
    else:
        tracking.check_uri(settings.tracking_uri)


def _print_run(record) -> None:
    """The steps with their status and time, the validation metrics and the promotion decision."""
    steps = Table(title=f"pipeline run {record.run_id}", title_justify="left")
    for col in ("step", "status", "seconds"):
        steps.add_column(col)
    for s in record.steps:
        steps.add_row(s.name, s.status, f"{s.seconds:.1f}" if s.seconds is not None else "")
    console.print(steps)
    out = record.outputs()
    console.print(_metrics_table(f"validation of run {out['train']['run_id']}", out["validate"]))
    console.print(f"[bold]promotion:[/] {out['promote']['decision']}")
    console.print(f"run record: {record.path}", soft_wrap=True)


# Pipeline parameters that `modelyard run` sets from its own options (refused as --param).
_SETTINGS = {"volume": "--workspace", "tracking_uri": "MLFLOW_TRACKING_URI", "tags": "--tag", "source": "--source",
             "sha256": "--sha256"}
RECOMMENDER_OPTIONS = {**_SETTINGS, "lake": "--lake", "dataset": "--dataset", "warm_start": "--warm-start", "preset": "--preset"}
DETECTION_OPTIONS = {**_SETTINGS, "classes": "--classes"}
# The run tags modelyard writes itself (a user tag of the same key would be overwritten).
RECOMMENDER_TAGS = ("dataset", "dataset_digest", "preset", "warm_start_run_id")
DETECTION_TAGS = ("dataset", "dataset_digest", "dataset_source", "start", "task", "framework", "model_uri", "weights_dir")


@run_app.command("recommender")
def run_recommender(
    dataset: Annotated[str, typer.Option(help="MovieLens release: ml-latest-small, ml-100k, ml-1m, ml-25m.")] = "ml-latest-small",
    source: Annotated[str, typer.Option(help="Local path, file:// or http(s):// URL of the release zip (default: GroupLens).")] = "",
    sha256: Annotated[str, typer.Option(help="Expected SHA-256 of the zip.")] = "",
    preset: Annotated[str, typer.Option(help="Hyperparameter preset: textbook (mlp-mf) or accurate (biased-mf).")] = "textbook",
    param: ParamOpt = None,
    tag: TagOpt = None,
    warm_start: Annotated[str, typer.Option("--warm-start", help="Start training from this MLflow run's model.")] = "",
    workspace: WorkspaceOpt = None,
    lake: LakeOpt = None,
) -> None:
    """download -> ingest -> check -> train -> validate -> promote (gate to @staging)."""
    from modelyard.pipeline.local import LocalRunner
    from modelyard.recommender.pipeline import build

    try:
        settings = Settings.resolve(workspace=workspace, lake=lake)
        _check_tracking(settings)
        pipeline = build(preset)
        params = coerce_params(parse_pairs(param), pipeline.params, RECOMMENDER_OPTIONS)
        params.update(volume=settings.volume, lake=settings.lake, tracking_uri=settings.tracking_uri,
                      dataset=dataset, source=source, sha256=sha256, warm_start=warm_start,
                      tags=json.dumps(check_tags(parse_pairs(tag, "--tag"), RECOMMENDER_TAGS)))
        record = LocalRunner(settings.workspace, console=err).run(pipeline, params)
    except user_errors() as e:
        _fail(e)
    _print_run(record)


@run_app.command("detection")
def run_detection(
    source: Annotated[str, typer.Option(help="Path, file:// or http(s):// URL of a .tar.gz/.zip with YOLO images/ and labels/.")],
    classes: Annotated[str, typer.Option(help="File of class names, one a line (else a data.yaml inside the archive).")] = "",
    sha256: Annotated[str, typer.Option(help="Expected SHA-256 of the archive.")] = "",
    offline: Annotated[bool, typer.Option("--offline", help="Never touch the network: train from yolov8n.yaml.")] = False,
    param: ParamOpt = None,
    tag: TagOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """download -> split -> check -> train -> validate -> promote (YOLO via ultralytics)."""
    from modelyard.pipeline.local import LocalRunner

    try:
        from modelyard.detection.pipeline import build, choose_start

        settings = Settings.resolve(workspace=workspace)
        _check_tracking(settings)
        pipeline = build()
        params = choose_start(coerce_params(parse_pairs(param), pipeline.params, DETECTION_OPTIONS), offline)
        params.update(volume=settings.volume, tracking_uri=settings.tracking_uri, source=source, classes=classes,
                      sha256=sha256, tags=json.dumps(check_tags(parse_pairs(tag, "--tag"), DETECTION_TAGS)))
        record = LocalRunner(settings.workspace, console=err).run(pipeline, params)
    except user_errors() as e:
        _fail(e)
    _print_run(record)


def _existing_settings(workspace) -> Settings:
    """Settings of a command that only reads: a workspace that does not exist is an error, not created."""
    from modelyard.settings import default_tracking_uri

    settings = Settings.resolve(workspace=workspace)
    if not settings.workspace.exists() and settings.tracking_uri == default_tracking_uri(settings.workspace):
        raise ModelyardError(f"no workspace at {settings.workspace}: run a pipeline first, or pass --workspace "
                             "(or MODELYARD_WORKSPACE / MLFLOW_TRACKING_URI)")
    return settings


def _registry_settings(workspace):
    from modelyard import tracking

    settings = _existing_settings(workspace)
    tracking.configure(settings.tracking_uri, existing=True)
    return settings


@app.command()
def promote(
    alias: Annotated[str, typer.Option(help="Alias to move, e.g. prod.")],
    version: Annotated[str, typer.Option(help="Model version to give the alias.")],
    model_name: Annotated[str, typer.Option("--model-name", help="Registered model.")] = "movielens-recommender",
    workspace: WorkspaceOpt = None,
) -> None:
    """Promote a model version by hand (this is how @prod moves)."""
    from modelyard import registry

    try:
        _registry_settings(workspace)
        decision = registry.promote_version(model_name, alias, version)
    except user_errors() as e:
        _fail(e)
    console.print(decision.summary())


@app.command()
def rollback(
    alias: Annotated[str, typer.Option(help="Alias to move back to its previous version.")] = "prod",
    model_name: Annotated[str, typer.Option("--model-name", help="Registered model.")] = "movielens-recommender",
    workspace: WorkspaceOpt = None,
) -> None:
    """Move an alias back to the version that held it before."""
    from modelyard import registry

    try:
        _registry_settings(workspace)
        decision = registry.rollback(model_name, alias)
    except user_errors() as e:
        _fail(e)
    console.print(decision.summary())


@app.command()
def models(
    model_name: Annotated[str, typer.Option("--model-name", help="Registered model.")] = "movielens-recommender",
    workspace: WorkspaceOpt = None,
) -> None:
    """List a registered model's versions, their aliases and recorded decisions."""
    from mlflow.tracking import MlflowClient

    from modelyard import registry

    try:
        _registry_settings(workspace)
        client = MlflowClient()
        if registry.alias_version(model_name, "staging") is None and not client.search_model_versions(f"name='{model_name}'"):
            raise ModelyardError(registry.describe_aliases(model_name))
    except user_errors() as e:
        _fail(e)
    aliases = client.get_registered_model(model_name).aliases
    table = Table(title=model_name)
    for col in ("version", "aliases", "run_id", "latest decision", "reasons"):
        table.add_column(col, overflow="fold")
    for mv in sorted(client.search_model_versions(f"name='{model_name}'"), key=lambda v: int(v.version)):
        held = ", ".join(f"@{a}" for a, v in aliases.items() if str(v) == str(mv.version))
        log = registry.decision_log(model_name, mv.version)
        last = log[-1] if log else {}
        decision = f"{last.get('decision', '')} @{last.get('alias', '')} {last.get('time', '')}" if last else ""
        table.add_row(str(mv.version), held, mv.run_id or "", decision, "; ".join(last.get("reasons", [])))
    console.print(table)


@app.command()
def recommend(
    user: Annotated[int, typer.Option(help="MovieLens user id.")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many movies.")] = 10,
    alias: Annotated[str, typer.Option(help="Registry alias to serve from.")] = "prod",
    model_name: Annotated[str, typer.Option("--model-name", help="Registered model.")] = "movielens-recommender",
    workspace: WorkspaceOpt = None,
) -> None:
    """Top-k movies the user has not rated, from the model that holds the alias."""
    from modelyard.recommender.infer import Recommender

    try:
        settings = _existing_settings(workspace)
        recommender = Recommender.from_registry(alias=alias, model_name=model_name, tracking_uri=settings.tracking_uri)
        top = recommender.recommend(user, top_k=top_k)
    except user_errors() as e:
        _fail(e)
    table = Table(title=f"top {len(top)} for user {user} from {model_name}@{alias} (v{recommender.version})"
                        + (f": only {len(top)} movies left unrated" if len(top) < top_k else ""))
    for col in ("rank", "movie", "title", "genres", "score"):
        table.add_column(col)
    for row in top.itertuples():
        table.add_row(str(row.rank), str(row.item_id), str(row.title), str(row.genres), f"{row.score:.3f}")
    console.print(table)


@app.command()
def detect(
    image: Annotated[Path, typer.Option(help="Image file.")],
    alias: Annotated[str, typer.Option(help="Registry alias to serve from.")] = "prod",
    model_name: Annotated[str, typer.Option("--model-name", help="Registered model.")] = "yolo-detector",
    save: Annotated[Optional[Path], typer.Option(help="Write an annotated copy here.")] = None,
    conf: Annotated[float, typer.Option(help="Confidence threshold.")] = 0.25,
    workspace: WorkspaceOpt = None,
) -> None:
    """Boxes (class, confidence, xyxy) found in an image by the model that holds the alias."""
    try:
        from modelyard.detection.infer import detect as run_detect

        settings = _existing_settings(workspace)
        boxes = run_detect(str(image), alias=alias, model_name=model_name, tracking_uri=settings.tracking_uri,
                           volume=settings.volume, save=str(save) if save else None, conf=conf)
    except user_errors() as e:
        _fail(e)
    table = Table(title=f"{len(boxes)} boxes in {image} from {model_name}@{alias}")
    for col in ("class", "confidence", "x1", "y1", "x2", "y2"):
        table.add_column(col)
    for b in boxes:
        table.add_row(str(b["class"]), f"{b['confidence']:.3f}", *(f"{v:.1f}" for v in b["xyxy"]))
    console.print(table)
    if save:
        console.print(f"annotated copy: {save}", soft_wrap=True)


@app.command("compile")
def compile_pipeline(
    target: Annotated[str, typer.Argument(help="recommender or detection")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the KFP v2 YAML.")],
    image: Annotated[str, typer.Option(help="Container image the components run in.")] = "modelyard:latest",
    preset: Annotated[str, typer.Option(help="Recommender hyperparameter preset for the defaults.")] = "textbook",
    pvc_size: Annotated[str, typer.Option("--pvc-size", help="Size of the shared volume.")] = "10Gi",
    storage_class: Annotated[str, typer.Option("--storage-class", help="StorageClass of the PVC; name one (see the README).")] = "",
    access_mode: Annotated[str, typer.Option("--access-mode", help="PVC access mode.")] = "ReadWriteOnce",
    mount_path: Annotated[str, typer.Option("--mount-path", help="Where every step mounts the volume.")] = "/mnt/pipeline",
    delete_pvc: Annotated[bool, typer.Option("--delete-pvc/--keep-pvc", help="Delete the PVC after the last step.")] = False,
    s3_secret: Annotated[str, typer.Option("--s3-secret", help="Kubernetes Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for an s3:// lake.")] = "",
    s3_endpoint: Annotated[str, typer.Option("--s3-endpoint", help="S3/MinIO endpoint set as MODELYARD_S3_ENDPOINT in every step.")] = "",
    existing_pvc: Annotated[str, typer.Option("--existing-pvc", help="Mount this PVC in every run instead of creating one (the volume outlives runs).")] = "",
    mlflow_secret: Annotated[str, typer.Option("--mlflow-secret", help="Kubernetes Secret with MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN.")] = "",
) -> None:
    """Compile a pipeline to Kubeflow Pipelines v2 YAML (shared PVC via kfp-kubernetes)."""
    from modelyard.pipeline.kubeflow import ClusterOptions, compile_pipeline as compile_kfp

    try:
        options = ClusterOptions(image=image, pvc_size=pvc_size, storage_class=storage_class, access_mode=access_mode,
                                 mount_path=mount_path, delete_pvc=delete_pvc, s3_secret=s3_secret, s3_endpoint=s3_endpoint,
                                 existing_pvc=existing_pvc, mlflow_secret=mlflow_secret)
        path = compile_kfp(target, output, options, preset=preset)
    except user_errors() as e:
        _fail(e)
    console.print(f"wrote {path}", soft_wrap=True)


@app.command()
def runs(workspace: WorkspaceOpt = None, last: Annotated[int, typer.Option(min=1, help="How many, newest last.")] = 10) -> None:
    """The pipeline run records kept in the volume."""
    from modelyard.pipeline.local import load_records

    try:
        settings = Settings.resolve(workspace=workspace)
    except user_errors() as e:
        _fail(e)
    records = load_records(settings.workspace, on_unreadable=lambda path, reason: console.print(
        f"warning: skipped {path}: {reason}", style="yellow", markup=False))
    if not records:
        console.print(f"no pipeline runs in {settings.workspace}", soft_wrap=True)
        return
    table = Table(title=f"pipeline runs in {settings.workspace}", title_justify="left")
    table.add_column("run", no_wrap=True)
    for col in ("status", "seconds", "steps"):
        table.add_column(col, overflow="fold")
    for rec in records[-last:]:
        steps = " ".join(f"{s['name']}:{s['status']}" for s in rec["steps"])
        table.add_row(rec["run_id"], rec["status"], str(rec.get("seconds")), steps)
    console.print(table)


def main() -> None:  # pragma: no cover
    sys.exit(app())
