"""JSON-lines logging for daemons: one object per line on stderr.

Owns the line format ``{"ts", "level", "node", "msg", "fields"}``.  Must not buffer
without bound or raise into the caller (a broken stderr drops lines).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from typing import IO, Any

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class JsonLog:
    def __init__(self, node: str, level: str = "info", stream: IO[str] | None = None) -> None:
        self.node = node
        self.min_level = _LEVELS[level]
        self.stream = stream if stream is not None else sys.stderr

    def log(self, level: str, msg: str, **fields: Any) -> None:
        if _LEVELS[level] < self.min_level:
            return
        now = _dt.datetime.now(_dt.UTC)
        line = {
            "ts": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": level, "node": self.node, "msg": msg, "fields": fields,
        }
        try:
            self.stream.write(json.dumps(line, default=str, separators=(",", ":")) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def debug(self, msg: str, **fields: Any) -> None:
        self.log("debug", msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self.log("info", msg, **fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self.log("warning", msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.log("error", msg, **fields)


class ForwardHandler(logging.Handler):
    """Routes ``logging`` records of libraries (e.g. ``machi.storage``) into a JsonLog."""

    def __init__(self, log: JsonLog) -> None:
        super().__init__()
        self.json_log = log

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname.lower()
        level = level if level in _LEVELS else ("error" if record.levelno >= 40 else "info")
        try:
            msg = record.getMessage()
        except Exception:
            msg = str(record.msg)
        self.json_log.log(level, msg, logger=record.name)


def forward_stdlib_logging(log: JsonLog) -> None:
    """Send every stdlib ``logging`` record at or above the log's level to ``log``."""
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, ForwardHandler)]
    root.addHandler(ForwardHandler(log))
    root.setLevel(log.min_level)
