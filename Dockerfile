# The image every Kubeflow step runs in: modelyard, kfp, MLflow, PyTorch (CPU or CUDA build), boto3 for S3 artifact stores.
#
#   docker build -t registry.example.com/modelyard:0.1.0 .
#   docker build --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu -t ...   # CPU-only torch, much smaller
#   docker build --build-arg EXTRAS=s3,detection -t ...                                       # + ultralytics (YOLO)
#
# constraints.txt pins torch/torchvision, MLflow and kfp to the versions the project is tested with;
# kfp in the image must match the SDK that compiled the pipeline (components run with install_kfp_package=False).
FROM python:3.11-slim

ARG EXTRAS=s3
ARG PIP_EXTRA_INDEX_URL=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    MODELYARD_WORKSPACE=/mnt/pipeline

# libgl1/libglib2.0-0: OpenCV (ultralytics) imports; harmless for the recommender.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/modelyard
# .dockerignore lets only the package sources and build files in.
COPY . .
RUN pip install -c constraints.txt ".[${EXTRAS}]" \
    && python -c "import modelyard.pipeline.kubeflow, kfp, mlflow, torch, pyarrow.fs; print('modelyard image ok')"

WORKDIR /mnt/pipeline
CMD ["modelyard", "--help"]
