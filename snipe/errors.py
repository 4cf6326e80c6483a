"""Every error the project raises, under one base class.

Remote errors ("you sent me something wrong") travel on the wire as a code and a message; the
code maps back to the same class on the other side, so a caller catches `NotAuthorized` whether
the refusal happened locally or on a replica.
"""

from __future__ import annotations


class SnipeError(Exception):
    """Base of every error this project raises on purpose."""

    code = "error"


class CodecError(SnipeError):
    """Bytes that do not decode to a well-formed message or assertion."""

    code = "malformed"


class UrnError(SnipeError, ValueError):
    """A URN that does not follow urn:snipe:<kind>:<id>."""

    code = "bad-urn"


class ValueTypeError(SnipeError, TypeError):
    """An assertion value of a type the catalog cannot store."""

    code = "bad-value"


class SignatureError(SnipeError):
    """A signature that does not verify against the key it names."""

    code = "bad-signature"


class NotAuthorized(SnipeError):
    """The signer may not write this assertion, or its key is not admitted."""

    code = "not-authorized"


class StaleWrite(SnipeError):
    """An assertion older than (or equal to) what the replica already holds."""

    code = "stale"


class TooLarge(SnipeError):
    """A message or value over the configured size limit."""

    code = "too-large"


class QuotaExceeded(SnipeError):
    """A bound on what one key, connection or host may hold on a server (groups joined, waits
    pending) is reached: the request is refused, and what was held before stays."""

    code = "quota-exceeded"


class StorageFull(SnipeError):
    """A replica's store is short of disk space: the write is refused, and the replica keeps
    serving reads and what it holds."""

    code = "storage-full"


class ProtocolVersionError(SnipeError):
    """The peer asked for a protocol or version this side does not speak."""

    code = "bad-version"


class UnknownRequest(SnipeError):
    """A request kind the service does not implement."""

    code = "unknown-request"


class NotFound(SnipeError, KeyError):
    """No live assertion matches."""

    code = "not-found"

    def __str__(self) -> str:  # KeyError quotes its argument; we want the sentence.
        return str(self.args[0]) if self.args else "not found"


class Unreachable(SnipeError):
    """No peer answered before the deadline."""

    code = "unreachable"


class HighWaterMark(Unreachable):
    """A send waited its whole timeout for room: the peer holds `hwm` unsettled messages of ours."""

    code = "high-water-mark"


class NotDelivered(Unreachable):
    """A request never reached its peer: no connection to it came up in time, and the request was
    dropped unsent. Unlike a plain Unreachable (the peer may have acted on it and then gone
    silent), asking another peer instead is safe."""

    code = "not-delivered"


class QuorumError(Unreachable):
    """Fewer replicas answered than the quorum asked for."""

    code = "no-quorum"


class ResyncNeeded(SnipeError):
    """A watcher fell behind the replica's change log; it must re-read the current state."""

    code = "resync"


class ConfigError(SnipeError):
    """A configuration file or option that cannot be used as given."""

    code = "bad-config"


class ClusterShapeMismatch(ConfigError):
    """A local cluster of another shape than the one asked for already runs in that folder."""

    code = "cluster-shape"


class ClusterPartlyDown(ConfigError):
    """Some processes of the local cluster recorded in a folder have ended while others still run.
    A second cluster is never started over it (the two would share data and state folders); the
    message names what is gone and says to stop the rest (`cluster down`) before starting anew."""

    code = "cluster-partly-down"


class ListenError(ConfigError):
    """A server cannot bind the endpoint it was told to listen on: in use, not this host's
    address, not permitted, or not an endpoint at all."""

    code = "cannot-listen"


class ServerError(SnipeError):
    """The remote side failed on its own account (a bug or a resource problem there)."""

    code = "server-error"


class HookError(SnipeError):
    """A task's checkpoint or restore hook raised, or returned what cannot be saved (snipe/hooks.py)."""

    code = "hook-failed"


_BY_CODE: dict[str, type[SnipeError]] = {}


def _register(cls: type[SnipeError]) -> None:
    _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(SnipeError)


def error_from_code(code: str, message: str) -> SnipeError:
    """Rebuild the error a peer reported; an unknown code becomes a plain SnipeError."""
    cls = _BY_CODE.get(code, SnipeError)
    err = cls(message)
    if cls is SnipeError:
        err.code = code
    return err


class IntegrityError(SnipeError):
    """Content whose sha256 does not match the content address (URN) it was fetched under."""

    code = "bad-hash"


class CodeError(SnipeError, ValueError):
    """Mobile code that cannot be packaged, unpacked or run as given (e.g. an unsafe archive)."""

    code = "bad-code"


_register(IntegrityError)
_register(CodeError)


# --- task runner (daemon/tasks.py) ---


class RequirementError(SnipeError, ValueError):
    """A placement requirement that names no host attribute, or cannot be read or ever met as written."""

    code = "bad-requirement"


class BadQuota(SnipeError, ValueError):
    """A resource quota with an unknown field, a wrong type, or a value that is not positive."""

    code = "bad-quota"


class TaskError(SnipeError):
    """A task that cannot be started or controlled as asked (bad program, cwd, or state)."""

    code = "task-error"


class TaskTimeout(TaskError, TimeoutError):
    """A task still running when a wait on it ran out of time."""

    code = "task-timeout"


class UnknownTask(NotFound):
    """No task with this URN is known to the task runner."""

    code = "unknown-task"


_register(RequirementError)
_register(BadQuota)
_register(TaskError)
_register(UnknownTask)


class MigrationFailed(SnipeError):
    """A migration did not happen: the process still runs where it was. The message says why."""

    code = "migration-failed"


_register(MigrationFailed)
