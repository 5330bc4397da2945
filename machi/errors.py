"""Public re-export of the exception hierarchy (defined in ``machi.core.errors``)."""

from machi.core.errors import (
    AuthFailed,
    AuthRequired,
    BadArg,
    BadChecksum,
    BadEpoch,
    BadJoss,
    Busy,
    ConfigError,
    LocalProtocolError,
    MachiError,
    NoSuchFile,
    NotWritten,
    PartialRead,
    Partition,
    ProtocolError,
    RemoteProtocolError,
    TooLarge,
    Trimmed,
    UnknownOp,
    Wedged,
    Written,
    error_for_status,
)
from machi.core.status import Status

__all__ = [
    "AuthFailed", "AuthRequired", "BadArg", "BadChecksum", "BadEpoch", "BadJoss", "Busy",
    "ConfigError", "LocalProtocolError", "MachiError", "NoSuchFile", "NotWritten",
    "PartialRead", "Partition", "ProtocolError", "RemoteProtocolError", "Status", "TooLarge",
    "Trimmed", "UnknownOp", "Wedged", "Written", "error_for_status",
]
