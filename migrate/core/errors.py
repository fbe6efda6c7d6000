"""Errors with stable codes, exit codes and a hint for the operator.

Every failure the tool reports is a :class:`MigrateError`. Its ``code`` is stable (tests,
scripts and the wire protocol rely on it), its ``exit_code`` follows DESIGN.md, and its
``hint`` says what to do about it. Errors cross the wire as ``{code, message, hint, details}``
and are rebuilt on the other side from the registry below, so both ends raise the same class.
"""

from __future__ import annotations

from typing import Any, ClassVar

# Exit codes (DESIGN.md, "Command line").
EXIT_FAILED = 1  # migration failed and was rolled back: the source runs
EXIT_USAGE = 2  # bad usage or input
EXIT_REFUSED = 3  # precheck refused: nothing was touched
EXIT_IN_DOUBT = 4  # outcome in doubt: see `migrate recover`


class MigrateError(Exception):
    """Something went wrong."""

    code: ClassVar[str] = "error"
    exit_code: ClassVar[int] = EXIT_FAILED

    def __init__(
        self,
        message: str | None = None,
        *,
        hint: str = "",
        details: dict[str, Any] | None = None,
    ) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.hint = hint
        self.details = dict(details or {})
        super().__init__(self.message)

    def to_wire(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "details": self.details,
        }


_REGISTRY: dict[str, type[MigrateError]] = {}


def _register(cls: type[MigrateError]) -> type[MigrateError]:
    if cls.code in _REGISTRY:
        raise RuntimeError(f"duplicate error code {cls.code}")
    _REGISTRY[cls.code] = cls
    return cls


def from_wire(data: dict[str, Any]) -> MigrateError:
    """Rebuild an error that crossed the wire; unknown codes become a plain MigrateError."""
    code = str(data.get("code", "error"))
    cls = _REGISTRY.get(code, RemoteError)
    details = data.get("details") if isinstance(data.get("details"), dict) else {}
    err = cls(str(data.get("message", "")), hint=str(data.get("hint", "")), details=details)
    if cls is RemoteError:
        err.details.setdefault("remote_code", code)
    return err


# --- usage / input (exit 2) -------------------------------------------------------------


@_register
class UsageError(MigrateError):
    """Bad usage."""

    code = "usage"
    exit_code = EXIT_USAGE


@_register
class BadDestination(UsageError):
    """The destination is not a valid ssh://[USER@]HOST[:PORT] URL."""

    code = "usage.bad_destination"


@_register
class BundleInvalid(MigrateError):
    """The bundle is corrupted, incomplete or hostile."""

    code = "bundle.invalid"
    exit_code = EXIT_USAGE


# --- precheck refusals (exit 3): nothing was touched -----------------------------------


@_register
class PrecheckFailed(MigrateError):
    """A precheck refused the migration; nothing was touched."""

    code = "precheck.failed"
    exit_code = EXIT_REFUSED


@_register
class ContainerNotFound(PrecheckFailed):
    """No such container."""

    code = "precheck.container_not_found"


@_register
class ContainerNotRunning(PrecheckFailed):
    """The container is not running."""

    code = "precheck.container_not_running"


@_register
class HostUnreachable(PrecheckFailed):
    """The destination host cannot be reached."""

    code = "precheck.host_unreachable"


@_register
class HostKeyUnknown(PrecheckFailed):
    """The destination's SSH host key is not known."""

    code = "precheck.host_key_unknown"


@_register
class HostKeyMismatch(PrecheckFailed):
    """The destination's SSH host key does not match the known one."""

    code = "precheck.host_key_mismatch"


@_register
class AuthFailed(PrecheckFailed):
    """SSH authentication to the destination failed."""

    code = "precheck.auth_failed"


@_register
class AgentUnavailable(PrecheckFailed):
    """The destination agent could not be started."""

    code = "precheck.agent_unavailable"


@_register
class BulkUnavailable(PrecheckFailed):
    """The OpenSSH bulk connection (--bulk openssh) could not be used."""

    code = "precheck.bulk_unavailable"


@_register
class Incompatible(PrecheckFailed):
    """Source and destination are not compatible."""

    code = "precheck.incompatible"


@_register
class EngineUnavailable(PrecheckFailed):
    """The container engine cannot be reached or is not set up for checkpoints."""

    code = "precheck.engine"


@_register
class CriuUnavailable(PrecheckFailed):
    """CRIU is missing, too old or fails its self-check."""

    code = "precheck.criu"


@_register
class NameConflict(PrecheckFailed):
    """The container name is already taken on the destination."""

    code = "precheck.name_conflict"


@_register
class VolumeConflict(PrecheckFailed):
    """A volume of that name exists on the destination with other content or options."""

    code = "precheck.volume_conflict"


@_register
class Unsupported(PrecheckFailed):
    """The container uses something that cannot be migrated."""

    code = "precheck.unsupported"


# --- failures during the migration (exit 1): rolled back --------------------------------


@_register
class RemoteError(MigrateError):
    """The other side reported an error."""

    code = "remote"


@_register
class ProtocolError(MigrateError):
    """The peer broke the protocol."""

    code = "protocol.error"


@_register
class ConnectionLost(MigrateError):
    """The connection to the peer was lost."""

    code = "protocol.connection_lost"


@_register
class Timeout(MigrateError):
    """The peer did not answer in time."""

    code = "protocol.timeout"


@_register
class EngineError(MigrateError):
    """The container engine refused an operation."""

    code = "engine.error"


@_register
class CheckpointFailed(MigrateError):
    """CRIU could not checkpoint the container."""

    code = "criu.dump_failed"


@_register
class RestoreFailed(MigrateError):
    """CRIU could not restore the container."""

    code = "criu.restore_failed"


@_register
class TransferFailed(MigrateError):
    """Moving the container's data failed."""

    code = "transfer.failed"


@_register
class DiskFull(MigrateError):
    """No space left on the destination."""

    code = "transfer.disk_full"


@_register
class MigrationFailed(MigrateError):
    """The migration failed and was rolled back: the source container runs again."""

    code = "migration.failed"


@_register
class InternalError(MigrateError):
    """migrate itself failed (a bug): what it had started was rolled back."""

    code = "internal.error"


@_register
class InjectedFault(MigrateError):
    """A fault was injected for testing (MIGRATE_FAULT)."""

    code = "test.injected_fault"


@_register
class Busy(MigrateError):
    """Another migration of this container is in progress."""

    code = "lock.busy"
    exit_code = EXIT_REFUSED


@_register
class InDoubt(MigrateError):
    """The outcome is in doubt: the source copy is kept paused until `migrate recover`."""

    code = "handover.in_doubt"
    exit_code = EXIT_IN_DOUBT


@_register
class PostcopyFailed(MigrateError):
    """Post-copy was interrupted after the destination copy had resumed: no rollback exists."""

    code = "postcopy.interrupted"
    # Not 1: nothing was rolled back and no copy runs. The operator decides (the hint says
    # how); `migrate recover` does not, because neither journal can say which copy is right.
    exit_code = EXIT_IN_DOUBT


@_register
class LabError(MigrateError):
    """The sandbox lab could not be brought up."""

    code = "lab.error"
