"""The detection pipeline's step functions: download -> split -> check -> train -> validate -> promote.

Each is a plain function with keyword arguments of primitive types (paths as str) returning a dict of
small primitive outputs; big data stays in the volume, runs and models in MLflow. ultralytics is only
imported inside train/validate (the optional extra ``modelyard[detection]``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rich.console import Console

from modelyard.detection import data as ddata
from modelyard.errors import DataError, DownloadError, ModelyardError

console = Console(stderr=True, soft_wrap=True)  # paths in messages stay whole, never wrapped mid-name


def _tracking_uri(tracking_uri: str, volume: str | None = None) -> str:
    """The given URI, else MLFLOW_TRACKING_URI, else the SQLite file in the volume."""
    from modelyard.settings import Settings

    return tracking_uri or Settings.resolve(workspace=volume).tracking_uri


def _fetch_classes(raw_dir: Path, classes: str) -> tuple[Path, list[str]]:
    """Copy the `classes` file (path or URL) into `raw_dir` and read its names; errors name the file."""
    from modelyard.download import fetch

    copy = raw_dir / f"classes-{ddata.archive_filename(classes)}"
    copy.unlink(missing_ok=True)  # tiny: always the current one
    fetch(classes, copy, show_progress=False, what="classes file")
    try:
        return copy, ddata.parse_class_names(copy, label=f"classes file {classes}")
    except DataError:
        copy.unlink(missing_ok=True)
        raise


def _build(volume: str, name: str, source: str, classes: str, sha256: str) -> dict:
    """Download the archive (and the classes file) and build the dataset `name` from it."""
    from modelyard.download import discard, fetch, sha256_file

    root = ddata.datasets_root(volume)
    for stale in root.glob(f".{name}.extract-*"):  # left by a killed extraction
        shutil.rmtree(stale, ignore_errors=True)
    raw_dir = ddata.raw_root(volume) / name
    classes_file = _fetch_classes(raw_dir, classes)[0] if classes else None
    archive_path = raw_dir / ddata.archive_filename(source)
    meta = {"source": source, "archive": str(archive_path), "classes_source": classes}
    built: dict = {}

    def build(archive: Path) -> None:
        built.update(ddata.build_dataset(archive, root / name, classes_file, {**meta, "archive_sha256": sha256_file(archive)}))

    try:
        # a new download replaces an archive already in the volume only once the dataset is built from it
        archive = fetch(source, archive_path, sha256=sha256 or None, verify=build, track_source=True)
        if not built:  # the archive from this source was already in the volume
            try:
                build(archive)
            except (DownloadError, DataError):
                discard(archive)  # an archive that cannot be used must not be picked up again by the next run
                raise
    except (DownloadError, DataError):
        if classes_file is not None:
            classes_file.unlink(missing_ok=True)
        raise
    return built


def _archive_changed(source: str, info: dict) -> bool:
    """Whether `source` is the local archive this dataset came from and now holds other bytes (rebuilt in place)."""
    from modelyard.download import local_path, sha256_file

    if not source or _where(source) != _where(str(info.get("source", ""))):
        return False
    local = local_path(source)
    if local is None or not local.is_file():
        return False
    new = sha256_file(local)
    if new == info.get("archive_sha256"):
        return False
    console.print(f"[yellow]{source} changed since dataset {info.get('name')} was extracted from it "
                  f"(SHA-256 {str(info.get('archive_sha256'))[:12]}... -> {new[:12]}...): extracting and splitting it again[/]")
    return True


def _rebuild(volume: str, name: str, source: str, classes: str, sha256: str) -> dict:
    """Build the dataset again from its changed archive; the old one is put back if the new one fails."""
    target = ddata.datasets_root(volume) / name
    aside = target.with_name(f".{name}.replaced-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(target, aside)
    try:
        info = _build(volume, name, source, classes, sha256)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        os.replace(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return info


def _where(source: str) -> str:
    """A source in one spelling: local paths and file:// URLs as absolute paths, other URLs as given."""
    from modelyard.download import local_path

    local = local_path(source)
    return source if local is None else str(local.resolve())


