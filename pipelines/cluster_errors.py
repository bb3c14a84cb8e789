"""The errors of talking to a Kubeflow Pipelines endpoint; each message says what to change."""

from __future__ import annotations


class ClusterError(RuntimeError):
    """The KFP endpoint could not do what was asked; the message says what to change.

    `status` is the HTTP status when there was one; `transient` marks what may pass on its own (a 5xx
    answer, a dropped or refused connection), which reads retry.
    """

    def __init__(self, message: str, status: int | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.status, self.transient = status, transient


class ClusterAuthError(ClusterError):
    """The KFP endpoint (or the auth proxy in front of it) refused the request."""


class ClusterSettingError(ClusterError, ValueError):
    """A setting is wrong (KFP_HOST points at a server that is not Kubeflow Pipelines): exit 2."""
