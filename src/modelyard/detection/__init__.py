"""Object detection reference project: YOLO-format archive -> split -> checks -> ultralytics YOLO -> MLflow registry.

ultralytics is the optional extra ``modelyard[detection]``; it is imported lazily by train, validate and detect.
"""