def download(volume: str, source: str, classes: str = "", sha256: str = "", dataset: str = "") -> dict:
    """Fetch the archive once into `<volume>/raw/detection/<dataset>/` and extract it, safely, to
    `<volume>/datasets/detection/<dataset>/`. `source`: path, file:// or http(s):// URL of a .tar.gz /
    .tgz / .tar / .zip holding YOLO `images/` + `labels/` folders at any depth; `classes`: a file of class
    names (one a line; path or URL), else the archive's data.yaml or classes.txt. `dataset` defaults to the
    archive's name. Already extracted: nothing is downloaded or extracted again; a `classes` file naming
    other classes replaces the stored class names (images, labels and split stay as they are).
    """
    name = dataset or ddata.dataset_name(source)
    root = ddata.datasets_root(volume)
    target = root / name
    if (target / ddata.DATASET_INFO).is_file() and _archive_changed(source, ddata.read_info(target)):
        info = _rebuild(volume, name, source, classes, sha256)
        reused = False
    elif (target / ddata.DATASET_INFO).is_file():
        info = ddata.read_info(target)
        if sha256 and info.get("archive_sha256") != sha256.lower():
            raise DownloadError(f"dataset {name} in the volume came from an archive with SHA-256 {info.get('archive_sha256')}, "
                                f"not {sha256.lower()}; delete {target} (and {ddata.raw_root(volume) / name}) to replace it")
        if source and info.get("source") and _where(source) != _where(info["source"]):
            console.print(f"[yellow]dataset {name} is already in the volume, from {info['source']}: reusing it, not {source} "
                          f"(pass --param dataset=<another name>, or delete {target} and {ddata.raw_root(volume) / name})[/]")
        if classes:
            names = _fetch_classes(ddata.raw_root(volume) / name, classes)[1]
            info, previous = ddata.set_class_names(target, names, classes)
            if previous is not None:
                console.print(f"dataset {name}: class names updated from {classes}: {', '.join(previous)} -> {', '.join(names)} "
                              "(images, labels and split unchanged)")
        reused = True
    else:
        if target.exists():
            raise DownloadError(f"{target} exists but is not a complete dataset (no {ddata.DATASET_INFO}); delete it and run again")
        info = _build(volume, name, source, classes, sha256)
        reused = False
    ddata.write_text_atomic(root / "latest", name + "\n")
    verb = "already in the volume" if reused else "extracted"
    console.print(f"dataset {name}: {info['n_images']} images, {len(info['classes'])} classes ({', '.join(info['classes'])}), {verb} at {target}")
    return {"dataset": name, "dataset_dir": str(target), "digest": info["digest"], "n_images": int(info["n_images"]),
            "n_classes": len(info["classes"]), "reused": reused}


def split(volume: str, dataset: str = "", val_size: float = 0.15, test_size: float = 0.10, random_state: int = 42) -> dict:
    """Move images and labels into images/{train,val,test} and labels/{train,val,test} (seeded shuffle) and
    write data.yaml. The plan (split.json) is written before any file moves, so a crashed split finishes on
    the next run; an already split dataset is left as it is (a no-op)."""
    dataset_dir = ddata.resolve_dataset_dir(volume, dataset)
    record, reused = ddata.split_dataset(dataset_dir, val_size, test_size, random_state)
    asked = {"val_size": val_size, "test_size": test_size, "random_state": random_state}
    if reused and any(record.get(k) != v for k, v in asked.items()):
        kept = ", ".join(f"{k}={record.get(k)}" for k in asked)
        console.print(f"[yellow]{dataset_dir.name} is already split ({kept}); delete {dataset_dir} to split it differently[/]")
    ddata.write_data_yaml(dataset_dir)
    counts = record["counts"]
    return {"n_train": counts["train"], "n_val": counts["val"], "n_test": counts["test"], "moved": int(record["moved"]), "reused": reused}


def check(volume: str, dataset: str = "") -> dict:
    """Data-quality checks (labels, class ids, coordinates, readable images); QualityError stops the pipeline.
    The report is also written to the dataset folder as quality.json."""
    from modelyard.detection.checks import check_dataset

    dataset_dir = ddata.resolve_dataset_dir(volume, dataset)
    report, counts = check_dataset(dataset_dir)
    ddata.write_json_atomic(dataset_dir / "quality.json", {**report.to_dict(), "counts": counts})
    if report.passed:
        console.print(report.render_text())
    report.raise_for_failures()
    return {"n_images": counts["n_images"], "n_boxes": counts["n_boxes"], "n_background": counts["n_background"]}


