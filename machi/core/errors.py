"""One exception hierarchy for the whole project.

``MachiError`` carries a wire ``Status``; there is one subclass per status so callers can
``except Wedged:``.  ``ProtocolError`` splits into ``LocalProtocolError`` (we broke the
protocol) and ``RemoteProtocolError`` (the peer did), as in h11.  ``ConfigError`` is for
bad configuration.  The core raises these only for bad *input*; broken internal invariants
raise ``AssertionError`` and are never caught.
"""

from __future__ import annotations

from .status import Status


class MachiError(Exception):
    """An operation failed with a wire status."""

    status: Status = Status.BAD_JOSS

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.status.name)
        self.message = message or self.status.name

    def __str__(self) -> str:
        if self.message == self.status.name:
            return self.status.name
        return f"{self.status.name}: {self.message}"


class BadArg(MachiError):
    status = Status.BAD_ARG


class Wedged(MachiError):
    status = Status.WEDGED


class BadChecksum(MachiError):
    status = Status.BAD_CHECKSUM


class Partition(MachiError):
    """Timeouts and socket failures: the request may or may not have taken effect."""

    status = Status.PARTITION


class NotWritten(MachiError):
    status = Status.NOT_WRITTEN


class Written(MachiError):
    status = Status.WRITTEN


class Trimmed(MachiError):
    status = Status.TRIMMED


class NoSuchFile(MachiError):
    status = Status.NO_SUCH_FILE


class PartialRead(MachiError):
    status = Status.PARTIAL_READ


class BadEpoch(MachiError):
    status = Status.BAD_EPOCH


class UnknownOp(MachiError):
    status = Status.UNKNOWN_OP


class TooLarge(MachiError):
    status = Status.TOO_LARGE


class AuthRequired(MachiError):
    status = Status.AUTH_REQUIRED


class AuthFailed(MachiError):
    status = Status.AUTH_FAILED


class Busy(MachiError):
    status = Status.BUSY


class BadJoss(MachiError):
    status = Status.BAD_JOSS


class ProtocolError(MachiError):
    status = Status.PROTOCOL_ERROR


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class ConfigError(Exception):
    """Invalid configuration (unknown key, bad value); the message names the key."""


_BY_STATUS: dict[Status, type[MachiError]] = {
    cls.status: cls
    for cls in (
        BadArg, Wedged, BadChecksum, Partition, NotWritten, Written, Trimmed, NoSuchFile,
        PartialRead, BadEpoch, UnknownOp, TooLarge, AuthRequired, AuthFailed, Busy, BadJoss,
        RemoteProtocolError,
    )
}


def error_for_status(status: Status | int, message: str = "") -> MachiError:
    """The exception for a non-OK status received from a peer."""
    try:
        st = Status(status)
    except ValueError:
        return BadJoss(f"unknown status code {status}: {message}")
    if st is Status.OK:
        raise AssertionError("error_for_status(OK)")
    return _BY_STATUS.get(st, BadJoss)(message)
