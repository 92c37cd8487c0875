"""modelyard: raw data to validated, versioned, promoted models, on a laptop or on Kubeflow."""

__version__ = "0.1.0"
