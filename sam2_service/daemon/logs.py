"""Logging: JSON lines to a rotating file, a short human line to stderr.

Each file line is one JSON object ``{"ts": "<ISO-8601 UTC>Z", "level": ..., "msg": ...,
<fields>}``. The messages the overlay's debugging guide searches for are kept verbatim:
"Model loaded successfully", "Server listening", "Received request", "Inference complete".
Log with :func:`event` so that the fields land as top-level keys.
"""

from __future__ import annotations

import logging
import logging.handlers
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

LOGGER_NAME = "sam2_service"


class JsonLineFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line (orjson; non-JSON values via str)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=timezone.utc)
        line: dict[str, Any] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class HumanFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL msg key=value ...`` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        base = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.getMessage()}"
        text = f"{base} {fields}" if fields else base
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(log_file: Path, level: str = "INFO", max_bytes: int = 10 * 2**20,
                  backup_count: int = 3, stderr: bool = True) -> logging.Logger:
    """Attach a ``RotatingFileHandler`` (JSON lines) and, if ``stderr``, a terminal handler
    to the package logger. Creates the log file's folder. Idempotent: replaces the
    handlers of an earlier call.

    Raises:
        OSError: the log folder or file cannot be created.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    file_handler = logging.handlers.RotatingFileHandler(
        log_file, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8")
    file_handler.setFormatter(JsonLineFormatter())
    logger.addHandler(file_handler)
    if stderr:
        term = logging.StreamHandler()
        term.setFormatter(HumanFormatter())
        logger.addHandler(term)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def event(logger: logging.Logger, msg: str, level: int = logging.INFO, *,
          exc_info: Any = None, **fields: Any) -> None:
    """Log ``msg`` with ``fields`` as top-level JSON keys."""
    logger.log(level, msg, extra={"fields": fields}, exc_info=exc_info)
