"""Detect objects in one image with a registered detector (`models:/yolo-detector@prod` by default)."""

from __future__ import annotations

from pathlib import Path

from modelyard.detection import yolo_env
from modelyard.errors import ModelyardError

DEFAULT_MODEL_NAME = "yolo-detector"


def load_detector(model_name: str = DEFAULT_MODEL_NAME, alias: str = "prod", tracking_uri: str | None = None, volume: str | None = None):
    """The registered model's pyfunc wrapper (``YoloDetector``, with ``.model`` the ultralytics YOLO)."""
    from modelyard.registry import alias_name, require_alias
    from modelyard.settings import Settings
    from modelyard.tracking import configure

    settings = Settings.resolve(workspace=volume, tracking_uri=tracking_uri)
    yolo_env.setup(settings.volume)
    configure(settings.tracking_uri, existing=True)
    version = require_alias(model_name, alias)  # RegistryError naming the aliases that do exist
    import mlflow

    name = f"{model_name} v{version.version} (@{alias_name(alias)})"
    not_a_detector = ModelyardError(f"{name} is not a detector model: pass the detector's --model-name")
    try:
        pyfunc = mlflow.pyfunc.load_model(f"models:/{model_name}/{version.version}")
    except Exception as e:  # noqa: BLE001 - surface a user-facing message
        raise ModelyardError(f"could not load {name}: {e}") from e
    try:
        detector = pyfunc.unwrap_python_model()
    except Exception:  # noqa: BLE001 - MLflow: not a python_function model of ours (e.g. a pytorch one)
        raise not_a_detector from None
    if not callable(getattr(detector, "predict_results", None)):  # models from code: a class of its own module
        raise not_a_detector
    return detector, str(version.version)


SAVE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


def check_image(image: str) -> None:
    """A readable image file, or a ModelyardError saying what it is instead."""
    path = Path(image)
    if path.is_dir():
        raise ModelyardError(f"{image} is a folder, not an image file")
    if not path.is_file():
        raise ModelyardError(f"image {image} not found")
    from modelyard.detection.checks import image_problem

    problem = image_problem(path)
    if problem:
        raise ModelyardError(f"{image} is not a readable image ({problem})")


def detect(
    image: str,
    alias: str = "prod",
    model_name: str = DEFAULT_MODEL_NAME,
    tracking_uri: str | None = None,
    save: str | None = None,
    volume: str | None = None,
    conf: float = 0.25,
    device: str = "cpu",
) -> list[dict]:
    """Boxes found in `image`: ``{"class_id", "class", "confidence", "xyxy": [x1, y1, x2, y2]}``, best first.

    `save`: also write the image with the boxes drawn to this path.
    """
    check_image(image)
    if save and Path(save).suffix.lower() not in SAVE_SUFFIXES:
        raise ModelyardError(f"--save {save}: the annotated copy must end in one of {', '.join(sorted(SAVE_SUFFIXES))}")
    detector, _ = load_detector(model_name, alias, tracking_uri, volume)
    results = detector.predict_results(str(image), conf=conf, device=device)
    boxes = []
    for result in results:
        names = result.names
        if result.boxes is not None:
            for cls, score, xyxy in zip(result.boxes.cls.tolist(), result.boxes.conf.tolist(), result.boxes.xyxy.tolist()):
                boxes.append({"class_id": int(cls), "class": str(names[int(cls)]), "confidence": round(float(score), 4),
                              "xyxy": [round(float(v), 1) for v in xyxy]})
        if save:
            Path(save).parent.mkdir(parents=True, exist_ok=True)
            result.save(filename=str(save))
    return sorted(boxes, key=lambda b: -b["confidence"])
