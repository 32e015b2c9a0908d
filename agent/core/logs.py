"""Process-wide logging setup: configured once, text for people or JSON lines for fleets.

Protocol code logs through ``logging.getLogger(__name__)`` and passes ids as ``extra``:
``log.info("upload stored", extra={"device": dev, "round": rid})``. Both formats show them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_CONTEXT_KEYS = ("device", "round", "stage")
_configured = False


class TextFormatter(logging.Formatter):
    """``time level logger [device=.. round=..] message``."""

    def format(self, record: logging.LogRecord) -> str:
        ctx = " ".join(f"{k}={getattr(record, k)}" for k in _CONTEXT_KEYS if getattr(record, k, None) is not None)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{ts} {record.levelname:<7} {record.name}"
        if ctx:
            line += f" [{ctx}]"
        line += f" {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line with ts, level, logger, msg and the protocol ids."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k in _CONTEXT_KEYS:
            v = getattr(record, k, None)
            if v is not None:
                obj[k] = v
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


def configure(level: str | int = "INFO", fmt: str = "text", stream: Any = None) -> None:
    """Install one handler on the root logger. Later calls only adjust the level."""
    global _configured
    root = logging.getLogger()
    root.setLevel(level if isinstance(level, int) else level.upper())
    if _configured:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    _configured = True
