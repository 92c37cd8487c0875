"""Step graphs and the runners that execute them (locally, or compiled for Kubeflow Pipelines)."""

from modelyard.pipeline.graph import Pipeline, Step

__all__ = ["Pipeline", "Step"]