def train(
    volume: str,
    tracking_uri: str,
    dataset: str = "",
    model: str = "yolov8n.yaml",
    weights: str = "auto",
    offline: bool = False,
    epochs: int = 12,
    batch_size: int = 16,
    imgsz: int = 256,
    device: str = "cpu",
    random_state: int = 42,
    workers: int = 0,
    tags: str = "{}",
) -> dict:
    """Train a YOLO detector as one MLflow run in experiment `detection`.

    `weights`: "auto" fine-tunes yolov8n.pt when it is in the volume or github.com answers (else, or with
    `offline`, builds `model` from scratch and says so); "" always builds `model` (a .yaml) from scratch;
    a path or an ultralytics asset name (yolov8s.pt) fine-tunes those weights. `tags`: a JSON object of run tags.
    """
    from modelyard.detection import yolo_env
    from modelyard.detection.train import train_detector

    try:
        user_tags = json.loads(tags or "{}")
    except json.JSONDecodeError as e:
        raise ModelyardError(f"tags is not valid JSON: {e}") from None
    if not isinstance(user_tags, dict):
        raise ModelyardError("tags must be a JSON object of tag names to values")
    chosen, why = yolo_env.choose_weights(volume, weights, offline)
    if not weights:
        why = f"training {model} from scratch (no weights given)"
    elif weights == "auto" and chosen:
        try:  # the network answered a moment ago; if the download fails all the same, train from scratch
            yolo_env.resolve_weights(volume, chosen, offline)
        except ModelyardError as e:
            chosen, why = "", f"{chosen} could not be downloaded ({e}): training {model} from scratch"
    console.print(f"train: {why}")
    result = train_detector(
        volume, _tracking_uri(tracking_uri, volume), ddata.resolve_dataset_dir(volume, dataset), model=model, weights=chosen,
        epochs=epochs, batch_size=batch_size, imgsz=imgsz, device=str(device), random_state=random_state,
        workers=workers, tags={**{str(k): str(v) for k, v in user_tags.items()}, "start": why}, offline=offline,
    )
    return result


def validate(volume: str, tracking_uri: str, run_id: str, batch_size: int = 16, device: str = "cpu", workers: int = 0) -> dict:
    """Download the run's logged model by run id, score it on val (map50, map50_95, precision, recall) and
    test (test_ prefix), and log the scores to that run."""
    from modelyard.detection.evaluate import EVAL_METRICS, validate_run

    metrics = validate_run(volume, _tracking_uri(tracking_uri, volume), run_id, batch_size=batch_size, device=str(device), workers=workers)
    shown = {k: round(v, 4) for k, v in metrics.items() if k in EVAL_METRICS or k.removeprefix("test_") in EVAL_METRICS}
    console.print(f"validate {run_id}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    return shown


def promote(tracking_uri: str, run_id: str, model_name: str = "yolo-detector", map50_95_threshold: float = 0.0, model_uri: str = "") -> dict:
    """Register the run's model as `model_name` and move @staging to it when its val mAP50-95 minus the current
    @staging model's is >= `map50_95_threshold` (signed, as registry.Gate: 0.0 may not fall, -0.01 may fall by
    0.01, 0.01 must gain 0.01). The first candidate is promoted when it has been validated."""
    from mlflow.tracking import MlflowClient

    from modelyard.registry import Gate, promote_if_better
    from modelyard.tracking import configure

    configure(_tracking_uri(tracking_uri))
    if not model_uri:
        model_uri = MlflowClient().get_run(run_id).data.tags.get("model_uri", "")
        if not model_uri:
            raise ModelyardError(f"MLflow run {run_id} has no logged model (tag model_uri): was it trained by modelyard?")
    gates = [Gate("map50_95", "higher", float(map50_95_threshold))]
    decision = promote_if_better(model_name, run_id, model_uri, gates, alias="staging",
                                 comparable_on=("dataset", "dataset_digest"))  # the same images, the same split
    return {"promoted": bool(decision.promoted), "version": str(decision.version or ""), "reason": "; ".join(decision.reasons),
            "decision": decision.summary()}
