"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero."""

from __future__ import annotations


class ModelyardError(Exception):
    """Base class of every user-facing error."""


class ParamError(ModelyardError, ValueError):
    """A parameter value of the wrong type or out of range; the message names the parameter."""


class DataError(ModelyardError):
    """Input data is malformed; the message names the file, column, row or id."""


class DownloadError(ModelyardError):
    """A download or archive could not be fetched, verified or extracted."""


class QualityError(ModelyardError):
    """A data quality check failed; `report` holds every check's result."""

    def __init__(self, report):
        self.report = report
        super().__init__(report.render_text())


class TrackingError(ModelyardError):
    """The MLflow tracking server could not be reached or refused a request."""


class RegistryError(ModelyardError):
    """A registered model, version or alias does not exist or cannot be changed."""


def user_errors() -> tuple[type[Exception], ...]:
    """Errors shown as one line, no traceback (by the CLI and by KFP components): ours, bad values (ValueError),
    and what MLflow refuses (an unknown run id, a bad alias or URI ...)."""
    from mlflow.exceptions import MlflowException

    return ModelyardError, ValueError, MlflowException
