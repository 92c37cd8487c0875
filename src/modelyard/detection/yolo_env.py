"""Ultralytics, set up to work offline and to keep everything in the volume.

ultralytics is the optional extra ``modelyard[detection]``; it is imported lazily, only through
:func:`ultralytics_module`, after :func:`setup` has prepared the environment:

* ``YOLO_OFFLINE=1`` (no online checks), ``YOLO_CONFIG_DIR=<volume>/ultralytics/config`` (its settings
  file and fonts live in the volume, not in ``~/.config``);
* ``Arial.ttf`` in that folder (a copy of matplotlib's DejaVuSans.ttf), else plotting tries to download it;
* settings ``sync=False`` (no telemetry), ``mlflow=False`` (modelyard logs the run itself: one run, not two),
  the other loggers off; ``runs_dir``/``weights_dir``/``datasets_dir`` in the volume.

Pretrained weights (``yolov8n.pt``) are fetched by modelyard itself (``modelyard.download.fetch``) into
``<volume>/ultralytics/weights`` so ultralytics never downloads anything.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import shutil
import socket
from pathlib import Path

from modelyard.errors import ModelyardError

log = logging.getLogger(__name__)

DEFAULT_ARCH = "yolov8n.yaml"
DEFAULT_WEIGHTS = "yolov8n.pt"
ASSETS_URL = "https://github.com/ultralytics/assets/releases/download"
INSTALL_HINT = "pip install 'modelyard[detection]'"
OFFLINE_ENV = "MODELYARD_OFFLINE"

# ultralytics' own logger integrations: all off. modelyard.tracking logs the MLflow run and writes the
# TensorBoard events (per-epoch losses, mAP curves, the model graph) once, under <volume>/tensorboard.
YOLO_SETTINGS = {
    "sync": False, "mlflow": False, "tensorboard": False, "clearml": False, "comet": False,
    "dvc": False, "raytune": False, "wandb": False, "hub": False, "vscode_msg": False, "openvino_msg": False,
}


def ultralytics_root(volume: str | Path) -> Path:
    return Path(volume).resolve() / "ultralytics"


def weights_dir(volume: str | Path) -> Path:
    return ultralytics_root(volume) / "weights"


def _font_source() -> Path | None:
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return path if path.is_file() else None
    except ImportError:
        return None


def _place_font(config_dir: Path) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    target = config_dir / "Arial.ttf"
    if not target.exists():
        src = _font_source()
        if src is not None:
            tmp = target.with_name(f".Arial.ttf.{os.getpid()}")
            shutil.copyfile(src, tmp)
            os.replace(tmp, target)


def setup(volume: str | Path):
    """Prepare the offline environment in `volume` and return the imported ``ultralytics`` module.

    Safe to call many times; when ultralytics was already imported with another config folder (two
    volumes in one process), the font is placed in the folder it actually uses and its settings updated.
    """
    root = ultralytics_root(volume)
    config_root = root / "config"
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = str(config_root)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    _place_font(config_root / "Ultralytics")
    ultralytics = ultralytics_module()
    from ultralytics import utils as yolo_utils

    actual = Path(yolo_utils.USER_CONFIG_DIR)
    if actual != config_root / "Ultralytics":
        _place_font(actual)
    wanted = dict(YOLO_SETTINGS, runs_dir=str(root / "runs"), weights_dir=str(root / "weights"),
                  datasets_dir=str(Path(volume).resolve() / "datasets" / "detection"))
    settings = yolo_utils.SETTINGS
    changes = {k: v for k, v in wanted.items() if k in settings and settings.get(k) != v}
    if changes:
        settings.update(changes)
    # ultralytics reads these module constants once, at import; its AMP check (GPU only) downloads into WEIGHTS_DIR
    yolo_utils.RUNS_DIR, yolo_utils.WEIGHTS_DIR = root / "runs", root / "weights"
    yolo_utils.DATASETS_DIR = Path(volume).resolve() / "datasets" / "detection"
    # with a key, ultralytics' Platform callback uploads the training run: modelyard keeps runs in MLflow only
    if os.environ.pop("ULTRALYTICS_API_KEY", None) is not None:
        log.warning("ULTRALYTICS_API_KEY ignored: modelyard sends nothing to Ultralytics Platform")
    if settings.get("api_key"):
        settings.update(api_key="")
    return ultralytics


def require_ultralytics() -> None:
    """ModelyardError naming the extra to install when ultralytics is missing (checked before any step runs)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("ultralytics") is not None
    except ValueError:  # sys.modules["ultralytics"] is None: imports of it fail
        found = False
    if not found:
        raise ModelyardError(f"object detection needs ultralytics, which is not installed: {INSTALL_HINT}")


