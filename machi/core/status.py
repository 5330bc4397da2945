"""Wire status codes (reference section 2.2) shared by the protocol, storage and clients.

Owns the numeric values of every status; must not grow behaviour beyond naming them.
"""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    OK = 0
    BAD_ARG = 1
    WEDGED = 2
    BAD_CHECKSUM = 3
    PARTITION = 4
    NOT_WRITTEN = 5
    WRITTEN = 6
    TRIMMED = 7
    NO_SUCH_FILE = 8
    PARTIAL_READ = 9
    BAD_EPOCH = 10
    # Additions of Machi-py (the original folded these into BAD_ARG or a generic error).
    UNKNOWN_OP = 11
    TOO_LARGE = 12
    AUTH_REQUIRED = 13
    AUTH_FAILED = 14
    PROTOCOL_ERROR = 15
    BUSY = 16
    BAD_JOSS = 255
