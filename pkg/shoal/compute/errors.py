"""The Compute API's documented error codes, raised by domain code and rendered by the service."""

from __future__ import annotations

from typing import Any


class ComputeError(Exception):
    """An error with an HTTP status and one of the documented codes."""

    status = 400
    code = "BACKEND_ERROR"

    def __init__(
        self, message: str, details: dict[str, Any] | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if status is not None:
            self.status = status


class InstanceNotFound(ComputeError):
    status = 404
    code = "INSTANCE_NOT_FOUND"


class InvalidBackend(ComputeError):
    status = 400
    code = "INVALID_BACKEND"


class ValidationFailed(ComputeError):
    status = 400
    code = "VALIDATION_ERROR"


class NameConflict(ComputeError):
    status = 409
    code = "NAME_CONFLICT"


class OperationNotSupported(ComputeError):
    """400 when the backend can never do it; 409 when it cannot in the instance's current state."""

    status = 400
    code = "OPERATION_NOT_SUPPORTED"


class HostAccessForbidden(ComputeError):
    """The request reaches into the host (a host path, its network, a device) and this node forbids it."""

    status = 403
    code = "FORBIDDEN"


class ResourceLimitExceeded(ComputeError):
    status = 400
    code = "RESOURCE_LIMIT_EXCEEDED"


class BackendUnavailable(ComputeError):
    status = 503
    code = "BACKEND_UNAVAILABLE"

    def __init__(self, backend: str, reason: str) -> None:
        label = {"docker": "Docker", "kvm": "KVM"}.get(backend, backend)
        super().__init__(f"{label} backend is not available", {"backend": backend, "reason": reason})


class BackendError(ComputeError):
    """The daemon refused or failed; 4xx when the request was at fault, 502 otherwise."""

    status = 502
    code = "BACKEND_ERROR"


class InstanceOnOtherNode(ComputeError):
    """A change to an instance another compute node owns: only the node that has its daemon can act."""

    status = 409
    code = "INSTANCE_ON_OTHER_NODE"


class NodeIdTakenOver(ComputeError):
    """Another live host now holds this node's id: acting on its instances could double-act."""

    status = 409
    code = "NODE_ID_IN_USE"


class RegistryUnavailable(ComputeError):
    """The registry's store (etcd) did not answer in time: a 503 to retry, not a 500."""

    status = 503
    code = "REGISTRY_UNAVAILABLE"


class SnapshotNotFound(ComputeError):
    status = 404
    code = "SNAPSHOT_NOT_FOUND"


class SnapshotExists(ComputeError):
    """A snapshot's name is unique per instance: taking it again would overwrite a restore point."""

    status = 409
    code = "SNAPSHOT_EXISTS"
