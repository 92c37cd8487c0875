"""The MLflow pyfunc model of a trained YOLO detector (logged as code: it needs no modelyard to load).

Input: a DataFrame with a string column ``image`` (a file path or URL per row).
Output: one row per box: ``image`` (row index), ``class_id``, ``class_name``, ``confidence``,
``x1``, ``y1``, ``x2``, ``y2`` (pixels of the original image). Params: ``conf`` (0.25), ``device`` ("cpu").
The weights file is the model artifact ``weights`` (ultralytics ``best.pt``).
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

COLUMNS = ["image", "class_id", "class_name", "confidence", "x1", "y1", "x2", "y2"]


def boxes_of(result, index=0):
    """Rows of one ultralytics Results object, in COLUMNS order."""
    rows = []
    names = result.names
    boxes = result.boxes
    if boxes is None:
        return rows
    for cls, conf, xyxy in zip(boxes.cls.tolist(), boxes.conf.tolist(), boxes.xyxy.tolist()):
        rows.append([index, int(cls), str(names[int(cls)]), float(conf), *(float(v) for v in xyxy)])
    return rows


class YoloDetector(PythonModel):
    def load_context(self, context):
        from ultralytics import YOLO

        self.weights = context.artifacts["weights"]
        self.model = YOLO(self.weights, task="detect")

    def predict_results(self, image, conf=0.25, device="cpu"):
        """ultralytics Results for one image (path, URL, PIL image or array)."""
        return self.model.predict(image, conf=conf, device=device, verbose=False)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        conf, device = float(params.get("conf", 0.25)), str(params.get("device", "cpu"))
        images = model_input["image"].tolist() if hasattr(model_input, "columns") else list(model_input)
        rows = []
        for i, image in enumerate(images):
            for result in self.predict_results(str(image), conf=conf, device=device):
                rows.extend(boxes_of(result, i))
        return pd.DataFrame(rows, columns=COLUMNS)


mlflow.models.set_model(YoloDetector())