def ultralytics_module():
    try:
        import ultralytics
    except ImportError:
        raise ModelyardError(f"object detection needs ultralytics, which is not installed: {INSTALL_HINT}") from None
    return ultralytics


DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?|\d+(,\d+)*"


def check_device(device: str) -> None:
    """ValueError unless `device` is one ultralytics takes: cpu, cuda, cuda:N, mps, GPU ids (0 or 0,1), or auto."""
    if not re.fullmatch(DEVICE_PATTERN, device.strip().lower()):
        raise ValueError(f"parameter 'device': {device!r} is not one of auto, cpu, cuda, cuda:N, mps or GPU ids such as 0 or 0,1")


def resolve_device(device: str) -> str:
    """`auto`: the first GPU when there is one, else the CPU (as the recommender's device=auto)."""
    if device.strip().lower() != "auto":
        return device
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def check_architecture(model: str) -> None:
    """ValueError unless `model` is a YOLO architecture file ultralytics knows (yolov8s.yaml) or a local .yaml."""
    if model == DEFAULT_ARCH:
        return
    if not model.lower().endswith((".yaml", ".yml")):
        hint = f"; pretrained weights go in weights={model}" if model.lower().endswith(".pt") else ""
        raise ValueError(f"parameter 'model': {model!r} is not an architecture file (.yaml) such as {DEFAULT_ARCH}{hint}")
    from ultralytics.nn.tasks import yaml_model_load

    try:
        yaml_model_load(model)
    except FileNotFoundError:
        raise ValueError(f"parameter 'model': {model!r} is neither a file nor an architecture ultralytics knows "
                         f"(yolov8n.yaml, yolov8s.yaml, yolo11n.yaml, ...)") from None


def network_available(host: str = "github.com", port: int = 443, timeout: float = 2.0) -> bool:
    """A quick TCP connect to github.com:443 (where the pretrained weights live)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_requested(offline: bool = False) -> bool:
    return offline or os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes", "on")


def choose_weights(volume: str | Path, weights: str = "auto", offline: bool = False) -> tuple[str, str]:
    """Decide what to start training from; returns (weights or "" for from scratch, why).

    `weights="auto"`: fine-tune yolov8n.pt when it is already in the volume or github.com answers within
    2 s; with `offline` (or MODELYARD_OFFLINE=1) or no network, train yolov8n.yaml from scratch.
    `weights=""`: from scratch. Anything else is a weights file path or an ultralytics asset name.
    """
    if weights != "auto":
        return weights, ("pretrained weights " + weights) if weights else "no weights given: training from scratch"
    if (weights_dir(volume) / DEFAULT_WEIGHTS).is_file():
        return DEFAULT_WEIGHTS, f"fine-tuning {DEFAULT_WEIGHTS} (found in the volume)"
    if offline_requested(offline):
        return "", f"offline: training {DEFAULT_ARCH} from scratch instead of fine-tuning {DEFAULT_WEIGHTS}"
    if not network_available():
        return "", f"no network (github.com:443 unreachable): training {DEFAULT_ARCH} from scratch instead of fine-tuning {DEFAULT_WEIGHTS}"
    return DEFAULT_WEIGHTS, f"fine-tuning {DEFAULT_WEIGHTS} (downloaded once into the volume)"


def resolve_weights(volume: str | Path, weights: str, offline: bool = False) -> Path:
    """A local weights file: an existing path, or an ultralytics asset name fetched once into the volume
    (never with `offline` / MODELYARD_OFFLINE=1: then it must be there already)."""
    from modelyard.download import fetch

    path = Path(weights).expanduser()
    if path.is_file():
        return path.resolve()
    if "/" in weights or "\\" in weights or not weights.endswith(".pt"):
        raise ModelyardError(f"weights file {weights} not found")
    cached = weights_dir(volume) / weights
    if cached.is_file():
        return cached
    if offline_requested(offline):
        raise ModelyardError(f"offline: weights {weights} are not in the volume ({cached}) and are not downloaded; "
                             "put the file there, pass a local path, or drop --offline")
    try:
        from ultralytics.utils.downloads import attempt_download_asset

        release = inspect.signature(attempt_download_asset).parameters["release"].default
    except Exception:  # noqa: BLE001 - only used to pick the release tag
        release = "v8.4.0"
    url = f"{ASSETS_URL}/{release}/{weights}"
    log.info("downloading %s into %s", url, cached)
    return fetch(url, cached)
